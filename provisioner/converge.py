"""One orchestration for ``apply`` and for each wave of a ``rollout``, as named steps.

    reading = run.read()                                     # gather (locks), PBX, directory
    plan, host_plans = plan_of(estate, inventory, reading)   # the pure planner
    work = work_of(plan, host_plans)                         # what goes ahead, what is held back
    results = carry_out(run, work, reading, recorder)        # group changes, a batch per host
    check = verify(...)                                      # a fresh read (gives the locks
                                                             # back): leftovers, health
    outcome = Outcome(plan, work, results, check)            # counts, lines, the exit code

``apply`` runs them once over the estate (:mod:`provisioner.commands`); a rollout runs them per
host and wave, with ``scope`` narrowing the work to the wave's tenants
(:mod:`provisioner.rollout.worker`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from provisioner.directory.reader import read_directory
from provisioner.inventory import Inventory
from provisioner.manifest.models import Tenant
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Action, Change, Plan, PlanProblem
from provisioner.planner import (
    Host,
    HostPlan,
    PlanInputs,
    build_plan,
    handlers,
    profile_for,
)
from provisioner.remote.contract import HostFacts
from provisioner.resources import line_assignment
from provisioner.resources.services import cti_engine_name
from provisioner.resources.users_group import KIND as GROUP
from provisioner.runner import HostResult, Reading, Recorder, Run

Scope = Callable[[Change], bool]
MARKS = {"ok": "✓", "failed": "✗", "not-run": "·", "unknown": "?"}
LISTED = 5  # held-back changes named one by one per tenant or host; more are counted


def count(n: int, noun: str) -> str:
    """``1 tenant``, ``2 tenants``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def everything(change: Change) -> bool:
    return True


def plan_of(
    estate: Estate, inventory: Inventory, reading: Reading, targets: Sequence[str] = ()
) -> tuple[Plan, dict[str, HostPlan]]:
    return build_plan(estate, reading.inputs(estate, inventory), targets=targets)


@dataclass
class Work:
    """What goes ahead: group changes over LDAP, then each host's batch; and what is held."""

    directory: list[Change]
    hosts: dict[str, HostPlan]
    held: list[Change]

    @property
    def pending(self) -> list[Change]:
        changes = self.directory + [c for hp in self.hosts.values() for c in hp.changes]
        return [c for c in changes if c.action is not Action.NOOP]

    @property
    def busy(self) -> set[str]:
        """The keys of the hosts that get a batch."""
        return {
            key
            for key, host_plan in self.hosts.items()
            if any(c.action is not Action.NOOP for c in host_plan.changes)
        }


def work_of(plan: Plan, host_plans: dict[str, HostPlan], scope: Scope = everything) -> Work:
    """The work within ``scope``; the planner already took out what a problem concerns
    (``plan.held_back``) and the restarts only that needed."""
    held = set(plan.held_back)
    return Work(
        directory=[
            c for c in plan.actionable if c.kind == GROUP and c.address not in held and scope(c)
        ],
        hosts={key: narrowed(hp, scope) for key, hp in host_plans.items()},
        held=[c for c in plan.actionable if c.address in held and scope(c)],
    )


def narrowed(host_plan: HostPlan, keep: Scope) -> HostPlan:
    """The host plan with the changes ``keep`` accepts and the restarts those need."""
    kept = [c for c in host_plan.changes if c.action is not Action.RESTART and keep(c)]
    needed = {c.address for c in handlers(kept, host_plan.context)}
    changes = [c for c in host_plan.changes if c in kept or c.address in needed]
    return HostPlan(host_plan.host, host_plan.context, changes, host_plan.desired)


def carry_out(run: Run, work: Work, reading: Reading, recorder: Recorder) -> list[HostResult]:
    """Group membership first (it needs no host), then one batch per host, in parallel."""
    results = []
    if work.directory:
        results.append(run.apply_directory(work.directory, reading.directory, recorder))
    return results + run.apply(work.hosts, recorder)


# --- checking what was done --------------------------------------------------------------------


@dataclass(frozen=True)
class TenantHealth:
    tenant: str
    server: str
    engine: str  # running | stopped | missing | not managed
    login: bool

    @property
    def ok(self) -> bool:
        return self.engine in ("running", "not managed") and self.login

    def __str__(self) -> str:
        return (
            f"tenant {self.tenant} on {self.server}: CTI engine {self.engine}, "
            f"CTI API login {'ok' if self.login else 'FAILED'}"
        )


@dataclass
class Check:
    """What a fresh read after the apply shows."""

    facts: dict[str, HostFacts]
    leftovers: list[str] = field(default_factory=list)  # "ADDRESS: what still differs"
    notes: list[str] = field(default_factory=list)  # what differs only as expected
    health: list[TenantHealth] = field(default_factory=list)

    def leftovers_of(self, tenant: str) -> list[str]:
        return [line for line in self.leftovers if line.startswith(f"tenant/{tenant}/")]


