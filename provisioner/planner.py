"""The pure core of ``plan``: desired resources + gathered facts → an ordered :class:`Plan`.

No I/O happens here. The caller gathers facts (WinRM, LDAP, the CTI API) and passes them in;
the same inputs always give the same plan, which is what makes saved plans and the
"second plan after an apply is empty" promise testable.

The planner knows no resource kind by name: each kind declares, beside its code, where its
changes go on a host, whether live resources no manifest names are deleted, and which services
its changes need restarted (:class:`~provisioner.resources.base.KindSpec`). On a host this gives
the package, the firewall, the services, the dialing location, the TSP instances, then the
handlers (a service restarted once, after the last change that needs it), then the line
assignments, which need the restarted Telephony service to see new lines, and last the
remote-TAPI client settings.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from provisioner.directory.model import DirectoryFacts, group_key
from provisioner.errors import ProvisionerError
from provisioner.manifest.models import OnMissingUser, SecretRef, TapiClients, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Action, Change, Plan, PlanProblem, Unmanaged
from provisioner.platform import Profile, default_profile
from provisioner.remote.contract import HostFacts
from provisioner.resources import HOST_MODULES, SPECS, line_assignment, restart, users_group
from provisioner.resources.base import (
    HostContext,
    KindProblem,
    Resource,
    Restart,
    diff,
    facts_digest,
    pair_up,
)
from provisioner.secrets import Secret


@dataclass(frozen=True)
class Host:
    """One host of the estate: ``server/tapi01`` or ``client/ws-0101``."""

    key: str
    name: str
    role: str  # server | client


def hosts(estate: Estate) -> list[Host]:
    result = [Host(f"server/{name}", name, "server") for name in sorted(estate.servers)]
    for clients in sorted(estate.clients.values(), key=lambda c: c.name):
        result.extend(Host(f"client/{h}", h, "client") for h in clients.hosts)
    return result


def profile_for(estate: Estate, host: Host) -> Profile:
    profile = default_profile()
    doc = estate.servers.get(host.name) if host.role == "server" else _clients_of(estate, host)
    if doc is None:
        return profile
    site = estate.site_of(doc)
    if site is not None and site.platform:
        profile = profile.overridden(site.platform)
    if host.role == "server" and estate.servers[host.name].platform:
        profile = profile.overridden(estate.servers[host.name].platform)
    return profile


def _clients_of(estate: Estate, host: Host) -> TapiClients | None:
    for clients in estate.clients.values():
        if host.name in clients.hosts:
            return clients
    return None


@dataclass
class PlanInputs:
    """What the I/O edge gathered: host facts, and per tenant the PBX's extensions."""

    facts: Mapping[str, HostFacts]  # host key → facts
    # tenant → its PBX's extensions (number → name); a tenant whose PBX was not read is absent
    extensions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    directory: object = None
    resolve: Callable[[SecretRef], Secret] | None = None
    problems: list[PlanProblem] = field(default_factory=list)  # from gathering (per tenant)
    notes: list[str] = field(default_factory=list)  # information for the reader


def context(estate: Estate, host: Host, inputs: PlanInputs) -> HostContext:
    ctx = HostContext(
        name=host.name,
        role=host.role,
        estate=estate,
        profile=profile_for(estate, host),
        facts=inputs.facts.get(host.key),
        directory=inputs.directory,
        extensions=inputs.extensions,
    )
    if inputs.resolve is not None:
        ctx.resolve = inputs.resolve
    if host.role == "server":
        ctx.server = estate.servers[host.name]
        ctx.tenants = sorted(
            (t for t in estate.tenants.values() if t.server == host.name), key=lambda t: t.name
        )
    else:
        ctx.clients = _clients_of(estate, host)
    return ctx


@dataclass
class HostPlan:
    """The changes of one host, and the desired resources they were computed from."""

    host: Host
    context: HostContext
    changes: list[Change]
    desired: dict[str, Resource]


