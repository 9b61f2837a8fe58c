"""Drift reports: the same diff as a plan, read-only, told as what moved behind our back.

Three categories, nothing else (no noise): **changed** outside the tool, **missing** (in the
manifests, not on the host), **unmanaged** extras in the managed scope. A one-line summary first,
then grouped by server and tenant.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2

from provisioner.plan.model import Action, Plan
from provisioner.remote.scripts import templates_dir
from provisioner.render.text import attribute_lines

CATEGORY = {
    Action.UPDATE: "changed",
    Action.REPLACE: "changed",
    Action.CREATE: "missing",
    Action.DELETE: "unmanaged",
}


@dataclass
class DriftItem:
    category: str  # changed | missing | unmanaged
    address: str
    kind: str
    host: str
    tenant: str | None
    detail: str
    lines: list[str] = field(default_factory=list)


@dataclass
class DriftReport:
    items: list[DriftItem]
    problems: list[str]
    generated: str

    @property
    def has_drift(self) -> bool:
        return bool(self.items)

    def counts(self) -> dict[str, int]:
        counter = Counter(i.category for i in self.items)
        return {k: counter.get(k, 0) for k in ("changed", "missing", "unmanaged")}

    def summary(self) -> str:
        if not self.items:
            return "No drift: the estate matches the manifests."
        counts = self.counts()
        servers = len({i.host for i in self.items})
        tenants = len({i.tenant for i in self.items if i.tenant})
        return (
            f"Drift: {counts['changed']} changed, {counts['missing']} missing, "
            f"{counts['unmanaged']} unmanaged, on {servers} host{'s' if servers != 1 else ''} "
            f"and {tenants} tenant{'s' if tenants != 1 else ''}."
        )

    def by(self, attribute: str) -> dict[str, Counter[str]]:
        groups: dict[str, Counter[str]] = {}
        for item in self.items:
            key = getattr(item, attribute) or "(none)"
            groups.setdefault(key, Counter())[item.category] += 1
        return dict(sorted(groups.items()))


def drift_report(plan: Plan) -> DriftReport:
    items = []
    for change in plan.actionable:
        if change.action is Action.RESTART:
            continue  # a consequence, not a difference
        items.append(
            DriftItem(
                CATEGORY[change.action],
                change.address,
                change.kind,
                change.host,
                change.tenant,
                change.reason,
                attribute_lines(change),
            )
        )
    for extra in plan.unmanaged:
        items.append(
            DriftItem(
                "unmanaged", extra.address, extra.kind, extra.host, extra.tenant, extra.detail
            )
        )
    items.sort(key=lambda i: (i.host, i.tenant or "", i.address))
    return DriftReport(
        items, [p.message for p in plan.problems], datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


def render_text(report: DriftReport) -> str:
    lines = [report.summary(), ""]
    current = None
    for item in report.items:
        group = f"{item.host}" + (f" / tenant {item.tenant}" if item.tenant else "")
        if group != current:
            lines.append(group)
            current = group
        lines.append(f"  {item.category:<9} {item.address}   {item.detail}")
        lines.extend(f"              {line}" for line in item.lines)
    if report.problems:
        lines += ["", "Problems:"] + [f"  ! {p}" for p in report.problems]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(report: DriftReport) -> str:
    lines = ["### provisioner drift", "", f"**{report.summary()}**", ""]
    if report.items:
        lines += ["| category | address | detail |", "|---|---|---|"]
        for item in report.items:
            detail = item.detail.replace("|", "\\|")
            lines.append(f"| {item.category} | `{item.address}` | {detail} |")
    if report.problems:
        lines += ["", "**Problems**", ""] + [f"- {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


def render_json(report: DriftReport) -> str:
    data: dict[str, Any] = {
        "format_version": "1",
        "summary": report.summary(),
        "counts": report.counts(),
        "items": [item.__dict__ for item in report.items],
        "problems": report.problems,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_html(report: DriftReport) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    tenants: dict[str, list[DriftItem]] = {}
    for item in report.items:
        tenants.setdefault(item.tenant or f"host {item.host}", []).append(item)
    return environment.get_template("drift.html.j2").render(
        report=report,
        by_host=report.by("host"),
        by_tenant=report.by("tenant"),
        by_kind=report.by("kind"),
        tables=dict(sorted(tenants.items())),
    )
