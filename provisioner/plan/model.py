"""A plan is just data: ordered changes, each with an address, an action, before and after.

The vocabulary is Terraform's, so that admins read it without a manual::

    Change(address="server/tapi01/firewall_rule/nfon-tapi-in-smb", action=Action.UPDATE,
           before={"remote_addresses": ["10.0.2.0/24"]},
           after={"remote_addresses": ["10.0.2.0/24", "10.0.3.0/24"]},
           reason="remote_addresses differ", host="tapi01", kind="firewall_rule")

``before`` and ``after`` hold only canonical, JSON-able values; a secret is the string
``(sensitive)`` on both sides, and its name is in ``sensitive_changed`` when it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Action(StrEnum):
    NOOP = "no-op"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REPLACE = "delete-then-create"
    RESTART = "restart"  # a handler: a service restarted once, after the changes that need it

    @property
    def symbol(self) -> str:
        return {
            Action.NOOP: " ",
            Action.CREATE: "+",
            Action.UPDATE: "~",
            Action.DELETE: "-",
            Action.REPLACE: "-/+",
            Action.RESTART: "↻",
        }[self]

    @property
    def terraform_actions(self) -> list[str]:
        """The ``actions`` list of ``terraform show -json`` for this action."""
        if self is Action.REPLACE:
            return ["delete", "create"]
        return [self.value]


@dataclass
class Change:
    address: str
    action: Action
    kind: str
    host: str  # the host whose batch carries this change ("directory" for AD changes)
    tenant: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    reason: str = ""
    sensitive_changed: list[str] = field(default_factory=list)
    id: str = ""  # stable within a plan: "c0007"
    action_reason: str = ""  # Terraform's code for why, where there is one: "delete_because_..."

    @property
    def changed_attributes(self) -> list[str]:
        before, after = self.before or {}, self.after or {}
        keys = sorted(set(before) | set(after))
        return [k for k in keys if before.get(k) != after.get(k) or k in self.sensitive_changed]


@dataclass(frozen=True)
class Unmanaged:
    """Something live in the managed scope that no manifest names (deleted only with prune)."""

    address: str
    kind: str
    host: str
    tenant: str | None
    detail: str


@dataclass(frozen=True)
class PlanProblem:
    """A problem found while planning (a missing user, a line the PBX does not have)."""

    message: str
    tenant: str | None = None
    host: str | None = None
    address: str | None = None
    found: bool = False  # a difference found in the live estate, not something left unchecked
    kind: str | None = None  # holds back only changes of this kind (on the tenant or host)

    def concerns(self, change: Change) -> bool:
        """A tenant's problem holds back that tenant, a host's problem that host; a problem that
        names neither (the directory cannot be read, say) holds back everything. A problem with a
        kind holds back only that kind's changes there (an unreadable tsecimp listing: the line
        assignments)."""
        if self.kind is not None and self.kind != change.kind:
            return False
        if self.tenant:
            return change.tenant == self.tenant
        return not self.host or change.host == self.host


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    unmanaged: list[Unmanaged] = field(default_factory=list)
    problems: list[PlanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # host key → digest of its facts
    targets: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)  # addresses apply will not carry out

    def holds_back(self, change: Change) -> bool:
        """Whether a problem of this plan concerns the change, so that apply holds it back.

        See :meth:`PlanProblem.concerns`.
        """
        if change.action is Action.NOOP:
            return False
        return any(problem.concerns(change) for problem in self.problems)

    @property
    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        result = {a.value: 0 for a in Action if a is not Action.NOOP}
        for change in self.actionable:
            result[change.action.value] += 1
        return result

    def summary(self) -> str:
        counts = self.counts()
        if not self.has_changes:
            if self.problems:
                n = len(self.problems)
                plural = "s" if n != 1 else ""
                return f"No changes in what could be read; {n} problem{plural} listed above."
            return "No changes. The estate matches the manifests."
        parts = [f"{counts['create']} to create", f"{counts['update']} to update"]
        # no kind replaces anything today (delete-then-create): the line names it only if one does
        if counts[Action.REPLACE.value]:
            parts.append(f"{counts[Action.REPLACE.value]} to replace")
        parts.append(f"{counts['delete']} to delete")
        if counts["restart"]:
            parts.append(f"{counts['restart']} to restart")
        return "Plan: " + ", ".join(parts) + "."
