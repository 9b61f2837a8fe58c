"""The machine-readable plan, documented in ``docs/plan-format.md`` (format version 1).

Modelled on ``terraform show -json``: per resource an ``address``, ``actions``, ``before``,
``after``, plus our ``reason`` and the names of changed secrets. Secrets never appear: both
sides show ``(sensitive)``.
"""

from __future__ import annotations

from typing import Any

from provisioner import __version__
from provisioner.plan.model import Action, Change, Plan

FORMAT_VERSION = "1"


def change_to_json(change: Change) -> dict[str, Any]:
    return {
        "id": change.id,
        "address": change.address,
        "kind": change.kind,
        "host": change.host,
        "tenant": change.tenant,
        "actions": change.action.terraform_actions,
        "reason": change.reason,
        "before": change.before,
        "after": change.after,
        "sensitive_changed": change.sensitive_changed,
    }


def change_from_json(data: dict[str, Any]) -> Change:
    actions = data["actions"]
    action = Action.REPLACE if actions == ["delete", "create"] else Action(actions[0])
    return Change(
        address=data["address"],
        action=action,
        kind=data["kind"],
        host=data["host"],
        tenant=data.get("tenant"),
        before=data.get("before"),
        after=data.get("after"),
        reason=data.get("reason", ""),
        sensitive_changed=list(data.get("sensitive_changed", [])),
        id=data.get("id", ""),
    )


def plan_to_json(plan: Plan, *, include_noop: bool = False) -> dict[str, Any]:
    changes = plan.changes if include_noop else plan.actionable
    return {
        "format_version": FORMAT_VERSION,
        "provisioner_version": __version__,
        "summary": plan.counts(),
        "resource_changes": [change_to_json(c) for c in changes],
        "unmanaged": [
            {
                "address": u.address,
                "kind": u.kind,
                "host": u.host,
                "tenant": u.tenant,
                "detail": u.detail,
            }
            for u in plan.unmanaged
        ],
        "problems": [
            {
                "message": p.message,
                "tenant": p.tenant,
                "host": p.host,
                "address": p.address,
                "kind": p.kind,
            }
            for p in plan.problems
        ],
        "notes": plan.notes,
        "targets": plan.targets,
    }
