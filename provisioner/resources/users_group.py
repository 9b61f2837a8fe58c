"""A tenant's AD users group: its members are exactly the tenant's users found in AD.

Address ``tenant/k6732/users_group``, carried out over LDAP (host ``directory``)::

    {"group": "NFON\\\\K6732-TAPI-Users", "members": ["NFON\\\\jdoe", "NFON\\\\Straße"]}

Names are shown as the directory spells them. Members show as ``DOMAIN\\sam`` where the user is
one the manifests name, else as their DN (a member someone added by hand, or a nested group), so
that drift names them. A user that ``on_missing_user: skip`` skips (disabled in AD) keeps the
membership it has: it is neither added nor removed.
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
    estate: Estate,
    directory: DirectoryFacts,
    skipped: Mapping[str, frozenset[str]],
    removed: Mapping[str, frozenset[str]],
) -> list[tuple[Resource, Resource]]:
    result = []
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        if not tenant.users_group:
            continue
        group = directory.groups.get(group_key(tenant.users_group))
        if group is None:
            continue  # not read (the directory is off, or could not be read)
        live = directory.members_shown(group_key(tenant.users_group))
        wanted = set()
        for assignment in tenant.assignments:
            key = domain_user_key(assignment.user)
            user = directory.users.get(key)
            if user is None or key in removed.get(tenant.name, frozenset()):
                continue
            if key in skipped.get(tenant.name, frozenset()) and user.account not in live:
                continue  # skipped: left as it is
            wanted.add(user.account)
        attributes = {"group": group.account}
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
    """Members as shown (an account or a DN) back into DNs for LDAP."""
    dns = {user.account: user.dn for user in directory.users.values() if user is not None}
    return [dns.get(member, member) for member in members]
