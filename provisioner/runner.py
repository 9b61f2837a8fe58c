"""The I/O edge of plan, apply and drift: reach every host, gather, apply batches, verify.

Hosts are worked in parallel (bounded by ``parallelism``); each host gets one connector (one
WinRM shell) for the whole run, one gather command per read and one apply command per batch.
Connectors come from one factory (:mod:`provisioner.connectors`), WinRM unless given another.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from provisioner.connectors import Connect, Connector, over_winrm
from provisioner.directory.model import DirectoryFacts, group_key
from provisioner.directory.operations import add_group_members, remove_group_members
from provisioner.directory.reader import read_directory, settings_for
from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.models import domain_user_key
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
from provisioner.remote.host import HostError, RetryEvent
from provisioner.resources import MODULE_OF, line_assignment, package
from provisioner.resources.base import HostContext
from provisioner.resources.services import cti_engine_name
from provisioner.resources.users_group import member_dns
from provisioner.transports.ldap import LDAPConnection

DEFAULT_PARALLELISM = 10
_In = TypeVar("_In")
_Out = TypeVar("_Out")


def gather_request(estate: Estate, host: Host) -> GatherRequest:
    profile = profile_for(estate, host)
    if host.role == "client":
        return GatherRequest(
            role="client", firewall_group=profile.firewall_group, timeouts=profile.timeouts()
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
    )


@dataclass
class ChangeResult:
    change: Change
    status: str  # ok | failed | not-run | unknown
    message: str = ""


@dataclass
class HostResult:
    host: Host
    status: str  # ok | failed | locked | unreachable
    message: str = ""
    changes: list[ChangeResult] = field(default_factory=list)


class Run:
    """One command's connections to the estate's hosts; close it to delete the shells."""

    def __init__(
        self,
        estate: Estate,
        inventory: Inventory,
        *,
        parallelism: int = DEFAULT_PARALLELISM,
        only: Iterable[str] | None = None,
        connect: Connect | None = None,
    ) -> None:
        self.estate = estate
        self.inventory = inventory
        self.connect = connect or over_winrm(estate, inventory, on_retry=_print_retry)
        self.parallelism = max(1, parallelism)
        wanted = set(only) if only is not None else None
        self.hosts = [h for h in hosts(estate) if wanted is None or h.name in wanted]
        self._remote: dict[str, Connector] = {}
        self.pbx = PbxFacts()
        self.directory = DirectoryFacts()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.abort()  # Ctrl-C: stop and delete every shell over fresh connections
        self.close()

    def close(self) -> None:
        for remote in self._remote.values():
            remote.close()
        self._remote.clear()

    def abort(self) -> None:
        """From any thread: stop every host's running command and delete its shell."""
        remotes = list(self._remote.values())
        self._parallel(lambda remote: remote.abort(), remotes)

    @property
    def retries(self) -> list[RetryEvent]:
        """Every gather that ran again in a fresh shell during this run, and why."""
        return [event for remote in self._remote.values() for event in remote.retries]

    def remote(self, host: Host) -> Connector:
        if host.key not in self._remote:
            self._remote[host.key] = self.connect(host)
        return self._remote[host.key]

    def gather(
        self, hosts_: Iterable[Host] | None = None
    ) -> tuple[dict[str, HostFacts], list[PlanProblem]]:
        """Facts of every host that answered; one problem per host that did not."""
        targets = list(self.hosts if hosts_ is None else hosts_)

        def one(host: Host) -> tuple[Host, HostFacts | None, str]:
            try:
                return host, self.remote(host).gather(gather_request(self.estate, host)), ""
            except ProvisionerError as exc:
                return host, None, str(exc)

        facts: dict[str, HostFacts] = {}
        problems: list[PlanProblem] = []
        for host, found, error in self._parallel(one, targets, interruptible=True):
            if found is not None:
                facts[host.key] = found
            else:
                problems.append(PlanProblem(error, host=host.name))
        return facts, problems

    def inputs(self) -> PlanInputs:
        """Everything a plan reads: every host's facts, every tenant's PBX, and meanwhile (it
        needs neither) the directory."""
        with ThreadPoolExecutor(max_workers=1) as meanwhile:
            directory = meanwhile.submit(
                read_directory, self.estate, self.inventory, parallelism=self.parallelism
            )
            facts, problems = self.gather()
            self.pbx = read_pbx(
                self.estate, self.inventory, self.estate.tenants, parallelism=self.parallelism
            )
            self.directory = directory.result()
        return PlanInputs(
            facts=facts,
            problems=problems + self.pbx.problems + self.directory.problems,
            resolve=self.inventory.resolve,
            extensions=self.pbx.extensions,
            directory=self.directory,
            notes=self.directory.notes + unassigned_extensions(self.estate, self.pbx),
        )

    def apply_directory(self, changes: list[Change]) -> HostResult:
        """Group membership changes over LDAP, one connection per Site; idempotent."""
        host = Host("directory", "directory", "directory")
        results: list[ChangeResult] = []
        for change in changes:
            tenant = self.estate.tenants[change.tenant or ""]
            site = self.estate.site_of(self.estate.servers[tenant.server])
            assert site is not None
            before = set((change.before or {}).get("members", []))
            after = set((change.after or {}).get("members", []))
            group = self.directory.groups[group_key(tenant.users_group or "")]
            try:
                with LDAPConnection.open(settings_for(site, self.inventory)) as conn:
                    add = member_dns(self.directory, sorted(after - before))
                    drop = member_dns(self.directory, sorted(before - after))
                    if add:
                        add_group_members(conn, group.dn, add)
                    if drop:
                        remove_group_members(conn, group.dn, drop)
            except ProvisionerError as exc:
                results.append(ChangeResult(change, "failed", str(exc)))
                results += [ChangeResult(c, "not-run") for c in changes[len(results) :]]
                return HostResult(host, "failed", f"{change.address}: {exc}", results)
            results.append(ChangeResult(change, "ok"))
        return HostResult(host, "ok", "", results)

    def apply(self, host_plans: dict[str, HostPlan], journal: Journal) -> list[HostResult]:
        """One batch per host, hosts in parallel; each result is journalled as it arrives."""
        work = [hp for hp in host_plans.values() if _acting_of(hp.changes)]
        owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"

        def one(host_plan: HostPlan) -> HostResult:
            try:
                result = self._apply_host(host_plan, owner)
            except ProvisionerError as exc:
                unknown = [ChangeResult(c, "unknown") for c in _acting_of(host_plan.changes)]
                result = HostResult(
                    host_plan.host, "failed", f"{exc}; run plan to see what remains", unknown
                )
            journal.record(result)
            return result

        return list(self._parallel(one, work))

    def _apply_host(self, host_plan: HostPlan, owner: str) -> HostResult:
        """One batch; a second one only for lines of TSP instances the first batch created.

        A new instance's lines appear only after the Telephony service restarts, so their
        PermanentIDs are unknown when the plan is made, and addresses (extensions) are not
        unique across tenants. The second batch is planned from a fresh gather.
        """
        remote = self.remote(host_plan.host)
        deferred = unresolved_line_changes(host_plan)
        waiting = {id(c) for c in deferred}
        first = [c for c in host_plan.changes if id(c) not in waiting]
        results: list[ChangeResult] = []
        for phase, planned in enumerate((first, deferred)):
            changes = planned
            if not _acting_of(changes):
                continue
            if phase == 1:
                try:
                    facts = remote.gather(gather_request(self.estate, host_plan.host))
                except HostError as exc:
                    results += [ChangeResult(c, "not-run") for c in _acting_of(deferred)]
                    message = f"{exc}; the line assignments were not imported"
                    return HostResult(host_plan.host, "unreachable", message, results)
                host_plan, problems = replan_lines(host_plan, facts, deferred)
                if problems:
                    message = f"the line assignments were not imported: {problems[0].message}"
                    results += [ChangeResult(c, "not-run", message) for c in _acting_of(deferred)]
                    return HostResult(host_plan.host, "failed", message, results)
                changes = host_plan.changes
            steps, step_changes = build_steps(host_plan, changes)
            if phase == 0:
                try:
                    upload_packages(remote, host_plan.context, steps)
                except ProvisionerError as exc:
                    results = [ChangeResult(c, "not-run") for c in _acting_of(host_plan.changes)]
                    return HostResult(host_plan.host, "failed", f"{exc}; nothing changed", results)
            try:
                response = remote.apply(apply_request(host_plan, owner, steps))
            except HostError as exc:
                results += [ChangeResult(c, "unknown") for c in _acting_of(changes)]
                return HostResult(
                    host_plan.host,
                    "unreachable",
                    f"{exc}; what the host did is unknown: run plan to see what remains",
                    results,
                )
            result = host_result(changes, response, step_changes, host_plan.host)
            if result.status == "failed":
                result.changes = self._owed_restarts(remote, host_plan, result.changes, owner)
            results += result.changes
            if result.status != "ok":
                if phase == 0:
                    results += [ChangeResult(c, "not-run") for c in _acting_of(deferred)]
                return HostResult(host_plan.host, result.status, result.message, results)
        return HostResult(host_plan.host, "ok", "", results)

    def _owed_restarts(
        self, remote: Connector, host_plan: HostPlan, results: list[ChangeResult], owner: str
    ) -> list[ChangeResult]:
        """After a failed step, restart what the completed changes need (Ansible's
        force_handlers): those changes are done, so no later plan would bring the restart back."""
        done = [r.change for r in results if r.status == "ok"]
        owed = {c.address for c in handlers(done, host_plan.context)}
        pending = [r.change for r in results if r.status == "not-run" and r.change.address in owed]
        if not pending:
            return results
        steps, step_changes = build_steps(host_plan, pending)
        try:
            response = remote.apply(apply_request(host_plan, owner, steps))
        except HostError:
            return results  # the journal keeps them "not-run"
        forced = host_result(pending, response, step_changes, host_plan.host).changes
        by_address = {r.change.address: r for r in forced}
        return [by_address.get(r.change.address, r) for r in results]

    def _parallel(
        self, function: Callable[[_In], _Out], items: Sequence[_In], *, interruptible: bool = False
    ) -> list[_Out]:
        """``function`` over ``items`` in worker threads. On Ctrl-C an ``interruptible`` call
        (a read) aborts every session so the workers return at once; others let the running
        calls (apply batches) finish first."""
        if len(items) <= 1:
            return [function(item) for item in items]
        pool = ThreadPoolExecutor(max_workers=min(self.parallelism, len(items)))
        try:
            return list(pool.map(function, items))
        except BaseException as exc:
            if interruptible and not isinstance(exc, Exception):
                self.abort()  # Ctrl-C: the workers wait on their hosts until the shells close
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _print_retry(event: RetryEvent) -> None:
    print(event.line(), file=sys.stderr)


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