def verify(
    run: Run,
    reading: Reading,
    results: list[HostResult],
    work: Work,
    *,
    tenants: Iterable[Tenant] | None = None,
    release: bool = True,
) -> Check:
    """Gather the hosts that got a batch again (giving their locks back, unless not
    ``release``: a rollout's host with more waves to come) and plan from what they show:
    whatever was done but still differs is a leftover; then the health of the tenants on those
    servers. A host whose batch found its lock lost is not read again (it is not this run's)."""
    applied = {r.host.key for r in results if r.status != "locked"}
    facts, problems = run.gather([h for h in run.hosts if h.key in applied], release=release)
    return check_against(run, reading, results, work, facts, problems, tenants=tenants)


def check_against(
    run: Run,
    reading: Reading,
    results: list[HostResult],
    work: Work,
    facts: dict[str, HostFacts],
    problems: list[PlanProblem],
    *,
    tenants: Iterable[Tenant] | None = None,
) -> Check:
    estate, inventory = run.estate, run.inventory
    chosen = list(estate.tenants.values()) if tenants is None else list(tenants)
    directory = None
    if reading.directory.read_sites:  # AD as it is now: group changes are checked against it
        scope = {t.name: t for t in chosen}
        directory = read_directory(replace(estate, tenants=scope), inventory)
    inputs = PlanInputs(
        facts=facts,
        problems=problems,
        resolve=inventory.resolve,
        extensions=reading.pbx.extensions,
        # the plan's user policies hold for the check too (removed lines stay removed)
        directory=directory,
    )
    after, after_hosts = build_plan(estate, inputs, targets=[])
    check = Check(facts, leftovers(after, after_hosts, results), owed(after, after_hosts, work))
    check.leftovers += [f"{p.host}: not verified: {p.message}" for p in problems if p.host]
    applied = {r.host.name for r in results if r.host.role == "server"}
    on_applied = [t for t in chosen if t.server in applied]
    check.health = health(estate, facts, reading, on_applied)
    return check


def leftovers(
    after: Plan, after_hosts: dict[str, HostPlan], results: list[HostResult]
) -> list[str]:
    """What the apply said it did but the hosts do not show: one line per leftover.

    A restart counts only when a change done now needs it again; one needed by changes held
    back (see :func:`owed`) or outside this apply's scope (a later wave's) is no leftover.
    """
    done = {r.change.address for h in results for r in h.changes if r.status == "ok"}
    lines = []
    for change in after.actionable:
        if change.address not in done:
            continue
        if change.kind == line_assignment.KIND:
            lines += _line_leftovers(change)
        elif change.action is not Action.RESTART or any(
            c.address in done for c in _needing(change, after_hosts)
        ):
            lines.append(f"{change.address}: still differs after apply ({change.reason})")
    return lines


def owed(after: Plan, after_hosts: dict[str, HostPlan], work: Work) -> list[str]:
    """Restarts planned again only because changes held back still need them."""
    held = {c.address: c for c in work.held}
    lines = []
    for restart in (c for c in after.actionable if c.action is Action.RESTART):
        waiting = sorted(
            {
                f"tenant {c.tenant}" if c.tenant else f"host {c.host}"
                for c in _needing(restart, after_hosts)
                if c.address in held
            }
        )
        if waiting:
            lines.append(
                f"{restart.address} still differs only because the changes of "
                f"{', '.join(waiting)} were held back; it runs again when they go ahead"
            )
    return lines


def _line_leftovers(change: Change) -> list[str]:
    wanted = set((change.after or {}).get("lines", []))
    have = set((change.before or {}).get("lines", []))
    lines = [
        f"{change.address}: line {line} did not take (tsecimp reports no error for lines the "
        "TSP does not offer: is the extension in the PBX?)"
        for line in sorted(wanted - have)
    ]
    return lines + [f"{change.address}: line {n} is still assigned" for n in sorted(have - wanted)]


def _needing(restart: Change, host_plans: dict[str, HostPlan]) -> list[Change]:
    """The changes of the restart's host that need that restart."""
    for host_plan in host_plans.values():
        if host_plan.host.name != restart.host:
            continue
        return [
            c
            for c in host_plan.changes
            if c.action is not Action.RESTART
            and c.action is not Action.NOOP
            and any(r.address == restart.address for r in handlers([c], host_plan.context))
        ]
    return []


