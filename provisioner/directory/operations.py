"""Changes to Active Directory group membership, safe to repeat.

AD applies a modify all-or-nothing: adding a user who is already a member fails the whole request
(``entryAlreadyExists``), and so does removing one who is not (``unwillingToPerform``; some
servers say ``noSuchAttribute``). These helpers first try the whole change in one request; only
when it fails that way do they read the group and send just the difference::

    add_group_members(conn, "CN=TAPI-Users,OU=Groups,DC=nfon,DC=test", [jdoe_dn, mmuster_dn])
    # MembershipChange(changed=('CN=Max Muster,...',), unchanged=('CN=Jane Doe,...',))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ldap3

from provisioner.transports.ldap import LDAPConnection, dn_key

# AD refuses a modify with more than about 5,000 values; stay well below.
_VALUES_PER_MODIFY = 1000
_ALREADY_MEMBER = ("entryAlreadyExists", "attributeOrValueExists")
_NOT_A_MEMBER = ("unwillingToPerform", "noSuchAttribute")


@dataclass(frozen=True)
class MembershipChange:
    """Which of the requested DNs this call changed, and which were already as asked."""

    changed: tuple[str, ...]
    unchanged: tuple[str, ...]


def add_group_members(
    conn: LDAPConnection, group_dn: str, user_dns: Iterable[str]
) -> MembershipChange:
    """Make every DN in ``user_dns`` a direct member of ``group_dn``; existing members are fine."""
    return _change_members(conn, group_dn, user_dns, add=True)


def remove_group_members(
    conn: LDAPConnection, group_dn: str, user_dns: Iterable[str]
) -> MembershipChange:
    """Make sure no DN in ``user_dns`` is a direct member of ``group_dn``; absent ones are fine."""
    return _change_members(conn, group_dn, user_dns, add=False)


def _change_members(
    conn: LDAPConnection, group_dn: str, user_dns: Iterable[str], *, add: bool
) -> MembershipChange:
    operation = ldap3.MODIFY_ADD if add else ldap3.MODIFY_DELETE
    benign = _ALREADY_MEMBER if add else _NOT_A_MEMBER
    requested = list({dn_key(dn): dn for dn in user_dns}.values())
    changed: list[str] = []
    unchanged: list[str] = []
    for chunk in _chunks(requested, _VALUES_PER_MODIFY):
        outcome = conn.modify(group_dn, {"member": [(operation, chunk)]}, tolerate=benign)
        if outcome == "success":
            changed += chunk
            continue
        # Some DN was already as asked, so nothing was applied: send only the real difference.
        members = {dn_key(dn.decode("utf-8")) for dn in conn.read_ranged(group_dn, "member")}
        todo = [dn for dn in chunk if (dn_key(dn) in members) != add]
        if todo:
            conn.modify(group_dn, {"member": [(operation, todo)]})
        changed += todo
        unchanged += [dn for dn in chunk if (dn_key(dn) in members) == add]
    return MembershipChange(changed=tuple(changed), unchanged=tuple(unchanged))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
