"""The plan as an admin reads it in a terminal: grouped by host, one symbol per action.

server tapi01
  ~ server/tapi01/firewall_rule/nfon-tapi-in-smb   remote_addresses differs
      remote_addresses: ["10.0.2.0/24"] → ["10.0.2.0/24", "10.0.3.0/24"]
  + tenant/k6732/tsp_instance                       does not exist
      cti_password: (sensitive)
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def render_plan(plan: Plan, *, colour: bool = False, title: str = "") -> str:
    style: Callable[..., str] = click.style if colour else (lambda text, **_: text)
    lines: list[str] = []
    if title:
        lines += [title, ""]
    for _, changes in groupby(plan.actionable, key=lambda c: c.host):
        lines.append(style(_heading(changes_list := list(changes)), bold=True))
        for change in changes_list:
            colour_name = _COLOURS[change.action]
            symbol = change.action.symbol.rjust(3)
            lines.append(
                style(f"{symbol} {change.address}", fg=colour_name) + f"   {change.reason}"
            )
            lines.extend(f"        {line}" for line in attribute_lines(change))
        lines.append("")
    if plan.unmanaged:
        lines.append(style("Unmanaged (not in the manifests; kept, as prune is off):", bold=True))
        lines.extend(f"  ? {u.address}   {u.detail}" for u in plan.unmanaged)
        lines.append("")
    if plan.problems:
        lines.append(style("Problems:", fg="red", bold=True))
        lines.extend(f"  ! {p.message}" for p in plan.problems)
        lines.append("")
    lines.extend(plan.notes)
    lines.append(style(plan.summary(), bold=True))
    return "\n".join(lines) + "\n"


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
