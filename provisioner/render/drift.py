"""Drift reports: the same diff as a plan, read-only, told as what moved behind our back.

Three categories, nothing else (no noise): **changed** outside the tool, **missing** (in the
manifests, not on the host), **unmanaged** extras in the managed scope. A one-line summary first,
then grouped by host and tenant. An item reads::

    DriftItem(category="changed", address="server/tapi01/firewall_rule/nfon-tapi-in-smb",
              kind="firewall_rule", host="tapi01", tenant=None, detail="local_ports differs",
              lines=['local_ports: host has ["9999"], manifests want ["445"]'],
              before={"local_ports": ["9999"], ...}, after={"local_ports": ["445"], ...},
              differs=["local_ports"])

``before`` is what the host has and ``after`` what the manifests want, as in a plan; the JSON
report carries those and the names that differ, the other renderers the sentences.

Problems (a host that did not answer, a line the PBX lacks) and notes (information, such as
extensions no one is assigned) travel with the report, so "no drift" is never claimed for what
could not be checked.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2

from provisioner.plan.model import Action, Change, Plan, PlanProblem
from provisioner.remote.scripts import templates_dir
from provisioner.render.markdown import code as md_code
from provisioner.render.markdown import text as md_text
from provisioner.render.text import value_text
from provisioner.secrets import REDACTED

CATEGORIES = ("changed", "missing", "unmanaged")
CATEGORY = {
    Action.UPDATE: "changed",
    Action.REPLACE: "changed",
    Action.CREATE: "missing",
    Action.DELETE: "unmanaged",
}
MEANING = {
    "changed": "on the host, but different from the manifests",
    "missing": "in the manifests, not on the host",
    "unmanaged": "on the host, in the managed scope, not in the manifests",
}
NO_TENANT = "(host settings)"  # the tenant column of items that belong to no tenant
DRIFT_FORMAT_VERSION = "2"  # version 1 told each item in sentences


@dataclass
class DriftItem:
    category: str  # changed | missing | unmanaged
    address: str
    kind: str
    host: str
    tenant: str | None
    detail: str
    lines: list[str] = field(default_factory=list)
    before: dict[str, Any] | None = None  # on the host (None: not there)
    after: dict[str, Any] | None = None  # in the manifests (None: not there)
    differs: list[str] = field(default_factory=list)  # attributes that differ
    sensitive: list[str] = field(default_factory=list)  # secrets among them (values hidden)


@dataclass
class DriftSection:
    """The items of one host's own settings, or of one tenant on that host (one HTML table)."""

    title: str
    host: str
    tenant: str | None
    items: list[DriftItem]


@dataclass
class DriftReport:
    items: list[DriftItem]
    problems: list[PlanProblem]
    generated: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def has_drift(self) -> bool:
        return bool(self.items)

    def counts(self) -> dict[str, int]:
        counter = Counter(i.category for i in self.items)
        return {k: counter.get(k, 0) for k in CATEGORIES}

    def summary(self) -> str:
        problems = _count(len(self.problems), "problem")
        if not self.items:
            if self.problems:
                return f"No drift found in what could be checked; {problems} listed below."
            return "No drift: the estate matches the manifests."
        counts = self.counts()
        hosts = len({i.host for i in self.items})
        tenants = len({i.tenant for i in self.items if i.tenant})
        text = (
            f"Drift: {counts['changed']} changed, {counts['missing']} missing, "
            f"{counts['unmanaged']} unmanaged, on {_count(hosts, 'host')} "
            f"and {_count(tenants, 'tenant')}."
        )
        return f"{text} Also {problems}, listed below." if self.problems else text

    def by(self, attribute: str) -> dict[str, Counter[str]]:
        """Counts per category for each value of ``host``, ``tenant`` or ``kind``."""
        groups: dict[str, Counter[str]] = {}
        for item in self.items:
            key = getattr(item, attribute) or NO_TENANT
            groups.setdefault(key, Counter())[item.category] += 1
        return dict(sorted(groups.items()))

    def sections(self) -> list[DriftSection]:
        """Host by host: the host's own settings first, then each of its tenants."""
        sections: dict[tuple[str, str], DriftSection] = {}
        for item in self.items:
            key = (item.host, item.tenant or "")
            if key not in sections:
                title = (
                    f"Tenant {item.tenant} on {item.host}"
                    if item.tenant
                    else f"Host {item.host}: host settings"
                )
                sections[key] = DriftSection(title, item.host, item.tenant, [])
            sections[key].items.append(item)
        return [sections[key] for key in sorted(sections)]


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
                drift_lines(change),
                before=change.before,
                after=change.after,
                differs=[] if change.action is Action.DELETE else change.changed_attributes,
                sensitive=list(change.sensitive_changed),
            )
        )
    for extra in plan.unmanaged:
        items.append(
            DriftItem(
                "unmanaged", extra.address, extra.kind, extra.host, extra.tenant, extra.detail
            )
        )
    items.sort(key=lambda i: (i.host, i.tenant or "", i.address))
    return DriftReport(items, list(plan.problems), datetime.now(UTC), list(plan.notes))