def apply_request(host_plan: HostPlan, owner: str, steps: list[ApplyStep]) -> ApplyRequest:
    timeouts = host_plan.context.profile.timeouts()
    return ApplyRequest(lock=LockRequest(owner=owner), steps=steps, timeouts=timeouts)


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
        holder = response.lock
        who = (
            f"{holder.owner} since {holder.acquired} (expires {holder.expires})" if holder else "?"
        )
        return HostResult(
            host,
            "locked",
            f"{host.name} is locked by another apply: {who}",
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


class Journal:
    """Each host's results, written as they arrive, so a failed apply can be read and resumed."""

    def __init__(self, directory: Path | None = None) -> None:
        base = directory or Path(os.environ.get("PROVISIONER_STATE_DIR", ".provisioner"))
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.path = base / "journal" / f"apply-{stamp}.jsonl"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:
            raise ProvisionerError(
                f"the apply journal {self.path} cannot be written ({exc.strerror}): set "
                "PROVISIONER_STATE_DIR to a writable directory; nothing was changed"
            ) from None

    def record(self, result: HostResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "time": datetime.now(UTC).isoformat(),
            "host": result.host.name,
            "status": result.status,
            "message": result.message,
            "changes": [
                {
                    "address": r.change.address,
                    "action": r.change.action.value,
                    "status": r.status,
                    "message": r.message,
                }
                for r in result.changes
            ],
        }
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")


def verify(plan_after: Plan, applied: Iterable[HostResult]) -> list[str]:
    """What an apply said it did but the hosts do not show: one line per leftover."""
    done = {r.change.address for h in applied for r in h.changes if r.status == "ok"}
    problems = []
    for change in plan_after.actionable:
        if change.address not in done:
            continue
        if change.kind == line_assignment.KIND:
            wanted = set((change.after or {}).get("lines", []))
            have = set((change.before or {}).get("lines", []))
            for line in sorted(wanted - have):
                problems.append(
                    f"{change.address}: line {line} did not take (tsecimp reports no error for "
                    "lines the TSP does not offer: is the extension in the PBX?)"
                )
            for line in sorted(have - wanted):
                problems.append(f"{change.address}: line {line} is still assigned")
        else:
            problems.append(f"{change.address}: still differs after apply ({change.reason})")
    return problems
