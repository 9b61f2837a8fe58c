"""Group membership changes against a real Samba AD DC: repeating one is never an error."""

from __future__ import annotations

import pytest

from provisioner.directory.facts import DomainInfo, read_group, resolve_domain
from provisioner.directory.operations import (
    MembershipChange,
    add_group_members,
    remove_group_members,
)
from provisioner.lab.samba import SambaDC
from provisioner.transports.ldap import LDAPOperationError
from tests.support.samba import LabDirectory

pytestmark = pytest.mark.samba


@pytest.fixture(scope="module")
def domain(samba_dc: SambaDC) -> DomainInfo:
    with samba_dc.admin_connection() as conn:
        return resolve_domain(conn, samba_dc.netbios)


def _members(lab: LabDirectory, domain: DomainInfo, group: str) -> frozenset[str]:
    return read_group(lab.conn, domain, group).members


def test_adding_twice_is_the_same_as_adding_once(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    group = samba_lab.group()
    dns = [user.dn for user in samba_lab.users(3, prefix="add")]

    with samba_lab.dc.admin_connection() as conn:
        first = add_group_members(conn, group.dn, dns)
        assert conn.operations == 2  # bind + one modify
    after_first = _members(samba_lab, domain, group.sam)
    second = add_group_members(samba_lab.conn, group.dn, dns)

    assert first == MembershipChange(changed=tuple(dns), unchanged=())
    assert second == MembershipChange(changed=(), unchanged=tuple(dns))
    assert after_first == _members(samba_lab, domain, group.sam) == set(dns)


def test_adding_a_mix_adds_only_the_missing(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    old, new = samba_lab.user(prefix="old"), samba_lab.user(prefix="new")
    group = samba_lab.group(members=[old.dn])
    change = add_group_members(samba_lab.conn, group.dn, [old.dn, new.dn.upper()])
    assert change == MembershipChange(changed=(new.dn.upper(),), unchanged=(old.dn,))
    assert _members(samba_lab, domain, group.sam) == {old.dn, new.dn}


def test_removing_twice_is_the_same_as_removing_once(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    stay, leave = samba_lab.user(prefix="stay"), samba_lab.user(prefix="leave")
    group = samba_lab.group(members=[stay.dn, leave.dn])

    first = remove_group_members(samba_lab.conn, group.dn, [leave.dn])
    after_first = _members(samba_lab, domain, group.sam)
    second = remove_group_members(samba_lab.conn, group.dn, [leave.dn])

    assert first == MembershipChange(changed=(leave.dn,), unchanged=())
    assert second == MembershipChange(changed=(), unchanged=(leave.dn,))
    assert after_first == _members(samba_lab, domain, group.sam) == {stay.dn}


def test_removing_a_mix_removes_only_the_members(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    member, stranger = samba_lab.user(prefix="mem"), samba_lab.user(prefix="stranger")
    group = samba_lab.group(members=[member.dn])
    change = remove_group_members(samba_lab.conn, group.dn, [stranger.dn, member.dn])
    assert change == MembershipChange(changed=(member.dn,), unchanged=(stranger.dn,))
    assert _members(samba_lab, domain, group.sam) == frozenset()


def test_adding_a_user_that_does_not_exist_fails(samba_lab: LabDirectory) -> None:
    group = samba_lab.group()
    ghost = f"CN=ghost,{samba_lab.users_dn}"
    with pytest.raises(LDAPOperationError) as caught:
        add_group_members(samba_lab.conn, group.dn, [ghost])
    assert caught.value.result == "noSuchObject"


def test_nothing_to_do_sends_nothing(samba_dc: SambaDC, samba_lab: LabDirectory) -> None:
    group = samba_lab.group()
    with samba_dc.admin_connection() as conn:
        assert add_group_members(conn, group.dn, []) == MembershipChange((), ())
        assert conn.operations == 1  # only the bind