def plan_host(ctx: HostContext, host: Host, plan: Plan) -> HostPlan:
    changes: list[Change] = []
    desired_by_address: dict[str, Resource] = {}
    for module in HOST_MODULES:
        try:
            wanted = module.desired(ctx)
            found = module.live(ctx)
        except KindProblem as exc:
            plan.problems.append(PlanProblem(str(exc), host=host.name, kind=exc.kind))
            continue
        except ProvisionerError as exc:
            plan.problems.append(PlanProblem(str(exc), host=host.name))
            continue
        desired_by_address.update((r.address, r) for r in wanted)
        for want, have in pair_up(wanted, found):
            if want is None:
                assert have is not None
                removal = SPECS[have.kind].prune(ctx, have)
                if removal is not None:
                    change = diff(None, have, reason_prefix=removal.reason)
                    change.action_reason = removal.code
                    changes.append(change)
                else:
                    plan.unmanaged.append(
                        Unmanaged(have.address, have.kind, host.name, have.tenant, have.detail)
                    )
                continue
            changes.append(diff(want, have))
    changes.extend(handlers(changes, ctx))
    changes.sort(key=lambda c: SPECS[c.kind].phase)
    return HostPlan(host, ctx, changes, desired_by_address)


def handlers(changes: list[Change], ctx: HostContext) -> list[Change]:
    """Restart each service once, after every change that needs it (Ansible's handlers)."""
    needed: dict[str, Restart] = {}
    for change in changes:
        if change.action is Action.NOOP:
            continue
        for rule in SPECS[change.kind].restarts:
            found = rule(ctx)
            if found is not None:
                needed.setdefault(found.service.lower(), found)
    return restart.changes(ctx, needed.values())


def build_plan(
    estate: Estate, inputs: PlanInputs, *, targets: Iterable[str] = ()
) -> tuple[Plan, dict[str, HostPlan]]:
    """The plan for the whole estate (or the targeted part), and the per-host detail apply needs."""
    plan = Plan(problems=list(inputs.problems), notes=list(inputs.notes))
    host_plans: dict[str, HostPlan] = {}
    skipped, removed = user_policies(estate, inputs, plan)
    for host in hosts(estate):
        if host.key not in inputs.facts:
            continue  # not gathered: the gatherer reported why
        ctx = context(estate, host, inputs)
        ctx.skipped_users = {
            t: skipped.get(t, frozenset()) | removed.get(t, frozenset()) for t in estate.tenants
        }
        ctx.removed_users = removed
        host_plan = plan_host(ctx, host, plan)
        host_plans[host.key] = host_plan
        plan.changes.extend(host_plan.changes)
        plan.fingerprints[host.key] = facts_digest(inputs.facts[host.key])
    _check_lines_exist(estate, inputs, plan)
    if isinstance(inputs.directory, DirectoryFacts):
        _check_group_isolation(estate, inputs.directory, plan)
        directory_changes = [
            diff(want, have)
            for want, have in users_group.pairs(estate, inputs.directory, skipped, removed)
        ]
        plan.changes[:0] = directory_changes  # group membership first: it needs no host
    selectors = list(targets)
    if selectors:
        select(plan, host_plans, selectors, estate)
    hold_back(plan, host_plans)
    for number, change in enumerate(plan.changes):
        change.id = f"c{number:04d}"
    return plan, host_plans


def hold_back(plan: Plan, host_plans: dict[str, HostPlan]) -> None:
    """Take the changes a problem concerns (:meth:`Plan.holds_back`) out of what apply carries
    out, and the restarts only they needed; ``plan.held_back`` lists both, for every renderer."""
    held = {c.address for c in plan.changes if plan.holds_back(c)}
    for host_plan in host_plans.values():
        kept = [c for c in host_plan.changes if c.address not in held]
        if len(kept) < len(host_plan.changes):  # a restart only for what still goes ahead
            needed = handlers(
                [c for c in kept if c.action is not Action.RESTART], host_plan.context
            )
            wanted = {c.address for c in needed}
            held |= {
                c.address for c in kept if c.action is Action.RESTART and c.address not in wanted
            }
            kept = [c for c in kept if c.address not in held]
        host_plan.changes = kept
    plan.held_back = [c.address for c in plan.changes if c.address in held]


