"""The I/O edge of plan, apply and drift: reach every host, gather, apply batches, verify.

Hosts are worked in parallel (bounded by ``parallelism``); each host gets one connector (one
WinRM shell) for the whole run, one gather command per read and one apply command per batch.
Connectors come from one factory (:mod:`provisioner.connectors`), WinRM unless given another.
A run that applies carries its :class:`~provisioner.host_locks.HostLocks`: its gathers take
each host's lock, its batches renew it, a gather with ``release`` gives it back, and whatever is
still held when the run ends is given back with one small command per host.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol, TypeVar

from provisioner.connectors import Connect, Connector, over_winrm
from provisioner.directory.model import DirectoryFacts, group_key
from provisioner.directory.operations import add_group_members, remove_group_members
from provisioner.directory.reader import read_directory, settings_for
from provisioner.errors import ProvisionerError
from provisioner.host_locks import HostLocks, holder_line, lapsed
from provisioner.inventory import Inventory
from provisioner.manifest.models import Tenant, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.pbx import PbxFacts, read_pbx, unassigned_extensions
from provisioner.plan.model import Action, Change, Plan, PlanProblem
from provisioner.planner import (
    Host,
    HostPlan,
    PlanInputs,
    handlers,
    hosts,
    plan_host,
    profile_for,
)
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    ApplyStep,
    GatherRequest,
    HostFacts,
    LockRequest,
    Operation,
)
from provisioner.remote.host import HostError, HostLocked, RetryEvent
from provisioner.resources import MODULE_OF, line_assignment, package
from provisioner.resources.base import HostContext
from provisioner.resources.services import cti_engine_name
from provisioner.resources.users_group import member_dns
from provisioner.transports.ldap import LDAPConnection

DEFAULT_PARALLELISM = 10
WAIT_POLL_S = 2.0  # --wait: how often a host held by another is asked again
_In = TypeVar("_In")
_Out = TypeVar("_Out")


def gather_request(estate: Estate, host: Host, lock: LockRequest | None = None) -> GatherRequest:
    profile = profile_for(estate, host)
    if host.role == "client":
        return GatherRequest(
            role="client",
            firewall_group=profile.firewall_group,
            timeouts=profile.timeouts(),
            lock=lock,
        )
    server = estate.servers[host.name]
    engine = cti_engine_name(server, profile)
    services = [engine] if engine else []
    return GatherRequest(
        role="server",
        firewall_group=profile.firewall_group,
        services=services,
        telephony_service=profile.telephony_service,
        package_name=profile.package_name,
        tsp_file=profile.tsp_file,
        instance_file_pattern=profile.instance_file_pattern,
        instance_settings_key=profile.instance_settings_key,
        verpatch_path=profile.verpatch_path,
        timeouts=profile.timeouts(),
        lock=lock,
    )


@dataclass
class ChangeResult:
    change: Change
    status: str  # ok | failed | not-run | unknown
    message: str = ""


@dataclass
class HostResult:
    host: Host
    status: str  # ok | failed | locked | unreachable | interrupted
    message: str = ""
    changes: list[ChangeResult] = field(default_factory=list)


DIRECTORY = Host("directory", "directory", "directory")  # where group changes are carried out


class Recorder(Protocol):
    """Where an apply writes what it is about to send, and then what came of it."""

    def intent(self, host: Host, changes: Sequence[Change]) -> object:
        """Called BEFORE a batch is sent; returns a handle for :meth:`result`."""
        ...

    def result(self, handle: object, result: HostResult) -> None:
        """Called once the batch's outcome is known (its changes' results)."""
        ...

    def unsent(self, host: Host, results: Sequence[ChangeResult], why: str) -> None:
        """Changes that were planned for a host but never sent (a batch before them failed)."""
        ...


@dataclass
class Reading:
    """What one read of the estate found: host facts, each tenant's PBX, the directory."""

    facts: dict[str, HostFacts]
    problems: list[PlanProblem]  # per host that could not be read
    pbx: PbxFacts = field(default_factory=PbxFacts)
    directory: DirectoryFacts = field(default_factory=DirectoryFacts)
    owner: str | None = None  # whose locks the gathers took (an apply's); None: a plan's

    def inputs(self, estate: Estate, inventory: Inventory) -> PlanInputs:
        return PlanInputs(
            facts=self.facts,
            problems=self.problems + self.pbx.problems + self.directory.problems,
            resolve=inventory.resolve,
            extensions=self.pbx.extensions,
            directory=self.directory,
            notes=self.lock_notes()
            + self.directory.notes
            + unassigned_extensions(estate, self.pbx),
        )

    def lock_notes(self) -> list[str]:
        """``host tapi01: locked by ...`` for each host another apply or rollout holds now."""
        return [
            f"host {holder_line(key.split('/', 1)[1], facts.lock)}: an apply or rollout now "
            "fails on it, or queues with --wait"
            for key, facts in sorted(self.facts.items())
            if facts.lock is not None and facts.lock.owner != self.owner and not lapsed(facts.lock)
        ]