def health(
    estate: Estate, facts: dict[str, HostFacts], reading: Reading, tenants: Iterable[Tenant]
) -> list[TenantHealth]:
    """Per tenant: does its server's CTI engine run, does its CTI login work?"""
    found = []
    for tenant in sorted(tenants, key=lambda t: t.name):
        server = estate.servers[tenant.server]
        host_facts = facts.get(f"server/{tenant.server}")
        engine = "not managed"
        if server.cti_engine is not None and host_facts is not None:
            host = Host(f"server/{server.name}", server.name, "server")
            wanted = (cti_engine_name(server, profile_for(estate, host)) or "").lower()
            service = next((s for s in host_facts.services if s.name.lower() == wanted), None)
            engine = service.state if service else "missing"
        login = tenant.name in reading.pbx.extensions
        found.append(TenantHealth(tenant.name, tenant.server, engine, login))
    return found


# --- saying what happened ----------------------------------------------------------------------


def held_lines(held: Sequence[Change], *, verbose: bool) -> list[str]:
    """``held back: ADDRESS (why)`` per change; past a few for one tenant or host, one line per
    kind of change with a count (``--verbose`` names each)."""
    owners: dict[str, list[Change]] = {}
    for change in held:
        owner = f"tenant {change.tenant}" if change.tenant else f"host {change.host}"
        owners.setdefault(owner, []).append(change)
    lines = []
    for owner, changes in owners.items():
        why = f"a problem above concerns {owner}"
        if verbose or len(changes) <= LISTED:
            lines += [f"held back: {c.address} ({why})" for c in changes]
            continue
        kinds: dict[str, list[Change]] = {}
        for change in changes:
            kinds.setdefault(change.kind, []).append(change)
        for same in kinds.values():
            if len(same) == 1:
                lines.append(f"held back: {same[0].address} ({why})")
            else:
                prefix = same[0].address.rsplit("/", 1)[0]
                lines.append(f"held back: {prefix}/* ({len(same)} changes; {why})")
    return lines


def grouped_notes(notes: Sequence[str], *, verbose: bool) -> list[str]:
    """Notes that many tenants (or sites, hosts) share, as one line each: ``tenant k1:
    extensions no one is assigned: 104`` for 40 tenants reads ``40 tenants: extensions no one is
    assigned (k1, k2, k3, ...; --verbose lists each)``. A few stay as they are."""
    if verbose:
        return list(notes)
    shared: dict[tuple[str, str], list[str]] = {}
    for note in notes:
        if found := _NOTE.match(note):
            shared.setdefault((found["kind"], found["statement"]), []).append(found["name"])
    lines, said = [], set()
    for note in notes:
        found = _NOTE.match(note)
        key = (found["kind"], found["statement"]) if found else None
        if key is None or len(shared[key]) <= LISTED:
            lines.append(note)
        elif key not in said:
            said.add(key)
            names = shared[key]
            lines.append(
                f"{len(names)} {key[0]}s: {key[1]} ({', '.join(names[:3])}, ...; --verbose lists "
                "each)"
            )
    return lines


_NOTE = re.compile(r"(?P<kind>tenant|site|host) (?P<name>[^:\s]+): (?P<statement>[^:]+)(?:: .*)?$")


def result_lines(results: Sequence[HostResult]) -> list[str]:
    lines = []
    for result in results:
        for change in result.changes:
            suffix = f": {change.message}" if change.message else ""
            lines.append(f"{MARKS[change.status]} {change.change.address} {change.status}{suffix}")
        if result.status != "ok":
            lines.append(f"{result.host.name}: {result.status}: {result.message}")
    return lines


@dataclass
class Outcome:
    """The counts of one apply (or one rollout unit), its summary and its exit code."""

    plan: Plan
    work: Work
    results: list[HostResult]
    check: Check | None = None

    @property
    def done(self) -> int:
        return sum(1 for r in self.results for c in r.changes if c.status == "ok")

    @property
    def total(self) -> int:
        return sum(len(r.changes) for r in self.results)

    @property
    def failed_hosts(self) -> list[str]:
        return [r.host.name for r in self.results if r.status != "ok"]

    @property
    def leftovers(self) -> list[str]:
        return self.check.leftovers if self.check else []

    @property
    def complete(self) -> bool:
        return not self.failed_hosts and not self.leftovers

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_hosts or self.leftovers or self.plan.problems else 0

    def summary(self, what: str = "Apply") -> list[str]:
        """The summary line, and when the exit code is 1 beside "complete", why on the next."""
        parts = [f"{self.done} of {self.total} changes done"]
        if self.work.held:
            parts.append(f"{len(self.work.held)} held back")
        if self.failed_hosts:
            parts.append(f"failed on {', '.join(self.failed_hosts)}")
        if self.leftovers:
            parts.append(f"{len(self.leftovers)} did not verify")
        word = "complete" if self.complete else "incomplete"
        lines = [f"{what} {word}: {'; '.join(parts)}."]
        if self.complete and self.exit_code:
            reason = f"{count(len(self.plan.problems), 'problem')} listed above"
            if self.work.held:
                reason += f" held back {count(len(self.work.held), 'change')}"
            lines.append(f"Exit code 1: {reason}; fix them and apply again.")
        return lines