def drift_lines(change: Change) -> list[str]:
    """What differs, said from the host's side: ``key: host has X, manifests want Y``.

    (A plan's ``X → Y`` reads, in a drift report, as if the host had moved from X to Y.)
    """
    if change.action is Action.DELETE:
        return []
    before, after = change.before or {}, change.after or {}
    lines = []
    for key in change.changed_attributes:
        wanted = value_text(after.get(key))
        if key in change.sensitive_changed:
            lines.append(
                f"{key}: {REDACTED}" + ("" if change.action is Action.CREATE else " differs")
            )
        elif change.action is Action.CREATE:
            lines.append(f"{key}: manifests want {wanted}")
        else:
            lines.append(f"{key}: host has {value_text(before.get(key))}, manifests want {wanted}")
    return lines


def render_text(report: DriftReport) -> str:
    lines = [report.summary(), ""]
    for section in report.sections():
        lines.append(section.host + (f" / tenant {section.tenant}" if section.tenant else ""))
        for item in section.items:
            lines.append(f"  {item.category:<9} {item.address}   {item.detail}")
            lines.extend(f"              {line}" for line in item.lines)
    if report.problems:
        lines += ["", "Problems:"] + [f"  ! {p.message}" for p in report.problems]
    if report.notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(report: DriftReport) -> str:
    lines = ["### provisioner drift", "", f"**{md_text(report.summary())}**", ""]
    if report.items:
        lines += ["| host | tenant | category | address | detail |", "|---|---|---|---|---|"]
        for item in report.items:
            detail = "<br>".join(md_text(text) for text in [item.detail, *item.lines])
            lines.append(
                f"| {md_text(item.host)} | {md_text(item.tenant or '')} | {item.category} "
                f"| {md_code(item.address)} | {detail} |"
            )
    if report.problems:
        lines += ["", "**Problems**", ""] + [f"- {md_text(p.message)}" for p in report.problems]
    if report.notes:
        lines += ["", "**Notes**", ""] + [f"- {md_text(n)}" for n in report.notes]
    return "\n".join(lines) + "\n"


def render_json(report: DriftReport) -> str:
    """Data, not sentences: per item what and where, both sides and the names that differ."""
    data: dict[str, Any] = {
        "format_version": DRIFT_FORMAT_VERSION,
        "generated": _iso(report.generated),
        "has_drift": report.has_drift,
        "counts": report.counts(),
        "items": [
            {
                "category": item.category,
                "address": item.address,
                "kind": item.kind,
                "host": item.host,
                "tenant": item.tenant,
                "before": item.before,
                "after": item.after,
                "differs": item.differs,
                "sensitive": item.sensitive,
                "detail": item.detail if item.category == "unmanaged" else None,
            }
            for item in report.items
        ],
        "problems": [
            {
                "message": p.message,
                "tenant": p.tenant,
                "host": p.host,
                "address": p.address,
                "found": p.found,  # a difference found, not something left unchecked
            }
            for p in report.problems
        ],
        "notes": report.notes,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_html(report: DriftReport) -> str:
    """One self-contained page: no scripts, no external resources (its CSP forbids them)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("drift.html.j2").render(
        report=report,
        generated=_iso(report.generated),
        generated_text=report.generated.strftime("%Y-%m-%d %H:%M UTC"),
        categories=CATEGORIES,
        meaning=MEANING,
        count_tables=[
            ("Host", report.by("host")),
            ("Tenant", report.by("tenant")),
            ("Resource kind", report.by("kind")),
        ],
        sections=report.sections(),
    )


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC: ``2026-03-01T14:05:09Z``."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