class Run:
    """One command's connections to the estate's hosts; close it to delete the shells.

    Set :attr:`stopping` (on Ctrl-C) and no further batch is sent; batches already on their way
    finish and are recorded.
    """

    def __init__(
        self,
        estate: Estate,
        inventory: Inventory,
        *,
        parallelism: int = DEFAULT_PARALLELISM,
        only: Iterable[str] | None = None,
        connect: Connect | None = None,
        owner: str | None = None,
        locks: HostLocks | None = None,
    ) -> None:
        self.estate = estate
        self.inventory = inventory
        self.connect = connect or over_winrm(estate, inventory, on_retry=_print_retry)
        self.parallelism = max(1, parallelism)
        wanted = set(only) if only is not None else None
        self.hosts = [h for h in hosts(estate) if wanted is None or h.name in wanted]
        self._remote: dict[str, Connector] = {}
        self._remote_lock = threading.Lock()
        self.owner = owner or (locks.owner if locks is not None else default_owner())
        self.locks = locks
        self.stopping = threading.Event()
        self._aborted: list[Connector] = []

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.abort()  # Ctrl-C: stop and delete every shell over fresh connections
        try:
            self.release()
        finally:
            self.close()

    def close(self) -> None:
        with self._remote_lock:
            remotes = list(self._remote.values()) + self._aborted
            self._remote.clear()
            self._aborted.clear()
        for remote in remotes:
            remote.close()

    def abort(self) -> None:
        """From any thread: stop every host's running command and delete its shell. A later
        command (giving a lock back) goes through a fresh connector."""
        with self._remote_lock:
            remotes = list(self._remote.values())
            self._aborted += remotes
            self._remote.clear()
        self._parallel(lambda remote: remote.abort(), remotes)

    def release(self, hosts_: Iterable[Host] | None = None) -> None:
        """Give back the locks this run still holds (of ``hosts_``, or all): one small command
        per host, an empty batch that releases. A host that does not answer keeps the lock
        until it lapses."""
        if self.locks is None:
            return
        held = set(self.locks.held)
        chosen = [h for h in (self.hosts if hosts_ is None else hosts_) if h.key in held]

        def one(host: Host) -> None:
            request = ApplyRequest(lock=self._lock(host, release=True), steps=[])
            try:
                self.remote(host).apply(request)
            except ProvisionerError as exc:
                print(f"{host.name}: the host's lock was not given back: {exc}", file=sys.stderr)
            else:
                self._settle(host, held=False)

        self._parallel(one, chosen)

    def _lock(self, host: Host, *, release: bool = False) -> LockRequest:
        if self.locks is None:  # a run that reads only never applies: its batch is refused
            return LockRequest(owner=self.owner)
        return self.locks.request(host.key, release=release)

    def _settle(self, host: Host, *, held: bool) -> None:
        if self.locks is not None:
            self.locks.settle(host.key, held=held)

    @property
    def retries(self) -> list[RetryEvent]:
        """Every gather that ran again in a fresh shell during this run, and why."""
        with self._remote_lock:
            remotes = list(self._remote.values())
        return [event for remote in remotes for event in remote.retries]

    def retry_lines(self, host: str | None = None, since: datetime | None = None) -> list[str]:
        """The retries as lines, for the state store (of one host, since a moment, if given)."""
        return [
            event.line()
            for event in self.retries
            if (host is None or event.host == host) and (since is None or event.at >= since)
        ]

    def remote(self, host: Host) -> Connector:
        with self._remote_lock:
            if host.key not in self._remote:
                self._remote[host.key] = self.connect(host)
            return self._remote[host.key]

    def gather(
        self, hosts_: Iterable[Host] | None = None, *, release: bool = False, wait_s: float = 0.0
    ) -> tuple[dict[str, HostFacts], list[PlanProblem]]:
        """Facts of every host that answered; one problem per host that did not. A run with
        :attr:`locks` takes each host's lock with its gather (and gives it back afterwards when
        ``release``); a host another holds is asked again every few seconds until ``wait_s``
        has passed, then its problem names the holder."""
        deadline = time.monotonic() + wait_s
        pending = list(self.hosts if hosts_ is None else hosts_)
        facts: dict[str, HostFacts] = {}
        problems: list[PlanProblem] = []
        while pending:
            held: list[Host] = []
            for host, found, error in self._parallel(
                lambda host: self._gather_one(host, release), pending, interruptible=True
            ):
                if found is not None:
                    facts[host.key] = found
                elif isinstance(error, HostLocked) and time.monotonic() + WAIT_POLL_S < deadline:
                    held.append(host)
                else:
                    problems.append(PlanProblem(str(error), host=host.name))
            if held:
                time.sleep(WAIT_POLL_S)
            pending = held
        return facts, problems

    def _gather_one(
        self, host: Host, release: bool
    ) -> tuple[Host, HostFacts | None, ProvisionerError | None]:
        lock = self._lock(host, release=release) if self.locks is not None else None
        try:
            found = self.remote(host).gather(gather_request(self.estate, host, lock))
        except HostLocked as exc:
            self._settle(host, held=False)
            return host, None, exc
        except ProvisionerError as exc:
            return host, None, exc
        if lock is not None:
            self._settle(host, held=not release)
        return host, found, None

    def read(
        self,
        hosts_: Iterable[Host] | None = None,
        tenants: Iterable[Tenant] | None = None,
        *,
        wait_s: float = 0.0,
    ) -> Reading:
        """Everything a plan reads: the hosts' facts (under their locks, in a run that has
        them), the tenants' PBXs and, meanwhile (it needs neither), the directory (every host
        and tenant unless narrowed)."""
        chosen, scope = self._scope(tenants)
        with ThreadPoolExecutor(max_workers=1) as meanwhile:
            directory = meanwhile.submit(
                read_directory, scope, self.inventory, parallelism=self.parallelism
            )
            facts, problems = self.gather(hosts_, wait_s=wait_s)
            pbx = read_pbx(self.estate, self.inventory, chosen, parallelism=self.parallelism)
            return Reading(facts, problems, pbx, directory.result(), self._owner_of_locks)

    @property
    def _owner_of_locks(self) -> str | None:
        return self.locks.owner if self.locks is not None else None

    def read_around(
        self,
        facts: dict[str, HostFacts],
        problems: list[PlanProblem],
        tenants: Iterable[Tenant] | None = None,
    ) -> Reading:
        """A :class:`Reading` of facts already gathered: the tenants' PBXs and the directory."""
        chosen, scope = self._scope(tenants)
        pbx = read_pbx(self.estate, self.inventory, chosen, parallelism=self.parallelism)
        directory = read_directory(scope, self.inventory, parallelism=self.parallelism)
        return Reading(facts, problems, pbx, directory, self._owner_of_locks)

    def _scope(self, tenants: Iterable[Tenant] | None) -> tuple[dict[str, Tenant], Estate]:
        """The tenants to read, and the estate narrowed to them for the directory."""
        if tenants is None:
            return dict(self.estate.tenants), self.estate
        chosen = {t.name: t for t in tenants}
        return chosen, replace(self.estate, tenants=chosen)

    def apply_directory(
        self, changes: list[Change], directory: DirectoryFacts, recorder: Recorder
    ) -> HostResult:
        """Group membership changes over LDAP, one connection per change; idempotent."""
        handle = recorder.intent(DIRECTORY, changes)
        results: list[ChangeResult] = []
        status, message = "ok", ""
        for change in changes:
            try:
                self._change_group(change, directory)
            except ProvisionerError as exc:
                results.append(ChangeResult(change, "failed", str(exc)))
                results += [ChangeResult(c, "not-run") for c in changes[len(results) :]]
                status, message = "failed", f"{change.address}: {exc}"
                break
            results.append(ChangeResult(change, "ok"))
        result = HostResult(DIRECTORY, status, message, results)
        recorder.result(handle, result)
        return result

    def _change_group(self, change: Change, directory: DirectoryFacts) -> None:
        tenant = self.estate.tenants[change.tenant or ""]
        site = self.estate.site_of(self.estate.servers[tenant.server])
        assert site is not None
        before = set((change.before or {}).get("members", []))
        after = set((change.after or {}).get("members", []))
        group = directory.groups[group_key(tenant.users_group or "")]
        with LDAPConnection.open(settings_for(site, self.inventory)) as conn:
            add = member_dns(directory, sorted(after - before))
            drop = member_dns(directory, sorted(before - after))
            if add:
                add_group_members(conn, group.dn, add)
            if drop:
                remove_group_members(conn, group.dn, drop)

    def apply(self, host_plans: dict[str, HostPlan], recorder: Recorder) -> list[HostResult]:
        """One batch per host, hosts in parallel; each batch is recorded before it is sent."""
        work = [hp for hp in host_plans.values() if _acting_of(hp.changes)]
        return self._parallel(lambda host_plan: self.apply_host(host_plan, recorder), work)

    def apply_host(self, host_plan: HostPlan, recorder: Recorder) -> HostResult:
        """One host's batch; a second one only for lines of TSP instances the first created.

        A new instance's lines appear only after the Telephony service restarts, so their
        PermanentIDs are unknown when the plan is made, and addresses (extensions) are not
        unique across tenants. The second batch is planned from a fresh gather.
        """
        remote = self.remote(host_plan.host)
        deferred = unresolved_line_changes(host_plan)
        waiting = {id(c) for c in deferred}
        first = [c for c in host_plan.changes if id(c) not in waiting]
        results: list[ChangeResult] = []
        for phase, changes in enumerate((first, deferred)):
            if not _acting_of(changes):
                continue
            if phase == 1:
                if self.stopping.is_set():
                    why = "interrupted before this batch was sent"
                    results += self._unsent(host_plan.host, deferred, why, recorder)
                    return HostResult(host_plan.host, "interrupted", why, results)
                try:
                    lock = self._lock(host_plan.host)
                    facts = remote.gather(gather_request(self.estate, host_plan.host, lock))
                except HostError as exc:
                    message = f"{exc}; the line assignments were not imported"
                    results += self._unsent(host_plan.host, deferred, message, recorder)
                    return HostResult(host_plan.host, "unreachable", message, results)
                host_plan, problems = replan_lines(host_plan, facts, deferred)
                if problems:
                    message = f"the line assignments were not imported: {problems[0].message}"
                    results += self._unsent(host_plan.host, deferred, message, recorder)
                    return HostResult(host_plan.host, "failed", message, results)
                changes = host_plan.changes
            if phase == 0:
                try:
                    upload_packages(remote, host_plan.context, build_steps(host_plan, changes)[0])
                except ProvisionerError as exc:
                    why = f"{exc}; nothing changed"
                    unsent = self._unsent(host_plan.host, host_plan.changes, why, recorder)
                    return HostResult(host_plan.host, "failed", why, unsent)
            result = self._send(remote, host_plan, changes, recorder)
            if result.status == "failed":
                result.changes = self._owed_restarts(remote, host_plan, result.changes, recorder)
            results += result.changes
            if result.status != "ok":
                if phase == 0:
                    why = "not sent: the batch before failed"
                    results += self._unsent(host_plan.host, deferred, why, recorder)
                return HostResult(host_plan.host, result.status, result.message, results)
        return HostResult(host_plan.host, "ok", "", results)

    def _send(
        self, remote: Connector, host_plan: HostPlan, changes: list[Change], recorder: Recorder
    ) -> HostResult:
        """One batch: recorded as intended, sent, its outcome recorded."""
        acting = _acting_of(changes)
        if self.stopping.is_set():
            message = "interrupted before this batch was sent"
            unsent = self._unsent(host_plan.host, acting, message, recorder)
            return HostResult(host_plan.host, "interrupted", message, unsent)
        steps, step_changes = build_steps(host_plan, changes)
        handle = recorder.intent(host_plan.host, acting)
        try:
            response = remote.apply(apply_request(host_plan, self._lock(host_plan.host), steps))
        except HostError as exc:
            result = HostResult(
                host_plan.host,
                "unreachable",
                f"{exc}; what the host did is unknown: run plan to see what remains",
                [ChangeResult(c, "unknown") for c in acting],
            )
        else:
            result = host_result(changes, response, step_changes, host_plan.host)
            self._settle(host_plan.host, held=result.status != "locked")
        recorder.result(handle, result)
        return result

    @staticmethod
    def _unsent(
        host: Host, changes: list[Change], why: str, recorder: Recorder
    ) -> list[ChangeResult]:
        results = [ChangeResult(c, "not-run", why) for c in _acting_of(changes)]
        if results:
            recorder.unsent(host, results, why)
        return results

    def _owed_restarts(
        self,
        remote: Connector,
        host_plan: HostPlan,
        results: list[ChangeResult],
        recorder: Recorder,
    ) -> list[ChangeResult]:
        """After a failed step, restart what the completed changes need (Ansible's
        force_handlers): those changes are done, so no later plan would bring the restart back."""
        done = [r.change for r in results if r.status == "ok"]
        owed = {c.address for c in handlers(done, host_plan.context)}
        pending = [r.change for r in results if r.status == "not-run" and r.change.address in owed]
        if not pending:
            return results
        forced = self._send(remote, host_plan, pending, recorder)
        if forced.status not in ("ok", "failed"):
            return results  # the record keeps them "not-run"
        by_address = {r.change.address: r for r in forced.changes}
        return [by_address.get(r.change.address, r) for r in results]

    def _parallel(
        self, function: Callable[[_In], _Out], items: Sequence[_In], *, interruptible: bool = False
    ) -> list[_Out]:
        """``function`` over the items, ``parallelism`` at a time, in worker threads even for
        one item (Ctrl-C interrupts only the main thread). On Ctrl-C an ``interruptible`` call
        (a read) aborts every session so the workers return at once; others (apply batches)
        start nothing new (:attr:`stopping`) and let what runs finish and be recorded."""
        if not items:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.parallelism, len(items)))
        futures = [pool.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            self.stopping.set()
            if interruptible:
                self.abort()  # the workers wait on their hosts until the shells close
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _print_retry(event: RetryEvent) -> None:
    print(event.line(), file=sys.stderr)


def default_owner() -> str:
    """Who holds a host's lock while this process applies: ``alice@ws17 pid 4711``."""
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"


def _acting_of(changes: Iterable[Change]) -> list[Change]:
    return [c for c in changes if c.action is not Action.NOOP]


def unresolved_line_changes(host_plan: HostPlan) -> list[Change]:
    """Line changes that name a line the host does not list yet (a new TSP instance's).

    When there is one, all the host's line changes wait for the second batch: one import.
    """
    ctx = host_plan.context
    tenants = {t.name: t for t in ctx.tenants}
    for change in _acting_of(host_plan.changes):
        if change.kind != line_assignment.KIND or change.tenant not in tenants:
            continue
        known = line_assignment.provider_lines(ctx, tenants[change.tenant].k_account)
        if any(line not in known for line in (change.after or {}).get("lines", [])):
            return [c for c in host_plan.changes if c.kind == line_assignment.KIND]
    return []


def replan_lines(
    host_plan: HostPlan, facts: HostFacts, deferred: list[Change]
) -> tuple[HostPlan, list[PlanProblem]]:
    """The host's deferred line changes again, from facts gathered after the first batch, and
    the problems of that plan (a listing that does not read one way only, say)."""
    ctx = replace(host_plan.context, facts=facts, cache={})
    replanned = Plan()
    fresh = plan_host(ctx, host_plan.host, replanned)
    ids = {c.address: c.id for c in deferred}
    changes = [c for c in fresh.changes if c.kind == line_assignment.KIND and c.address in ids]
    for change in changes:
        change.id = ids[change.address]
    return HostPlan(host_plan.host, ctx, changes, fresh.desired), replanned.problems


def apply_request(host_plan: HostPlan, lock: LockRequest, steps: list[ApplyStep]) -> ApplyRequest:
    timeouts = host_plan.context.profile.timeouts()
    return ApplyRequest(lock=lock, steps=steps, timeouts=timeouts)


def upload_packages(remote: Connector, ctx: HostContext, steps: list[ApplyStep]) -> None:
    """Send the workstation packages the batch installs and the host does not hold yet."""
    for path, sha256 in package.uploads(ctx, [step.operation for step in steps]):
        remote.upload(path, sha256)


def build_steps(
    host_plan: HostPlan, changes: list[Change]
) -> tuple[list[ApplyStep], dict[str, list[Change]]]:
    """These changes as contract steps; all line changes become one tsecimp import."""
    ctx = host_plan.context
    steps: list[ApplyStep] = []
    step_changes: dict[str, list[Change]] = {}
    acting = _acting_of(changes)
    line_changes = [c for c in acting if c.kind == line_assignment.KIND]
    for change in acting:
        operations: list[Operation]
        if change.kind == line_assignment.KIND:
            if change is not line_changes[0]:
                continue
            operations = line_assignment.batch_operations(line_changes, ctx, friendly_names(ctx))
            owners = line_changes
        else:
            module = MODULE_OF[change.kind]
            operations = module.operations(change, host_plan.desired.get(change.address), ctx)
            owners = [change]
        for number, operation in enumerate(operations):
            step_id = f"{owners[0].id}.{number}"
            steps.append(ApplyStep(id=step_id, operation=operation))
            step_changes[step_id] = owners
    return steps, step_changes


def friendly_names(ctx: HostContext) -> dict[str, str | None]:
    """Each user's friendly name: the manifest's, else AD's displayName, else none."""
    names: dict[str, str | None] = {}
    directory = ctx.directory if isinstance(ctx.directory, DirectoryFacts) else DirectoryFacts()
    for tenant in ctx.tenants:
        for assignment in tenant.assignments:
            key = domain_user_key(assignment.user)
            user = directory.users.get(key)
            names[key] = assignment.friendly_name or (user.display_name if user else None)
    return names


def host_result(
    changes: list[Change],
    response: ApplyResponse,
    step_changes: dict[str, list[Change]],
    host: Host,
) -> HostResult:
    if response.status == "locked":
        now = holder_line(host.name, response.lock) if response.lock else "no one holds it now"
        return HostResult(
            host,
            "locked",
            f"{host.name}: the lock this run took with its gather was lost before this batch "
            f"({now}): nothing was changed; run plan to see the estate as it is now",
            [ChangeResult(c, "not-run") for c in _acting_of(changes)],
        )
    status_of: dict[str, tuple[str, str]] = {}
    for step in response.results:
        for change in step_changes.get(step.id, []):
            current = status_of.get(change.address)
            if current is None or current[0] == "ok":
                status_of[change.address] = (step.status, step.message)
    results = []
    with_steps = {c.address for owners in step_changes.values() for c in owners}
    for change in _acting_of(changes):
        missing = ("unknown", "the host reported no result for it")
        status, message = status_of.get(
            change.address, missing if change.address in with_steps else ("ok", "")
        )
        results.append(ChangeResult(change, status, message))
    failed = next((r for r in results if r.status == "failed"), None)
    return HostResult(
        host,
        "failed" if failed else "ok",
        f"{failed.change.address}: {failed.message}" if failed else "",
        results,
    )
