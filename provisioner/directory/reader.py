"""Reading what the manifests need from Active Directory, per Site, in batched searches.

One bind per Site, one crossRef search for the domain, one paged search per batch of users and
one read per tenant users group::

    read_directory(estate, inventory) →
        DirectoryFacts(users={"NFON\\\\JDOE": ADUser(...), "NFON\\\\GONE": None},
                       groups={"NFON\\\\K6732-TAPI-USERS": ADGroup(...)}, operations=5, ...)
"""

from __future__ import annotations

from pathlib import Path

from provisioner.directory.facts import lookup_users, read_group, resolve_domain
from provisioner.directory.model import DirectoryFacts, group_key
from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.models import Site, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.plan.model import PlanProblem
from provisioner.transports.ldap import LDAPConnection, LDAPSettings, dn_key


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


def read_directory(estate: Estate, inventory: Inventory) -> DirectoryFacts:
    facts = DirectoryFacts()
    if inventory.directory is not None and inventory.directory.enabled is False:
        facts.notes.append(
            "the directory is not read (the inventory turns it off): users are not checked"
        )
        return facts
    for site in estate.sites.values():
        try:
            _read_site(estate, site, inventory, facts)
        except ProvisionerError as exc:
            facts.problems.append(PlanProblem(f"site {site.name}: Active Directory: {exc}"))
    return facts


def _read_site(estate: Estate, site: Site, inventory: Inventory, facts: DirectoryFacts) -> None:
    netbios = site.directory.netbios_domain.upper()
    servers = {name for name, s in estate.servers.items() if estate.site_of(s) is site}
    tenants = [t for t in estate.tenants.values() if t.server in servers]
    users = sorted({domain_user_key(a.user) for t in tenants for a in t.assignments})
    ours = [u for u in users if u.split("\\")[0] == netbios]
    foreign = [u for u in users if u.split("\\")[0] != netbios]
    if foreign:
        facts.notes.append(
            f"site {site.name}: {len(foreign)} users of other domains are not checked "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
        )
    groups = sorted({group_key(t.users_group) for t in tenants if t.users_group})
    if not ours and not groups:
        return
    with LDAPConnection.open(settings_for(site, inventory)) as conn:
        domain = resolve_domain(conn, netbios)
        found = lookup_users(
            conn, domain, [u.split("\\")[1] for u in ours], batch_size=site.directory.batch_size
        )
        for user in ours:
            ad_user = found.get(user.split("\\")[1].lower())
            facts.users[user] = ad_user
            if ad_user is not None:
                facts.user_keys[user] = dn_key(ad_user.dn)
                facts.keys[dn_key(ad_user.dn)] = user
        for key in groups:  # validate made sure they are all in this Site's domain
            group = read_group(conn, domain, key.split("\\", 1)[1])
            facts.groups[key] = group
            facts.member_keys[key] = {dn_key(dn): dn for dn in group.members}
        facts.operations += conn.operations
    facts.read_sites.add(site.name)
