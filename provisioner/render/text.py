"""The plan as an admin reads it in a terminal: grouped by host, one symbol per action.

server tapi01
  ~ server/tapi01/firewall_rule/nfon-tapi-in-smb   remote_addresses differs
      remote_addresses: ["10.0.2.0/24"] → ["10.0.2.0/24", "10.0.3.0/24"]
  + tenant/k6732/tsp_instance                       does not exist
      cti_password: (sensitive)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import groupby
from typing import Any

import click

from provisioner.plan.model import Action, Change, Plan
from provisioner.secrets import REDACTED

_COLOURS = {
    Action.CREATE: "green",
    Action.UPDATE: "yellow",
    Action.DELETE: "red",
    Action.REPLACE: "magenta",
    Action.RESTART: "cyan",
    Action.NOOP: None,
}


DETAIL_LIMIT = 2_000
"""Beyond this many changes a plan lists each tenant's changes as one summary line per tenant
(the hosts' own changes are still listed one by one); ``verbose`` lists everything."""

CHUNK_LINES = 5_000


def render_plan(plan: Plan, *, colour: bool = False, title: str = "", verbose: bool = True) -> str:
    return "\n".join(plan_chunks(plan, colour=colour, title=title, verbose=verbose)) + "\n"


def plan_chunks(
    plan: Plan, *, colour: bool = False, title: str = "", verbose: bool = False
) -> Iterator[str]:
    """The plan's text in chunks of lines (without the last newline), for writing as it is made:
    100,000 changes never sit in memory as one string."""
    chunk: list[str] = []
    for line in plan_lines(plan, colour=colour, title=title, verbose=verbose):
        chunk.append(line)
        if len(chunk) >= CHUNK_LINES:
            yield "\n".join(chunk)
            chunk = []
    if chunk:
        yield "\n".join(chunk)


def plan_lines(
    plan: Plan, *, colour: bool = False, title: str = "", verbose: bool = False
) -> Iterator[str]:
    style: Callable[..., str] = click.style if colour else (lambda text, **_: text)
    if title:
        yield from (title, "")
    actionable = plan.actionable
    summarise = not verbose and len(actionable) > DETAIL_LIMIT
    for _, changes in groupby(actionable, key=lambda c: c.host):
        changes_list = list(changes)
        yield style(_heading(changes_list), bold=True)
        listed = [c for c in changes_list if not (summarise and c.tenant)]
        for change in listed:
            head = f"{change.action.symbol.rjust(3)} {change.address}"
            yield style(head, fg=_COLOURS[change.action]) + f"   {change.reason}"
            yield from (f"        {line}" for line in attribute_lines(change))
        if summarise:
            yield from _tenant_summaries(changes_list, style)
        yield ""
    if summarise:
        yield (
            f"{len(actionable):,} changes: each tenant's are summed up in one line; "
            "--verbose lists every change."
        )
        yield ""
    if plan.unmanaged:
        yield style("Unmanaged (not in the manifests; kept, as prune is off):", bold=True)
        yield from (f"  ? {u.address}   {u.detail}" for u in plan.unmanaged)
        yield ""
    if plan.problems:
        yield style("Problems:", fg="red", bold=True)
        yield from (f"  ! {p.message}" for p in plan.problems)
        yield ""
    yield from plan.notes
    yield style(plan.summary(), bold=True)


def _tenant_summaries(changes: list[Change], style: Callable[..., str]) -> Iterator[str]:
    """``  ~ tenant k6732   100 to create (line_assignment 100), 1 to update (tsp_instance 1)``"""
    by_tenant: dict[str, Counter[tuple[Action, str]]] = {}
    for change in changes:
        if change.tenant:
            by_tenant.setdefault(change.tenant, Counter())[(change.action, change.kind)] += 1
    for tenant, counts in by_tenant.items():
        actions = sorted({action for action, _ in counts}, key=list(Action).index)
        parts = []
        for action in actions:
            kinds = {kind: n for (a, kind), n in counts.items() if a is action}
            detail = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
            verb = "replace" if action is Action.REPLACE else action.value
            parts.append(f"{sum(kinds.values())} to {verb} ({detail})")
        symbol = actions[0].symbol if len(actions) == 1 else "~"
        yield style(f"{symbol.rjust(3)} tenant {tenant}", fg=_COLOURS[actions[0]]) + (
            "   " + ", ".join(parts)
        )


def _heading(changes: list[Change]) -> str:
    first = changes[0]
    if first.host == "directory":
        return "Active Directory"
    scope = "server" if first.address.startswith(("server/", "tenant/")) else "host"
    return f"{scope} {first.host}"


def attribute_lines(change: Change) -> list[str]:
    before, after = change.before or {}, change.after or {}
    if change.action is Action.RESTART:
        return []
    if change.action is Action.DELETE:
        return []
    result = []
    for key in change.changed_attributes:
        if key in change.sensitive_changed:
            changed = "" if change.action is Action.CREATE else ", changed"
            result.append(f"{key}: {REDACTED[:-1]}{changed})")
            continue
        if change.action is Action.CREATE:
            result.append(f"{key}: {value_text(after.get(key))}")
        else:
            result.append(f"{key}: {value_text(before.get(key))} → {value_text(after.get(key))}")
    return result


def value_text(value: Any) -> str:
    """A canonical value as a reader wants it: JSON, but ``NFON\\jdoe`` with one backslash."""
    if value is None:
        return "(none)"
    if value == REDACTED:
        return REDACTED
    return json.dumps(value, ensure_ascii=False).replace("\\\\", "\\")
