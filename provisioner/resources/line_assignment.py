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

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from provisioner.directory.model import DirectoryFacts
from provisioner.manifest.models import Tenant, domain_user_key
from provisioner.plan.model import Action, Change
from provisioner.remote.contract import Operation, TsecimpImport
from provisioner.remote.tsecimp import (
    ListedLine,
    ListedProvider,
    XmlLine,
    XmlUser,
    listing_problems,
    merge_providers,
    parse_listing,
    render_xml,
    split_glued_users,
)
from provisioner.resources import tsp_instance
from provisioner.resources.base import (
    PRUNE,
    HostContext,
    KindProblem,
    KindSpec,
    Removal,
    Resource,
)

KIND = "line_assignment"
# what str.splitlines() breaks a line at, as the listing parser does
_LINE_BREAK = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def address(tenant: str, user: str) -> str:
    return f"tenant/{tenant}/{KIND}/{domain_user_key(user)}"


@dataclass
class HostListing:
    """A host's ``tsecimp /d`` listing, read: providers merged, each tenant's lines by extension."""

    providers: list[ListedProvider]
    lines: dict[str, dict[str, ListedLine]]  # tenant → extension → line, users taken off names
    problems: list[str]  # what does not read one way only; line changes wait while there are any
    # tenants whose users cannot be told from their lines' names now (their PBX was not read):
    # neither side of their assignments is planned, rather than shown as drift that is not there
    unread: set[str] = field(default_factory=set)


def listing(ctx: HostContext) -> HostListing:
    """The host's listing, read once per host and facts."""
    key = f"{KIND}:listing:{id(ctx.facts)}"
    if key not in ctx.cache:
        ctx.cache[key] = _read_listing(ctx)
    found: HostListing = ctx.cache[key]
    return found


def _read_listing(ctx: HostContext) -> HostListing:
    text = ctx.facts.tsecimp_listing if ctx.facts is not None else None
    providers = merge_providers(parse_listing(text or ""))
    problems = _unsafe_line_names(ctx) + listing_problems(providers)
    by_name = {p.name.casefold(): p for p in providers}
    names = _known_domains(ctx)
    lines: dict[str, dict[str, ListedLine]] = {}
    unread: set[str] = set()
    for tenant in ctx.tenants:
        provider = by_name.get(ctx.profile.provider_name(tenant.k_account).casefold())
        lines[tenant.name] = {}
        if provider is None:
            continue
        pbx = ctx.extensions.get(tenant.name)
        if pbx is None and any("\\" in line.name for line in provider.lines):
            unread.add(tenant.name)  # its PBX problem says why; the listing's shape still counts
        formats = {tenant.line_name_format, *_live_formats(ctx, tenant.k_account)}
        for line in provider.lines:
            where = f"{provider.name!r} line {line.name!r}"
            if not line.addresses:
                problems.append(f"{where} lists no address")
                continue
            extension = line.addresses[0]
            if extension in lines[tenant.name]:
                problems.append(f"{where}: address {extension} is listed twice")
                continue
            if pbx is not None and extension not in pbx:
                problems.append(
                    f"{where}: {extension} is not an extension of PBX {tenant.k_account} (the "
                    "PBX dropped it since the Telephony service last started, or a line name "
                    "holding a line break printed a forged entry)"
                )
                continue
            glued = (
                [] if pbx is None else _glued_users(line, formats, pbx[extension], tenant, names)
            )
            if glued is None:
                problems.append(f"{where}: users cannot be told from the line's name")
                continue
            users = [*line.users, *glued]
            lines[tenant.name][extension] = ListedLine(
                line.name, line.permanent_id, line.addresses, users
            )
    return HostListing(providers, lines, problems, unread)


def _unsafe_line_names(ctx: HostContext) -> list[str]:
    """Line names (from the PBXs) that could print a forged entry: the cause, reported first."""
    return [
        f"PBX {tenant.k_account} names extension {number} {name!r}: a line break in a line's "
        "name can print a forged entry into the listing"
        for tenant in ctx.tenants
        for number, name in ctx.extensions.get(tenant.name, {}).items()
        if _LINE_BREAK.search(name)
    ]


def _glued_users(
    line: ListedLine, formats: set[str], pbx_name: str, tenant: Tenant, domains: set[str]
) -> list[str] | None:
    """The users glued onto the line's name, read against each name the TSP may have given it
    (with the manifest's line-name format, or the one the instance has now); None unless every
    reading agrees."""
    readings = set()
    for line_format in formats:
        expected = tsp_instance.line_name(
            line_format, line.addresses[0], pbx_name, tenant.k_account
        )
        users = split_glued_users(line.name, expected, domains)
        if users is not None:
            readings.add(tuple(users))
    return list(readings.pop()) if len(readings) == 1 else None


def _known_domains(ctx: HostContext) -> set[str]:
    """NetBIOS domains a listed user may be in: the Sites' and every manifest account's."""
    domains = {site.directory.netbios_domain for site in ctx.estate.sites.values()}
    for tenant in ctx.tenants:
        domains.update(a.user.split("\\", 1)[0] for a in tenant.assignments)
    return domains


