"""A tenant's AD users group: its members are exactly the tenant's users found in AD.

Address ``tenant/k6732/users_group``, carried out over LDAP (host ``directory``)::

    {"group": "NFON\\\\K6732-TAPI-USERS", "members": ["NFON\\\\JDOE", "NFON\\\\MAUERSBERGERM"]}

Members show as ``DOMAIN\\SAM`` where the user is one the manifests name, else as their DN (a
member someone added by hand), so that drift names them.
"""

from __future__ import annotations

from collections.abc import Mapping

from provisioner.directory.model import DirectoryFacts, group_key
from provisioner.manifest.models import domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.resources.base import Resource

KIND = "users_group"
HOST = "directory"


def address(tenant: str) -> str:
    return f"tenant/{tenant}/{KIND}"


def pairs(
    estate: Estate, directory: DirectoryFacts, removed: Mapping[str, frozenset[str]]
) -> list[tuple[Resource, Resource]]:
    result = []
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        if not tenant.users_group:
            continue
        group = group_key(tenant.users_group)
        if group not in directory.groups:
            continue  # not read (the directory is off, or could not be read)
        wanted = set()
        for assignment in tenant.assignments:
            key = domain_user_key(assignment.user)
            user = directory.users.get(key)
            if user is not None and key not in removed.get(tenant.name, frozenset()):
                wanted.add(key)
        live = directory.members_shown(group)
        attributes = {"group": group_key(tenant.users_group)}
        result.append(
            (
                Resource(
                    address(tenant.name),
                    KIND,
                    HOST,
                    attributes | {"members": sorted(wanted)},
                    tenant=tenant.name,
                ),
                Resource(
                    address(tenant.name),
                    KIND,
                    HOST,
                    attributes | {"members": sorted(live)},
                    tenant=tenant.name,
                ),
            )
        )
    return result


def member_dns(directory: DirectoryFacts, members: list[str]) -> list[str]:
    """Members as shown (DOMAIN\\SAM or DN) back into DNs for LDAP."""
    dns = []
    for member in members:
        user = directory.users.get(member)
        dns.append(user.dn if user is not None else member)
    return dns
