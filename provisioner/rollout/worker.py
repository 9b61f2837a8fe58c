"""A rollout worker: it claims units (one host in one wave) and works each through the same
steps as ``apply`` (:mod:`provisioner.converge`): read, plan, hold back, carry out, verify and
health, narrowed to the wave's tenants on that host (wave 0: the host's own resources).

Several workers, in one process (threads) or on several machines (one PostgreSQL store), drive
one rollout; none knows the others. A host's facts from a unit's verifying gather serve the next
unit on that host when the same worker works it (no one else has worked the host meanwhile):
so each host costs one gather and one batch per wave, plus one verifying gather at the end.

Each worker holds the locks of the hosts it works, on the hosts (``rollout 7 worker
alice@ws17 pid 4711``): its first gather on a host takes the lock, its batches renew it, and its
verifying gather keeps it while a later wave has tenants on the host, so no other apply or
rollout comes in between waves; the host's last unit gives it back. A worker that takes a host
over from another worker of the rollout (the other's unit there finished, or its lease ran out)
takes that worker's lock over, and no one else's.

    worker = Worker(store, run_id, estate, inventory, owner="alice@ws17 pid 4711")
    status = worker.drive()          # "complete", "halted", "interrupted" (after stop())
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from provisioner.converge import (
    Check,
    Scope,
    Work,
    carry_out,
    health,
    plan_of,
    verify,
    work_of,
)
from provisioner.errors import ProvisionerError
from provisioner.host_locks import HostLocks
from provisioner.inventory import Inventory
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Change, Plan, PlanProblem
from provisioner.planner import Host, hosts
from provisioner.remote.contract import HostFacts
from provisioner.runner import HostResult, Run
from provisioner.state.rollouts import Rollouts, Unit
from provisioner.state.store import RunRecord, StateStore, StateStoreGone

POLL_S = 0.5  # how often an idle worker looks for work
FINAL = ("complete", "halted", "interrupted")


@dataclass
class UnitOutcome:
    """What came of one unit: ``done`` or ``failed``, and per tenant the same with a reason."""

    status: str
    message: str
    tenants: dict[str, tuple[str, str]] = field(default_factory=dict)
    interrupted: bool = False


class TakenOver(ProvisionerError):
    """This worker's lease on a unit ran out and another worker took the unit over."""