def _live_formats(ctx: HostContext, k_account: str) -> list[str]:
    """The line-name format the host's instance has now (the TSP names lines with it)."""
    if ctx.facts is None:
        return []
    return [
        i.settings.line_name_format
        for i in ctx.facts.tsp_instances
        if i.settings is not None and i.instance.casefold() == k_account.casefold()
    ]


def provider_lines(ctx: HostContext, k_account: str) -> dict[str, str | None]:
    """The lines the tenant's provider exposes now: extension → permanent id (computed once
    per host and facts: every line change asks)."""
    key = f"{KIND}:ids:{id(ctx.facts)}:{k_account.casefold()}"
    if key not in ctx.cache:
        tenant = next(
            (t for t in ctx.tenants if t.k_account.casefold() == k_account.casefold()), None
        )
        lines = listing(ctx).lines.get(tenant.name, {}) if tenant is not None else {}
        ctx.cache[key] = {ext: line.permanent_id for ext, line in lines.items()}
    found: dict[str, str | None] = ctx.cache[key]
    return found


def desired(ctx: HostContext) -> list[Resource]:
    resources = []
    unread = listing(ctx).unread
    for tenant in ctx.tenants:
        if tenant.name in unread:
            continue
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
    read = listing(ctx)
    if read.problems:
        more = f" (and {len(read.problems) - 1} more)" if len(read.problems) > 1 else ""
        raise KindProblem(
            KIND,
            f"the tsecimp /d listing of {ctx.name} does not read one way only: "
            f"{read.problems[0]}{more}; its line assignments are held back, nothing is guessed "
            f"(see the listing with: provisioner facts --server {ctx.name})",
        )
    resources = []
    for tenant in ctx.tenants:
        if tenant.name in read.unread:
            continue
        by_user: dict[str, tuple[str, set[str]]] = {}
        for extension, line in read.lines[tenant.name].items():
            for user in line.users:
                by_user.setdefault(domain_user_key(user), (user, set()))[1].add(extension)
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


def prune(ctx: HostContext, resource: Resource) -> Removal | None:
    """A user's lines the manifests do not name go with the tenant's ``prune``, or when the AD
    policy removes the user's lines."""
    tenant = resource.tenant or ""
    if _user_of_address(resource.address) in ctx.removed_users.get(tenant, frozenset()):
        return Removal(
            "the user is missing or disabled in AD (on_missing_user: remove_lines)",
            "delete_because_user_not_in_directory",
        )
    found = ctx.estate.tenants.get(tenant)
    return PRUNE if found is not None and found.prune else None


# after the Telephony restart: a new TSP instance's lines appear only then
SPECS = (KindSpec(KIND, phase=60, prune=prune),)


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
    accounts = account_names(ctx)
    users = []
    for change in changes:
        if change.action is Action.NOOP:
            continue
        tenant = tenants[change.tenant or ""]
        known = provider_lines(ctx, tenant.k_account)
        key = _user_of(change)
        user = accounts.get(key, key)
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

        only_here = (
            lines_elsewhere is not None
            and lines_elsewhere.get(key, 0) == len(current)
            and entries[key] == 1
        )
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


def account_names(ctx: HostContext) -> dict[str, str]:
    """Each user key of this host's tenants → the name to write to the host: as the directory
    spells it, else as the manifest does, else as the host lists it (a user being removed).

    Names are never case-mapped here: ``NFON\\STRASSE`` is another account than ``NFON\\Straße``.
    """
    names: dict[str, str] = {}
    for lines in listing(ctx).lines.values():
        for line in lines.values():
            names.update((domain_user_key(user), user) for user in line.users)
    for tenant in ctx.tenants:
        names.update((domain_user_key(a.user), a.user) for a in tenant.assignments)
    if isinstance(ctx.directory, DirectoryFacts):
        names.update(
            (key, user.account) for key, user in ctx.directory.users.items() if user is not None
        )
    return names


def _user_of(change: Change) -> str:
    return _user_of_address(change.address)


def _user_of_address(address: str) -> str:
    return address.split("/", 3)[3]


def _lines_per_user(ctx: HostContext) -> dict[str, int] | None:
    """How many lines each user holds on the host, every provider counted; None when unknown.

    A user glued onto the name of another vendor's line cannot be told from the name, so a
    backslash in such a name makes the count unknown (and NoMerge is then not used here).
    """
    key = f"{KIND}:per-user:{id(ctx.facts)}"
    if key not in ctx.cache:
        ctx.cache[key] = _count_lines_per_user(ctx)
    counts: dict[str, int] | None = ctx.cache[key]
    return counts


def _count_lines_per_user(ctx: HostContext) -> dict[str, int] | None:
    read = listing(ctx)
    ours = {ctx.profile.provider_name(t.k_account).casefold() for t in ctx.tenants}
    others = [line for p in read.providers if p.name.casefold() not in ours for line in p.lines]
    if any("\\" in line.name for line in others):
        return None
    counts: dict[str, int] = defaultdict(int)
    tenant_lines = [line for lines in read.lines.values() for line in lines.values()]
    for line in tenant_lines + others:
        for user in line.users:
            counts[domain_user_key(user)] += 1
    return counts
