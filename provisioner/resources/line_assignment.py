"""Line assignments: which domain user may use which lines of a tenant's TSP instance.

One resource per user and tenant, address ``tenant/k6732/line_assignment/NFON\\JDOE``::

    {"lines": ["1255", "1256"]}

The live side comes from the ``tsecimp /d`` listing: the lines of the tenant's provider, keyed by
their address (the extension), and the users listed under each. Friendly names cannot be read
back, so they are written with every change but never compared (no perpetual diff).

All changes of one host become ONE ``tsecimp`` import, the smallest that does the job: lines
added, lines removed with ``Remove="1"``, and ``NoMerge`` only where a user's whole set is
replaced and the user holds no line outside this provider (NoMerge drops every line a user has).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from provisioner.manifest.models import domain_user_key
from provisioner.plan.model import Action, Change
from provisioner.remote.contract import Operation, TsecimpImport
from provisioner.remote.tsecimp import ListedProvider, XmlLine, XmlUser, parse_listing, render_xml
from provisioner.resources.base import HostContext, Resource

KIND = "line_assignment"
KINDS = (KIND,)


def address(tenant: str, user: str) -> str:
    return f"tenant/{tenant}/{KIND}/{domain_user_key(user)}"


def listing(ctx: HostContext) -> list[ListedProvider]:
    """The parsed ``tsecimp /d`` listing (parsed once per host and facts)."""
    if ctx.facts is None or not ctx.facts.tsecimp_listing:
        return []
    key = f"{KIND}:listing:{id(ctx.facts)}"
    if key not in ctx.cache:
        ctx.cache[key] = parse_listing(ctx.facts.tsecimp_listing)
    found: list[ListedProvider] = ctx.cache[key]
    return found


def provider_lines(ctx: HostContext, k_account: str) -> dict[str, str | None]:
    """The lines the tenant's provider exposes now: extension → permanent id."""
    key = f"{KIND}:lines:{id(ctx.facts)}:{k_account.upper()}"
    if key not in ctx.cache:
        name = ctx.profile.provider_name(k_account).lower()
        ctx.cache[key] = {}
        for provider in listing(ctx):
            if provider.name.strip().lower() == name:
                ctx.cache[key] = {
                    line.addresses[0]: line.permanent_id
                    for line in provider.lines
                    if line.addresses
                }
                break
    lines: dict[str, str | None] = ctx.cache[key]
    return lines


def desired(ctx: HostContext) -> list[Resource]:
    resources = []
    for tenant in ctx.tenants:
        for assignment in tenant.assignments:
            if domain_user_key(assignment.user) in ctx.skipped_users.get(tenant.name, ()):
                continue
            resources.append(
                Resource(
                    address(tenant.name, assignment.user),
                    KIND,
                    ctx.name,
                    {"lines": sorted(set(assignment.lines), key=_line_order)},
                    tenant=tenant.name,
                    detail=assignment.user,
                )
            )
    return resources


def live(ctx: HostContext) -> list[Resource]:
    resources = []
    providers = listing(ctx)
    for tenant in ctx.tenants:
        name = ctx.profile.provider_name(tenant.k_account).lower()
        by_user: dict[str, tuple[str, set[str]]] = {}
        for provider in providers:
            if provider.name.strip().lower() != name:
                continue
            for line in provider.lines:
                if not line.addresses:
                    continue
                for user in line.users:
                    key = domain_user_key(user)
                    by_user.setdefault(key, (user, set()))[1].add(line.addresses[0])
        for _, (user, lines) in sorted(by_user.items()):
            resources.append(
                Resource(
                    address(tenant.name, user),
                    KIND,
                    ctx.name,
                    {"lines": sorted(lines, key=_line_order)},
                    tenant=tenant.name,
                    detail=f"{user}: lines {', '.join(sorted(lines, key=_line_order))}",
                )
            )
    return resources


def _line_order(extension: str) -> tuple[int, str]:
    return (len(extension), extension)


def batch_operations(
    changes: Sequence[Change], ctx: HostContext, friendly_names: dict[str, str | None]
) -> list[Operation]:
    """One ``tsecimp.import`` for every line-assignment change of this host, or nothing."""
    if not changes:
        return []
    users = xml_users(changes, ctx, friendly_names)
    if not users:
        return []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return [TsecimpImport(xml=render_xml(users), backup_name=f"tsecimp-{stamp}.txt")]


def xml_users(
    changes: Sequence[Change], ctx: HostContext, friendly_names: dict[str, str | None]
) -> list[XmlUser]:
    tenants = {t.name: t for t in ctx.tenants}
    lines_elsewhere = _lines_per_user(ctx)
    # a user changed in several tenants of this host appears several times in one import:
    # NoMerge in one entry would wipe what another entry just added
    entries = Counter(_user_of(c) for c in changes if c.action is not Action.NOOP)
    users = []
    for change in changes:
        if change.action is Action.NOOP:
            continue
        tenant = tenants[change.tenant or ""]
        known = provider_lines(ctx, tenant.k_account)
        user = _user_of(change)
        wanted = list((change.after or {}).get("lines", []))
        current = list((change.before or {}).get("lines", []))
        added = [line for line in wanted if line not in current]
        removed = [line for line in current if line not in wanted]

        def xml_line(
            extension: str, remove: bool = False, known: dict[str, str | None] = known
        ) -> XmlLine:
            # by PermanentID where the listing shows the line; a line not listed yet (a new
            # instance) goes by address, and the verifying gather tells whether it took
            permanent_id = known.get(extension)
            if permanent_id:
                return XmlLine(permanent_id=permanent_id, remove=remove)
            return XmlLine(address=extension, remove=remove)

        key = domain_user_key(user)
        only_here = lines_elsewhere.get(key, 0) == len(current) and entries[_user_of(change)] == 1
        if current and not set(wanted) & set(current) and only_here:
            # the whole set is replaced and nothing else of the user's is touched
            lines = [xml_line(x) for x in wanted] if wanted else None
            users.append(XmlUser(user, friendly_names.get(key), no_merge=True, lines=lines))
        else:
            lines = [xml_line(x) for x in added] + [xml_line(x, remove=True) for x in removed]
            users.append(XmlUser(user, friendly_names.get(key), lines=lines))
    return users


def desired_xml_users(ctx: HostContext, friendly_names: dict[str, str | None]) -> list[XmlUser]:
    """The complete desired assignments of this host's tenants (``render tsecimp``)."""
    users = []
    for resource in desired(ctx):
        user = resource.detail
        lines = [XmlLine(address=x) for x in resource.attributes["lines"]]
        users.append(
            XmlUser(user, friendly_names.get(domain_user_key(user)), no_merge=True, lines=lines)
        )
    return users


def _user_of(change: Change) -> str:
    return change.address.split("/", 3)[3]


def _lines_per_user(ctx: HostContext) -> dict[str, int]:
    key = f"{KIND}:per-user:{id(ctx.facts)}"
    if key in ctx.cache:
        cached: dict[str, int] = ctx.cache[key]
        return cached
    counts: dict[str, int] = defaultdict(int)
    for provider in listing(ctx):
        for line in provider.lines:
            for user in line.users:
                counts[domain_user_key(user)] += 1
    ctx.cache[key] = counts
    return counts
