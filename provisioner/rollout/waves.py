"""Which tenant goes in which wave, and when a wave has failed too much (pure, no I/O).

``--waves 1,10%,50%,100%`` counts tenants cumulatively, as Argo Rollouts' canary weights do: the
first wave is one tenant (the canary), the second brings the total to 10 %, and so on; whatever
the last step leaves goes in one more wave. Tenants go in a stable order (by name), and a tenant
whose manifest pins a wave (``wave: 2``) goes in that one::

    assign(["a", "b", "c", "d"], parse_waves("1,50%,100%"), pinned={})  → [["a"], ["b"], ["c", "d"]]

``--max-failures 2`` or ``10%`` is how many tenants of a wave may fail before the rollout halts
(Ansible's ``max_fail_percentage``); the default, 0, halts at the first failure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from provisioner.errors import ProvisionerError

DEFAULT_WAVES = "1,10%,50%,100%"


@dataclass(frozen=True)
class Amount:
    """A number of tenants, or a percentage of them."""

    value: float
    percent: bool

    def of(self, total: int) -> int:
        if self.percent:
            return min(total, math.ceil(self.value * total / 100 - 1e-9))
        return min(total, int(self.value))

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{self.value:g}"


def parse_amount(text: str, option: str, *, zero: bool) -> Amount:
    given = text.strip()
    percent = given.endswith("%")
    number = given.removesuffix("%").strip()
    try:
        value = float(number) if percent else int(number)
    except ValueError:
        raise ProvisionerError(
            f"{option}: {given!r} is neither a number of tenants nor a percentage (10%)"
        ) from None
    lowest = 0 if zero else 1 if not percent else 1e-9
    if value < lowest or (percent and value > 100):
        allowed = "0 or more" if zero else "at least 1"
        raise ProvisionerError(f"{option}: {given!r} must be {allowed} (a percentage at most 100%)")
    return Amount(value, percent)


def parse_waves(text: str) -> list[Amount]:
    steps = [parse_amount(part, "--waves", zero=False) for part in text.split(",") if part.strip()]
    if not steps:
        raise ProvisionerError("--waves: give at least one step, such as 1,10%,50%,100%")
    return steps


def parse_threshold(text: str) -> Amount:
    return parse_amount(text, "--max-failures", zero=True)


def exceeded(threshold: Amount, failed: int, total: int) -> bool:
    """Whether ``failed`` of ``total`` is more than the threshold allows (a percentage as
    Ansible's ``max_fail_percentage``: the share of failures is above it)."""
    if threshold.percent:
        return failed * 100 > threshold.value * total
    return failed > threshold.value


def assign(
    tenants: Sequence[str], steps: Sequence[Amount], pinned: Mapping[str, int]
) -> list[list[str]]:
    """The tenants of each wave (first the canary), leaving out waves that would be empty."""
    total = len(tenants)
    waves: list[list[str]] = [[] for _ in range(max([len(steps), *pinned.values()]))]
    for tenant in sorted(tenants):
        if tenant in pinned:
            waves[pinned[tenant] - 1].append(tenant)
    free = [t for t in sorted(tenants) if t not in pinned]
    placed = 0
    for number, step in enumerate(steps):
        target = step.of(total)
        while free and placed + len(waves[number]) < target:
            waves[number].append(free.pop(0))
        placed += len(waves[number])
    if free:
        waves.append(free)
    return [sorted(wave) for wave in waves if wave]