class Lease:
    """Renews a worker's claim on a unit while it works, in the background."""

    def __init__(self, rollouts: Rollouts, unit: Unit, worker: str, lease_s: float) -> None:
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew, args=(rollouts, unit, worker, lease_s), daemon=True
        )
        self._thread.start()

    def _renew(self, rollouts: Rollouts, unit: Unit, worker: str, lease_s: float) -> None:
        while not self._stop.wait(lease_s / 3):
            try:
                if not rollouts.renew(unit, worker, lease_s):
                    self.lost = True
                    return
            except StateStoreGone:
                return  # the work finishes; its results go to the fallback file

    def check(self) -> None:
        if self.lost:
            raise TakenOver("another worker took this host over (this worker's lease ran out)")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(
        self,
        store: StateStore,
        run_id: int,
        estate: Estate,
        inventory: Inventory,
        *,
        owner: str,
        parallelism: int = 10,
        ask: Callable[[int], bool] | None = None,
        wait_s: float = 0.0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.estate = estate
        self.rollouts = Rollouts(store)
        self.settings = self.rollouts.load(run_id).settings
        self.threshold = self.settings.threshold
        self.owner = owner
        self.parallelism = parallelism
        self.ask = ask  # asks the operator to open a wave (--confirm-each-wave), or None
        self.wait_s = wait_s  # how long a unit queues behind another's lock on its host
        self.locks = HostLocks(lock_owner(run_id, owner))
        self.run = Run(estate, inventory, parallelism=parallelism, owner=owner, locks=self.locks)
        self.hosts = {h.key: h for h in hosts(estate)}
        self.status = "running"
        self.error: ProvisionerError | None = None
        self._facts: dict[str, tuple[HostFacts, int]] = {}  # host key → (facts, unit)
        self._facts_lock = threading.Lock()
        self._asking = threading.Lock()

    @property
    def stopping(self) -> threading.Event:
        return self.run.stopping

    def drive(self) -> str:
        """Work until the rollout is complete, halted or interrupted; returns its status."""
        finished = [threading.Event() for _ in range(self.parallelism)]
        for event in finished:
            threading.Thread(target=self._loop, args=(event,), daemon=True).start()
        try:
            for event in finished:
                while not event.wait(0.2):  # short waits: Ctrl-C reaches this thread
                    pass
        except KeyboardInterrupt:
            self.stop(finished)
            raise
        finally:
            try:
                self._let_go()
            finally:
                self.run.close()
        if self.error is not None:
            raise self.error
        return self.status

    def stop(self, finished: list[threading.Event]) -> None:
        """Ctrl-C: send nothing more, let what is on its way finish and be recorded, give the
        rest back; the rollout is interrupted, and resumable. (Threads are waited for by
        events: a ``Thread.join`` that a Ctrl-C interrupted may wrongly think them ended.)"""
        self.stopping.set()
        for event in finished:
            event.wait()
        self.rollouts.interrupt(self.run_id, f"interrupted (Ctrl-C) by {self.owner}")

    def _let_go(self) -> None:
        """Give back the host locks this worker still holds (a halt, Ctrl-C, a lost store),
        except where another worker of the rollout worked the host after it (it took the lock
        over)."""
        try:
            for key in self.locks.held:
                last = self.rollouts.last_unit(self.run_id, key)
                if last is not None and last[0] != self.owner:
                    self.locks.settle(key, held=False)
        except ProvisionerError:
            pass  # the store is away: give back all, a host refuses what is not ours
        self.run.release()

    # --- the loop --------------------------------------------------------------------------------

    def _loop(self, finished: threading.Event) -> None:
        try:
            while not self.stopping.is_set():
                unit = self.rollouts.claim(self.run_id, self.owner, self.settings.lease_s)
                if unit is not None:
                    self._work(unit)
                    continue
                status = self.rollouts.advance(self.run_id)
                if status in FINAL:
                    self.status = status
                    return
                if status == "confirm":
                    self._confirm()
                if status != "opened":  # else the next wave's units are there to claim
                    self.stopping.wait(POLL_S)
        except ProvisionerError as exc:  # the store went away: stop everywhere, say it once
            self.error = self.error or exc
            self.stopping.set()
        finally:
            finished.set()

    def _confirm(self) -> None:
        if self.ask is None or not self._asking.acquire(blocking=False):
            return  # a worker with a terminal answers
        try:
            state = self.rollouts.load(self.run_id)
            wave = state.current_wave
            if state.waves[wave].status == "confirm":
                self.rollouts.confirm(self.run_id, self.ask(wave))
        finally:
            self._asking.release()

    def _work(self, unit: Unit) -> None:
        lease = Lease(self.rollouts, unit, self.owner, self.settings.lease_s)
        started = datetime.now(UTC)
        try:
            outcome = self.converge(unit, lease)
        except TakenOver:
            return  # the other worker records it
        except StateStoreGone:
            raise
        except ProvisionerError as exc:
            outcome = UnitOutcome("failed", str(exc))
        finally:
            lease.stop()
        if outcome.interrupted:
            self.rollouts.release(unit, self.owner)
            return
        retried = self.run.retry_lines(unit.host.split("/", 1)[1], since=started)
        self.rollouts.finish(
            unit,
            self.owner,
            outcome.status,
            "; ".join(filter(None, [outcome.message, *retried])),
            tenants=outcome.tenants,
            threshold=self.threshold,
        )

    # --- one unit ----------------------------------------------------------------------------

    def converge(self, unit: Unit, lease: Lease) -> UnitOutcome:
        """One host in one wave: plan, apply, verify and health."""
        host = self.hosts.get(unit.host)
        if host is None:
            return UnitOutcome("failed", f"{unit.host} is not in the manifests any more")
        names = self.rollouts.tenants_of(unit)
        tenants = [self.estate.tenants[n] for n in names if n in self.estate.tenants]
        facts, problems = self._facts_for(unit, host)
        reading = self.run.read_around(facts, problems, tenants)
        plan, host_plans = plan_of(self.estate, self.run.inventory, reading)
        work = work_of(plan, host_plans, scope_of(unit, host, set(names)))
        lease.check()
        record = RunRecord(self.store, self.run_id, wave=unit.wave, worker=self.owner)
        if unit.taken_over_from and host.key in reading.facts:
            # what the stopped worker sent, judged by the fresh plan
            record.settle(host, {c.address for c in plan.actionable})
        results: list[HostResult] = []
        if work.pending:
            results = carry_out(self.run, work, reading, record)
        if any(r.status == "interrupted" for r in results):
            return UnitOutcome("failed", "interrupted", interrupted=True)
        last = not self.rollouts.later_waves_on(unit)  # the host's lock goes back after it
        if results:
            check = verify(self.run, reading, results, work, tenants=tenants, release=last)
        else:
            check = Check(facts, health=health(self.estate, facts, reading, tenants))
        if last:
            self.run.release([host])  # where no verifying gather gave it back
        if host.key in check.facts:
            with self._facts_lock:
                self._facts[host.key] = (check.facts[host.key], unit.id)
        return judge(host, names, plan, work, results, check)

    def _facts_for(self, unit: Unit, host: Host) -> tuple[dict[str, HostFacts], list[PlanProblem]]:
        """The facts this worker's last unit on the host verified with (under the lock it
        kept), if no one worked the host since; else a gather that takes the host's lock, over
        from the worker that had the host before, if another."""
        with self._facts_lock:
            cached = self._facts.get(host.key)
        last = self.rollouts.last_unit(self.run_id, host.key)
        if cached is not None and last == (self.owner, cached[1]):
            return {host.key: cached[0]}, []
        before = unit.taken_over_from or (last[0] if last is not None else None)
        if before is not None and before != self.owner:
            self.locks.replaces[host.key] = lock_owner(self.run_id, before)
        return self.run.gather([host], wait_s=self.wait_s)


def lock_owner(run_id: int, worker: str) -> str:
    """The owner a rollout worker's host locks name: ``rollout 7 worker alice@ws17 pid 4711``."""
    return f"rollout {run_id} worker {worker}"


def scope_of(unit: Unit, host: Host, tenants: set[str]) -> Scope:
    """Wave 0: the host's own resources; later waves: the wave's tenants on that host."""
    if unit.wave == 0:
        return lambda change: change.tenant is None and change.host == host.name
    return lambda change: change.tenant in tenants


def judge(
    host: Host,
    tenants: list[str],
    plan: Plan,
    work: Work,
    results: list[HostResult],
    check: Check,
) -> UnitOutcome:
    """Each tenant is done unless something of it was held back, failed or did not verify,
    or its health is not good; the unit fails when a tenant or the host's own part did."""
    failures: dict[str, str] = {}
    problems: dict[str | None, str] = {}
    for problem in plan.problems:
        problems.setdefault(problem.tenant, problem.message)
    for change in work.held:
        failures.setdefault(
            change.tenant or "", f"held back: {problems.get(change.tenant) or problems.get(None)}"
        )
    for result in results:
        for done in result.changes:
            if done.status != "ok":
                why = done.message or result.message or done.status
                failures.setdefault(_owner(done.change), f"{done.change.address}: {why}")
    for line in check.leftovers:
        failures.setdefault(line.split("/")[1] if line.startswith("tenant/") else "", line)
    for tenant_health in check.health:
        if not tenant_health.ok:
            failures.setdefault(tenant_health.tenant, str(tenant_health))
    own = failures.get("")
    host_problem = next((p.message for p in plan.problems if p.host == host.name), None)
    own = own or host_problem
    outcome = UnitOutcome("done", "")
    for tenant in tenants:
        why = failures.get(tenant) or (f"{host.name}: {own}" if own else "")
        outcome.tenants[tenant] = ("failed", why) if why else ("done", "")
    failed = [f"{t}: {why}" for t, (status, why) in outcome.tenants.items() if status == "failed"]
    if own or failed:
        outcome.status = "failed"
        outcome.message = own or failed[0]
    return outcome


def _owner(change: Change) -> str:
    return change.tenant or ""
