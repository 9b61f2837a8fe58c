"""A rollout's report, running or finished, from the state store: text, Markdown and HTML.

Waves with their state and duration, tenants per state (done, failed, waiting or not started),
the failures with their messages, and how to resume::

    report = Report.of(Rollouts(store).load(7))
    print(render_text(report))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import jinja2

from provisioner.converge import count
from provisioner.remote.scripts import templates_dir
from provisioner.render.markdown import code
from provisioner.render.markdown import text as markdown_cell
from provisioner.state.rollouts import RolloutState, TenantRow, WaveRow
from provisioner.state.store import utcnow

LISTED = 10  # names listed per group in text before "--verbose lists them"


@dataclass(frozen=True)
class WaveLine:
    number: int
    name: str  # servers | canary | wave N
    state: str
    units: int
    tenants: Counter[str]  # per tenant state
    failed_hosts: int
    duration: str


@dataclass(frozen=True)
class Failure:
    tenant: str  # "" for a host's own part
    host: str
    wave: int
    message: str


@dataclass
class Report:
    state: RolloutState
    waves: list[WaveLine]
    failures: list[Failure]

    @classmethod
    def of(cls, state: RolloutState) -> Report:
        waves = [_wave_line(state, wave) for wave in state.waves]
        failures = [
            Failure("", u.host.split("/", 1)[-1], w.number, u.message)
            for w in state.waves
            if w.number == 0
            for u in w.units
            if u.status == "failed"
        ] + [
            Failure(t.tenant, t.server, t.wave, t.message)
            for t in state.tenants
            if t.status == "failed"
        ]
        return cls(state, waves, failures)

    @property
    def finished(self) -> bool:
        return self.state.status != "running"

    def tenant_state(self, tenant: TenantRow) -> str:
        return _tenant_state(self.state, tenant)

    def counts(self) -> Counter[str]:
        return Counter(self.tenant_state(t) for t in self.state.tenants)

    def summary(self) -> str:
        counts = self.counts()
        order = ("done", "failed", "in progress", "waiting", "not started")
        parts = [f"{counts[name]} {name}" for name in order if counts[name]]
        tenants = ", ".join(parts) or "no tenants"
        head = f"Rollout {self.state.run_id} {self.state.status}"
        why = f" ({self.state.summary})" if self.state.summary else ""
        return f"{head}{why}: {count(len(self.state.tenants), 'tenant')}: {tenants}."

    def not_started(self) -> list[str]:
        return [t.tenant for t in self.state.tenants if self.tenant_state(t) == "not started"]

    @property
    def duration(self) -> str:
        return _duration(self.state.started_at, self.state.finished_at)

    @property
    def resumable(self) -> bool:
        return self.state.status in ("halted", "interrupted")


def _tenant_state(state: RolloutState, tenant: TenantRow) -> str:
    if tenant.status != "waiting":
        return tenant.status
    if state.status != "running":
        return "not started"
    return "in progress" if tenant.wave == state.current_wave else "waiting"


def _wave_line(state: RolloutState, wave: WaveRow) -> WaveLine:
    name = {0: "servers", 1: "canary"}.get(wave.number, "tenants")
    tenants = Counter(_tenant_state(state, t) for t in wave.tenants)
    shown = wave.status
    if wave.status == "waiting" and state.status != "running":
        shown = "not started"
    return WaveLine(
        wave.number,
        name,
        shown,
        len(wave.units),
        tenants,
        sum(u.status == "failed" for u in wave.units),
        _duration(wave.started_at, wave.finished_at) if wave.started_at else "",
    )


def _duration(start: datetime, end: datetime | None) -> str:
    seconds = int(((end or utcnow()) - start).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _tenants_text(tenants: Counter[str]) -> str:
    total = sum(tenants.values())
    return f"{count(total, 'tenant')}: " + ", ".join(
        f"{n} {state}" for state, n in sorted(tenants.items())
    )


def _names(names: list[str], verbose: bool) -> str:
    if verbose or len(names) <= LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:LISTED])}, ... ({len(names)}; --verbose lists them)"


# --- renderers -----------------------------------------------------------------------------------


def render_text(report: Report, *, verbose: bool = False) -> str:
    state = report.state
    settings = state.settings
    lines = [
        report.summary(),
        f"  started {state.started_at:%Y-%m-%d %H:%M:%S} UTC by {state.owner}, {report.duration}; "
        f"waves {settings.waves}, max failures {settings.max_failures}",
    ]
    for wave in report.waves:
        what = (
            count(wave.units, "host")
            + (f", {wave.failed_hosts} failed" if wave.failed_hosts else "")
            if wave.number == 0
            else _tenants_text(wave.tenants)
        )
        lines.append(
            f"  wave {wave.number} ({wave.name}): {wave.state}, {what}  {wave.duration}".rstrip()
        )
    if report.failures:
        lines.append("Failed:")
        for failure in report.failures:
            who = f"tenant {failure.tenant}" if failure.tenant else f"host {failure.host}"
            lines.append(f"  {who} (wave {failure.wave}, {failure.host}): {failure.message}")
    waiting = report.not_started()
    if waiting:
        lines.append(f"Not started: {_names(waiting, verbose)}")
    if report.resumable:
        lines.append(f"Resume with: provisioner rollout --resume {state.run_id}")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    state = report.state
    lines = [
        f"## Rollout {state.run_id}: {state.status}",
        "",
        f"**{markdown_cell(report.summary())}**",
        "",
        f"Started {state.started_at:%Y-%m-%d %H:%M:%S} UTC by {markdown_cell(state.owner)}, "
        f"{report.duration}; waves {code(state.settings.waves, in_table=False)}, max failures "
        f"{code(state.settings.max_failures, in_table=False)}.",
        "",
        "| wave | | state | hosts | tenants | duration |",
        "|---:|---|---|---:|---|---|",
    ]
    for wave in report.waves:
        lines.append(
            f"| {wave.number} | {wave.name} | {wave.state} | {wave.units} | "
            f"{_tenants_text(wave.tenants) if wave.number else '-'} | {wave.duration} |"
        )
    if report.failures:
        lines += [
            "",
            "### Failures",
            "",
            "| tenant | host | wave | message |",
            "|---|---|---:|---|",
        ]
        lines += [
            f"| {markdown_cell(f.tenant or '(host)')} | {markdown_cell(f.host)} | {f.wave} | "
            f"{markdown_cell(f.message)} |"
            for f in report.failures
        ]
    waiting = report.not_started()
    if waiting:
        lines += ["", f"Not started: {markdown_cell(', '.join(waiting))}"]
    if report.resumable:
        lines += ["", f"Resume with `provisioner rollout --resume {state.run_id}`."]
    return "\n".join(lines) + "\n"


def render_html(report: Report) -> str:
    """One self-contained page: no scripts, no external resources (its CSP forbids them)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return environment.get_template("rollout.html.j2").render(
        report=report, tenants_text=_tenants_text
    )


RENDERERS = {"text": render_text, "markdown": render_markdown, "html": render_html}
