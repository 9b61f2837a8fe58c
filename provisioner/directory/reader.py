"""Reading what the manifests need from Active Directory, per Site, in batched searches.

Per Site, over a small pool of connections: one crossRef search for the domain, one search
per batch of users (the batches at once), one read per tenant users group, and for a group with
a member that is not one of the manifests' users (perhaps a nested group) one search for all its
users through nesting::

    read_directory(estate, inventory) →
        DirectoryFacts(users={"NFON\\\\JDOE": ADUser(...), "NFON\\\\GONE": None},
                       groups={"NFON\\\\K6732-TAPI-USERS": ADGroup(...)}, operations=5, ...)
"""

from __future__ import annotations

from pathlib import Path

from provisioner.directory.facts import (
    DomainInfo,
    lookup_users,
    nested_members,
    read_group,
    resolve_domain,
)
from provisioner.directory.model import ADGroup, DirectoryFacts, group_key
from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.models import Site, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.plan.model import PlanProblem
from provisioner.transports.ldap import LDAPConnection, LDAPPool, LDAPSettings, dn_key

# Connections per Site at most: a few keep the directory busy while answers are decoded.
MAX_CONNECTIONS = 4


def settings_for(site: Site, inventory: Inventory) -> LDAPSettings:
    directory = site.directory
    overlay = inventory.directory
    url = (overlay and overlay.ldap_url) or directory.ldap_url
    ca_file = directory.ca_file
    if overlay and overlay.ca_file:
        ca_file = inventory.path(overlay.ca_file)
    password_ref = (overlay and overlay.bind_password) or directory.bind_password
    start_tls = directory.start_tls
    if overlay and overlay.start_tls is not None:
        start_tls = overlay.start_tls
    return LDAPSettings(
        url=url,
        bind_user=(overlay and overlay.bind_user) or directory.bind_user,
        bind_password=inventory.resolve(password_ref),
        ca_file=Path(ca_file) if ca_file else None,
        start_tls=start_tls,
    )


def read_directory(
    estate: Estate, inventory: Inventory, *, parallelism: int = MAX_CONNECTIONS
) -> DirectoryFacts:
    """What the manifests' users and groups are in AD; ``parallelism`` bounds the connections."""
    facts = DirectoryFacts()
    if inventory.directory is not None and inventory.directory.enabled is False:
        facts.notes.append(
            "the directory is not read (the inventory turns it off): users are not checked"
        )
        return facts
    for site in estate.sites.values():
        try:
            _read_site(estate, site, inventory, facts, min(parallelism, MAX_CONNECTIONS))
        except ProvisionerError as exc:
            facts.problems.append(PlanProblem(f"site {site.name}: Active Directory: {exc}"))
    return facts


def _read_site(
    estate: Estate, site: Site, inventory: Inventory, facts: DirectoryFacts, connections: int
) -> None:
    netbios = domain_user_key(site.directory.netbios_domain)
    servers = {name for name, s in estate.servers.items() if estate.site_of(s) is site}
    tenants = [t for t in estate.tenants.values() if t.server in servers]
    spelled: dict[str, str] = {}  # user key → the name as the manifests first spell it
    for tenant in tenants:
        for assignment in tenant.assignments:
            spelled.setdefault(domain_user_key(assignment.user), assignment.user)
    ours = sorted(key for key in spelled if key.split("\\")[0] == netbios)
    foreign = sorted(spelled[key] for key in spelled if key.split("\\")[0] != netbios)
    if foreign:
        facts.notes.append(
            f"site {site.name}: {len(foreign)} users of other domains are not checked "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
        )
    groups = sorted({group_key(t.users_group) for t in tenants if t.users_group})
    if not ours and not groups:
        return
    with LDAPPool(settings_for(site, inventory), size=connections) as pool:
        domain = pool.run(lambda conn: resolve_domain(conn, site.directory.netbios_domain))
        found = lookup_users(
            pool,
            domain,
            [spelled[key].split("\\", 1)[1] for key in ours],
            batch_size=site.directory.batch_size,
        )
        for key in ours:
            user = found.get(key.split("\\", 1)[1])
            facts.users[key] = user
            if user is not None:
                facts.by_dn[user.dn_key] = key
        # validate made sure the groups are all in this Site's domain
        read = pool.map(lambda conn, key: _read_group(conn, domain, key), groups)
        for key, group in zip(groups, read, strict=True):
            facts.groups[key] = group
            facts.members[key] = {dn_key(dn): dn for dn in group.members}
        strangers = [key for key in groups if set(facts.members[key]) - set(facts.by_dn)]
        nested = pool.map(
            lambda conn, key: nested_members(conn, domain, facts.groups[key].dn), strangers
        )
        facts.nested.update(zip(strangers, nested, strict=True))
        facts.operations += pool.operations
    facts.read_sites.add(site.name)


def _read_group(conn: LDAPConnection, domain: DomainInfo, key: str) -> ADGroup:
    return read_group(conn, domain, key.split("\\", 1)[1])
