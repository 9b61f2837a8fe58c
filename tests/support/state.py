"""State for tests that drive the runner directly."""

from __future__ import annotations

from collections.abc import Sequence

from provisioner.plan.model import Change
from provisioner.planner import Host
from provisioner.runner import ChangeResult, HostResult


class Unrecorded:
    """A recorder that keeps what it is told in memory."""

    def __init__(self) -> None:
        self.intents: list[tuple[Host, list[str]]] = []
        self.results: list[HostResult] = []

    def intent(self, host: Host, changes: Sequence[Change]) -> object:
        self.intents.append((host, [c.address for c in changes]))
        return len(self.intents) - 1

    def result(self, handle: object, result: HostResult) -> None:
        self.results.append(result)

    def unsent(self, host: Host, results: Sequence[ChangeResult], why: str) -> None:
        self.results.append(HostResult(host, "not-sent", why, list(results)))