def user_policies(
    estate: Estate, inputs: PlanInputs, plan: Plan
) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """Missing or disabled AD users, handled per tenant's ``on_missing_user`` (else the Site's).

    Returns the users whose assignments are skipped and those whose lines are removed, per
    tenant; ``error`` becomes a plan problem that names the AD reason.
    """
    directory = inputs.directory
    skipped: dict[str, frozenset[str]] = {}
    removed: dict[str, frozenset[str]] = {}
    if not isinstance(directory, DirectoryFacts):
        return skipped, removed
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        server = estate.servers.get(tenant.server)
        site = estate.site_of(server) if server else None
        if site is None or site.name not in directory.read_sites:
            continue
        policy = tenant.on_missing_user or site.directory.on_missing_user
        skip, remove = set(), set()
        for assignment in tenant.assignments:
            key = domain_user_key(assignment.user)
            if key not in directory.users:
                continue  # another domain: not checked (the reader noted it)
            user = directory.users[key]
            if user is not None and not user.disabled:
                continue
            reason = "does not exist in AD" if user is None else "is disabled in AD"
            if policy is OnMissingUser.error:
                plan.problems.append(
                    PlanProblem(
                        f"tenant {tenant.name}: {assignment.user} {reason} (on_missing_user: "
                        "error; use skip or remove_lines to go on without the user)",
                        tenant=tenant.name,
                        address=line_assignment.address(tenant.name, assignment.user),
                        found=True,
                    )
                )
            elif policy is OnMissingUser.skip:
                skip.add(key)
                plan.notes.append(f"tenant {tenant.name}: {assignment.user} {reason}: skipped")
            else:
                remove.add(key)
                plan.notes.append(
                    f"tenant {tenant.name}: {assignment.user} {reason}: its lines are removed"
                )
        skipped[tenant.name], removed[tenant.name] = frozenset(skip), frozenset(remove)
    return skipped, removed


def _check_group_isolation(estate: Estate, directory: DirectoryFacts, plan: Plan) -> None:
    """A user of tenant A must not be a member of tenant B's users group (live membership)."""
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        server = estate.servers.get(tenant.server)
        site = estate.site_of(server) if server else None
        allowed = {domain_user_key(u) for u in site.directory.cross_tenant_users} if site else set()
        for other in estate.tenants.values():
            if other is tenant or not other.users_group:
                continue
            group = group_key(other.users_group)
            for assignment in tenant.assignments:
                key = domain_user_key(assignment.user)
                if key in allowed or not directory.is_member(key, group):
                    continue
                plan.problems.append(
                    PlanProblem(
                        f"tenant {tenant.name}: {assignment.user} is a member of tenant "
                        f"{other.name}'s users group {other.users_group}: tenants are isolated",
                        tenant=tenant.name,
                        address=users_group.address(other.name),
                        found=True,
                    )
                )


def _check_lines_exist(estate: Estate, inputs: PlanInputs, plan: Plan) -> None:
    """Every assigned line must be an extension of the tenant's PBX (when the PBX was read)."""
    for tenant in estate.tenants.values():
        extensions = inputs.extensions.get(tenant.name)
        if extensions is None:
            continue
        for assignment in tenant.assignments:
            for line in assignment.lines:
                if line not in extensions:
                    plan.problems.append(
                        PlanProblem(
                            f"tenant {tenant.name}: line {line} of {assignment.user} is not an "
                            f"extension of PBX {tenant.k_account}",
                            tenant=tenant.name,
                            address=line_assignment.address(tenant.name, assignment.user),
                            found=True,
                        )
                    )


def select(
    plan: Plan, host_plans: dict[str, HostPlan], selectors: list[str], estate: Estate
) -> None:
    """Keep only the changes the selectors match; a selector that matches nothing is an error."""
    plan.targets = selectors
    keep: set[str] = set()
    for selector in selectors:
        matched = {c.address for c in plan.changes if _matches(selector, c, estate)}
        if not matched:
            raise ProvisionerError(
                f"--target '{selector}' matches nothing: use an address pattern such as "
                "'server/tapi01/*', or server=NAME, tenant=NAME, host=NAME"
            )
        keep |= matched
    for host_plan in host_plans.values():
        # a selected change keeps the restarts it needs (handlers), selected or not
        selected = [c for c in host_plan.changes if c.address in keep]
        keep |= {c.address for c in handlers(selected, host_plan.context)}
        host_plan.changes = [c for c in host_plan.changes if c.address in keep]
    plan.changes = [c for c in plan.changes if c.address in keep]
    plan.unmanaged = [u for u in plan.unmanaged if any(_matches(s, u, estate) for s in selectors)]


def _matches(selector: str, change: Change | Unmanaged, estate: Estate) -> bool:
    if selector.startswith("server="):
        name = selector.removeprefix("server=")
        return change.host == name and name in estate.servers
    if selector.startswith("tenant="):
        return change.tenant == selector.removeprefix("tenant=")
    if selector.startswith("host="):
        return change.host == selector.removeprefix("host=")
    return fnmatch.fnmatchcase(change.address.lower(), selector.lower())
