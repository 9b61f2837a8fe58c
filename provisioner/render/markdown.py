"""The plan as a pull-request comment: a summary table, then each host's details folded."""

from __future__ import annotations

from itertools import groupby

from provisioner.plan.model import Action, Plan
from provisioner.render.text import attribute_lines

_COLUMNS = (Action.CREATE, Action.UPDATE, Action.REPLACE, Action.DELETE, Action.RESTART)


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_plan(plan: Plan, *, title: str = "provisioner plan") -> str:
    lines = [f"### {title}", "", f"**{plan.summary()}**", ""]
    if plan.has_changes:
        lines += [
            "| host | " + " | ".join(a.value for a in _COLUMNS) + " |",
            "|---|" + "---:|" * len(_COLUMNS),
        ]
        for host, changes in groupby(plan.actionable, key=lambda c: c.host):
            counts = (
                [sum(1 for c in changes_ if c.action is a) for a in _COLUMNS]
                if (changes_ := list(changes))
                else []
            )
            lines.append(f"| `{_escape(host)}` | " + " | ".join(map(str, counts)) + " |")
        lines.append("")
        for host, changes in groupby(plan.actionable, key=lambda c: c.host):
            lines += [f"<details><summary>{_escape(host)}</summary>", "", "```diff"]
            for change in changes:
                sign = {"+": "+", "-": "-", "-/+": "!", "~": "!", "↻": "#"}[change.action.symbol]
                lines.append(
                    f"{sign} {change.action.value:<18} {change.address}  ({change.reason})"
                )
                lines.extend(f"#     {line}" for line in attribute_lines(change))
            lines += ["```", "", "</details>", ""]
    if plan.unmanaged:
        lines += [f"<details><summary>{len(plan.unmanaged)} unmanaged</summary>", ""]
        lines += [f"- `{_escape(u.address)}` {_escape(u.detail)}" for u in plan.unmanaged]
        lines += ["", "</details>", ""]
    if plan.problems:
        lines += ["**Problems**", ""] + [f"- :x: {_escape(p.message)}" for p in plan.problems]
        lines.append("")
    return "\n".join(lines)
