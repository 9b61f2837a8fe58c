"""The plan as a pull-request comment: problems first, then the summary table, then details.

A reviewer reads, in this order: what holds changes back (never cut), the summary and a table
per host, which restarts interrupt which tenants, and then each host's changes folded in a
``<details>`` block, held-back ones marked. The whole comment fits GitHub's limit on a comment
(65,536 characters): when the details do not fit, as many as fit are shown, followed by how many
were left out and where the full plan is::

    render_plan(plan)                      # the comment
    render_plan(plan, limit=20_000)        # a smaller budget (tests, other forges)

Values from hosts and manifests are escaped: they never become markup, links or a broken table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import groupby

from provisioner.plan.model import Action, Change, Plan
from provisioner.render.text import attribute_lines

COMMENT_LIMIT = 65_536  # characters in one GitHub comment (issue and pull-request comments)
FULL_PLAN = (
    "the full plan is the saved-plan artifact of this run (`plan --out`), or run "
    "`provisioner plan --format json`"
)
_RESERVE = 600  # room kept for the note that says what was left out
_NAMED_TENANTS = 12  # tenants named per server in the restarts overview

_COLUMNS = (
    (Action.CREATE, "create"),
    (Action.UPDATE, "update"),
    (Action.REPLACE, "replace"),
    (Action.DELETE, "delete"),
    (Action.RESTART, "restart"),
)
_SIGN = {
    Action.CREATE: "+",
    Action.DELETE: "-",
    Action.UPDATE: "!",
    Action.REPLACE: "!",
    Action.RESTART: "!",
}


def render_plan(plan: Plan, *, title: str = "provisioner plan", limit: int = COMMENT_LIMIT) -> str:
    held = set(plan.held_back)
    overview = _overview(plan, held)
    problems = _problems(plan, limit - len(overview) - 2 * _RESERVE)
    head = f"### {text(title)}\n\n" + problems + overview
    budget = limit - len(head) - _RESERVE
    body: list[str] = []
    shown = 0
    for host, group in groupby(plan.actionable, key=lambda c: c.host):
        changes = list(group)
        block, fitted = _host_block(host, changes, held, budget)
        body.append(block)
        budget -= len(block)
        shown += fitted
        if fitted < len(changes):
            break
    complete = shown == len(plan.actionable)
    for extra in _extras(plan) if complete else []:
        if len(extra) > budget:
            complete = False
            break
        body.append(extra)
        budget -= len(extra)
    if not complete:
        left = len(plan.actionable) - shown
        what = f"{left} of {len(plan.actionable)} changes (and" if left else "(The"
        body.append(
            f"_{what} the unmanaged objects and notes) are not shown here, to fit one comment: "
            f"{FULL_PLAN}._\n"
        )
    return head + "".join(body)


def _overview(plan: Plan, held: set[str]) -> str:
    """The summary, the table per host and the restarts: always shown whole."""
    summary = plan.summary()
    if held:
        summary += f" {len(held)} held back by the problems above."
    lines = [f"**{text(summary)}**", ""]
    if plan.has_changes:
        lines += _table(plan.actionable, held)
        lines += _restarts(plan.actionable, held)
    return "\n".join(lines) + "\n"


def _problems(plan: Plan, budget: int) -> str:
    """Every problem; only if they alone would overflow the comment, as many as fit."""
    if not plan.problems:
        return ""
    count = len(plan.problems)
    lines = [
        f"> [!CAUTION]\n> **{count} problem{'s' if count != 1 else ''}**: the changes "
        f"{'they concern' if count != 1 else 'it concerns'} are held back; apply carries out "
        "the rest and exits 1.",
        "",
    ]
    budget -= len(lines[0])
    for problem in plan.problems:
        item = f"- :x: {text(problem.message)}"
        budget -= len(item) + 1
        if budget < 0:
            lines.append(
                f"- _{count - len(lines) + 2} more problems do not fit one comment: {FULL_PLAN}._"
            )
            break
        lines.append(item)
    return "\n".join(lines) + "\n\n"


def _table(changes: list[Change], held: set[str]) -> list[str]:
    lines = [
        "| host | " + " | ".join(name for _, name in _COLUMNS) + " | held back |",
        "|---|" + "---:|" * (len(_COLUMNS) + 1),
    ]
    for host, group in groupby(changes, key=lambda c: c.host):
        of_host = list(group)
        counts = [sum(1 for c in of_host if c.action is action) for action, _ in _COLUMNS]
        counts.append(sum(1 for c in of_host if c.address in held))
        lines.append(f"| {code(host)} | " + " | ".join(map(str, counts)) + " |")
    return [*lines, ""]


def _restarts(changes: list[Change], held: set[str]) -> list[str]:
    """Per server, what restarts and which tenants it interrupts: what a reviewer schedules a
    window for (the full list of tenants is in the details and the JSON plan)."""
    restarts = [c for c in changes if c.action is Action.RESTART]
    if not restarts:
        return []
    lines = ["**Restarts** (a tenant's lines are down while its server's services restart):", ""]
    for host, group in groupby(restarts, key=lambda c: c.host):
        of_host = list(group)
        services = ", ".join(
            code(str((c.after or {}).get("service", c.address)), in_table=False)
            + (" (held back)" if c.address in held else "")
            for c in of_host
        )
        tenants = sorted({t for c in of_host for t in (c.after or {}).get("interrupts") or []})
        named = ", ".join(code(t, in_table=False) for t in tenants[:_NAMED_TENANTS])
        more = f" and {len(tenants) - _NAMED_TENANTS} more" if len(tenants) > _NAMED_TENANTS else ""
        who = f"{len(tenants)} tenant{'s' if len(tenants) != 1 else ''}: {named}{more}"
        lines.append(
            f"- {code(host, in_table=False)}: {services}; interrupts "
            + (who if tenants else "no tenant")
        )
    return [*lines, ""]


def _host_block(host: str, changes: list[Change], held: set[str], budget: int) -> tuple[str, int]:
    """One host's changes folded, as many as fit ``budget``; returns the block and how many."""
    entries = [_entry(change, change.address in held) for change in changes]
    longest = max((len(run) for e in entries for run in re.findall("`+", e)), default=0)
    fence = "`" * max(3, longest + 1)
    marked = sum(1 for c in changes if c.address in held)
    note = f", {marked} held back" if marked else ""
    opening = (
        f"<details><summary>{html(host)}: {len(changes)} change{'s' if len(changes) != 1 else ''}"
        f"{note}</summary>\n\n{fence}diff\n"
    )
    closing = f"{fence}\n\n</details>\n\n"
    room = budget - len(opening) - len(closing)
    fitted = 0
    for entry in entries:
        if len(entry) > room:
            break
        room -= len(entry)
        fitted += 1
    if fitted == 0:
        return "", 0
    return opening + "".join(entries[:fitted]) + closing, fitted


