"""The machine-readable plan, documented in ``docs/plan-format.md`` (format version 2).

The shape is that of ``terraform show -json``, so that what reads one reads the other::

    {"format_version": "2", "resource_changes": [
        {"address": "server/tapi01/firewall_rule/nfon-tapi-in-smb", "mode": "managed",
         "type": "firewall_rule", "name": "nfon-tapi-in-smb",
         "change": {"actions": ["update"], "before": {...}, "after": {...},
                    "before_sensitive": {}, "after_sensitive": {}},
         "id": "c0003", "host": "tapi01", "tenant": null, "reason": "...", ...}]}

Our own fields sit beside Terraform's (``host``, ``tenant``, ``reason``, ``held_back``, and at the
top ``problems``, ``unmanaged``, ``notes``, ``fingerprints``). Secrets never appear: both sides
show ``(sensitive)``, and ``*_sensitive`` mark them as Terraform does.
"""

from __future__ import annotations

from typing import Any

from provisioner import __version__
from provisioner.plan.model import Action, Change, Plan
from provisioner.secrets import REDACTED

FORMAT_VERSION = "2"


def change_to_json(change: Change, *, held_back: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "address": change.address,
        "mode": "managed",
        "type": change.kind,
        "name": resource_name(change.address, change.kind),
        "change": {
            "actions": change.action.terraform_actions,
            "before": change.before,
            "after": change.after,
            "before_sensitive": _sensitive(change.before),
            "after_sensitive": _sensitive(change.after),
        },
    }
    if change.action_reason:
        data["action_reason"] = change.action_reason
    data |= {
        "id": change.id,
        "host": change.host,
        "tenant": change.tenant,
        "reason": change.reason,
        "sensitive_changed": change.sensitive_changed,
        "held_back": held_back,
    }
    return data


def change_from_json(data: dict[str, Any]) -> Change:
    """The change a ``resource_changes`` entry describes (a saved plan reads its own this way)."""
    change = data["change"]
    actions = change["actions"]
    action = Action.REPLACE if actions == ["delete", "create"] else Action(actions[0])
    return Change(
        address=data["address"],
        action=action,
        kind=data["type"],
        host=data["host"],
        tenant=data.get("tenant"),
        before=change.get("before"),
        after=change.get("after"),
        reason=data.get("reason", ""),
        sensitive_changed=list(data.get("sensitive_changed", [])),
        id=data.get("id", ""),
        action_reason=data.get("action_reason", ""),
    )


def plan_to_json(plan: Plan, *, include_noop: bool = False) -> dict[str, Any]:
    changes = plan.changes if include_noop else plan.actionable
    held = set(plan.held_back)
    return {
        "format_version": FORMAT_VERSION,
        "provisioner_version": __version__,
        "summary": plan.counts(),
        "resource_changes": [change_to_json(c, held_back=c.address in held) for c in changes],
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
        "unmanaged": [
            {
                "address": u.address,
                "type": u.kind,
                "host": u.host,
                "tenant": u.tenant,
                "detail": u.detail,
            }
            for u in plan.unmanaged
        ],
        "notes": plan.notes,
        "fingerprints": plan.fingerprints,
        "targets": plan.targets,
    }


def resource_name(address: str, kind: str) -> str:
    """Terraform's ``name``: what follows the kind in the address (``nfon-tapi-in-smb``), or
    for an owner's single object of its kind the owner's name (``tapi01`` for its package)."""
    parts = address.split("/", 3)
    if len(parts) == 4 and parts[2] == kind:
        return parts[3]
    return parts[1] if len(parts) > 1 else address


def _sensitive(side: dict[str, Any] | None) -> dict[str, bool] | bool:
    """Terraform's ``before_sensitive``/``after_sensitive``: ``true`` for each secret attribute,
    ``false`` for a side that does not exist."""
    if side is None:
        return False
    return {key: True for key, value in side.items() if value == REDACTED}