def _entry(change: Change, held: bool) -> str:
    """One change in a ``diff`` block; a held-back one is a grey comment line."""
    sign = "#" if held else _SIGN[change.action]
    mark = "held back: " if held else ""
    lines = [f"{sign} {mark}{change.action.value:<18} {change.address}  ({change.reason})"]
    details = attribute_lines(change)
    if change.action is Action.RESTART:
        tenants = (change.after or {}).get("interrupts") or []
        details = [f"interrupts: {', '.join(tenants) or 'no tenant'}"]
    lines += [f"#     {line}" for line in details]
    return "".join(f"{line}\n" for line in lines)


def _extras(plan: Plan) -> Iterable[str]:
    if plan.unmanaged:
        items = "".join(
            f"- {code(u.address, in_table=False)} {text(u.detail)}\n" for u in plan.unmanaged
        )
        yield (
            f"<details><summary>{len(plan.unmanaged)} unmanaged (kept: not in the manifests, "
            f"prune is off)</summary>\n\n{items}\n</details>\n\n"
        )
    if plan.notes:
        yield "**Notes**\n\n" + "".join(f"- {text(n)}\n" for n in plan.notes) + "\n"


# --- escaping: values from hosts and manifests never become markup -------------------------------

_MARKUP = re.compile(r"([\\`*\[\]|])")  # code, emphasis, links and images, table cells


def text(value: str) -> str:
    """Plain text in Markdown (a list item, a table cell, bold): no markup, links, HTML or line
    breaks from the value."""
    escaped = _MARKUP.sub(r"\\\1", html(value))
    return escaped.replace("\r", " ").replace("\n", " ")


def html(value: str) -> str:
    """Text inside HTML (a ``<summary>``)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(value: str, *, in_table: bool = True) -> str:
    """A code span. Entities stay literal inside one, so only line breaks go, and in a table
    cell the pipes are escaped; a backtick in the value needs the longer fence."""
    value = value.replace("\r", " ").replace("\n", " ")
    if in_table:
        value = value.replace("|", "\\|")
    return f"`` {value} ``" if "`" in value else f"`{value}`"
