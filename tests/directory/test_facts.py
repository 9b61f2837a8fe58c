"""Directory facts read from a real Samba AD DC."""

from __future__ import annotations

import math

import ldap3
import pytest

from provisioner.directory.facts import (
    DomainInfo,
    DomainNotFoundError,
    GroupNotFoundError,
    lookup_users,
    nested_members,
    read_group,
    resolve_domain,
)
from provisioner.lab.samba import LabUser, SambaDC, create_users
from provisioner.manifest.models import domain_user_key
from provisioner.transports.ldap import LDAPPool, dn_key
from tests.support.samba import LabAccount, LabDirectory

pytestmark = pytest.mark.samba


@pytest.fixture(scope="module")
def domain(samba_dc: SambaDC) -> DomainInfo:
    with samba_dc.admin_connection() as conn:
        return resolve_domain(conn, samba_dc.netbios)


# -- domains -----------------------------------------------------------------------------------


def test_netbios_name_resolves_to_the_domain_dn(samba_dc: SambaDC) -> None:
    with samba_dc.admin_connection() as conn:
        domain = resolve_domain(conn, "nfon")  # NetBIOS names are case-insensitive
        assert conn.searches == 2  # RootDSE + crossRefs
    assert domain == DomainInfo(netbios="NFON", dn="DC=nfon,DC=test", dns_root="nfon.test")


def test_unknown_netbios_name_lists_the_known_ones(samba_lab: LabDirectory) -> None:
    with pytest.raises(DomainNotFoundError) as caught:
        resolve_domain(samba_lab.conn, "ACME")
    assert "'ACME'" in str(caught.value)
    assert "(it has: NFON)" in str(caught.value)


# -- users -------------------------------------------------------------------------------------


def test_user_facts(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    jane = samba_lab.user(prefix="jane", display_name="Jane Doe")
    users = lookup_users(samba_lab.conn, domain, [jane.sam.upper()])
    assert list(users) == [jane.sam.upper()]
    user = users[jane.sam.upper()]
    assert (user.sam, user.display_name, user.disabled, user.dn) == (
        jane.sam,
        "Jane Doe",
        False,
        jane.dn,
    )
    assert user.account == f"NFON\\{jane.sam}"  # as the directory spells it
    assert user.dn_key == dn_key(jane.dn)


def test_names_are_matched_by_the_directory_and_never_case_mapped(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    """``Straße`` and ``STRASSE`` are two accounts (Python's upper() would make them one)."""
    suffix = samba_lab.unique("")
    sharp, double = f"Straße{suffix}", f"STRASSE{suffix}"
    dns = create_users(
        samba_lab.conn,
        samba_lab.users_dn,
        [LabUser(sharp, display_name="Eva Straße"), LabUser(double, display_name="Max Strasse")],
        realm=samba_lab.dc.realm,
    )
    users = lookup_users(samba_lab.conn, domain, [f"straße{suffix}", double.lower()])
    assert {key: user.sam for key, user in users.items()} == {
        domain_user_key(sharp): sharp,
        domain_user_key(double): double,
    }
    assert domain_user_key(sharp) != domain_user_key(double)
    assert users[domain_user_key(sharp)].dn == dns[0]
    assert users[domain_user_key(sharp)].display_name == "Eva Straße"


def test_disabled_user_is_flagged(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    gone = samba_lab.user(prefix="off", disabled=True)
    here = samba_lab.user(prefix="on")
    users = lookup_users(samba_lab.conn, domain, [gone.sam, here.sam])
    assert users[gone.sam.upper()].disabled is True
    assert users[here.sam.upper()].disabled is False


def test_deleted_user_is_absent(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    doomed = samba_lab.user(prefix="del")
    kept = samba_lab.user(prefix="kept")
    assert doomed.sam.upper() in lookup_users(samba_lab.conn, domain, [doomed.sam])
    samba_lab.conn.delete(doomed.dn)
    users = lookup_users(samba_lab.conn, domain, [doomed.sam, kept.sam])
    assert list(users) == [kept.sam.upper()]


def test_renamed_user_is_found_by_its_new_name_only(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    before = samba_lab.user(prefix="old", display_name="Old Name")
    new_sam = samba_lab.unique("new")
    samba_lab.conn.modify(
        before.dn,
        {
            "sAMAccountName": [(ldap3.MODIFY_REPLACE, [new_sam])],
            "displayName": [(ldap3.MODIFY_REPLACE, ["New Name"])],
        },
    )
    samba_lab.conn.rename(before.dn, f"CN={new_sam}")
    users = lookup_users(samba_lab.conn, domain, [before.sam, new_sam])
    assert list(users) == [new_sam.upper()]
    after = users[new_sam.upper()]
    assert after.display_name == "New Name"
    assert after.dn == f"CN={new_sam},{samba_lab.users_dn}"


def test_filter_characters_in_names_are_escaped(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    odd = samba_lab.user(prefix="o(b)")  # parentheses are legal in a sAMAccountName
    users = lookup_users(samba_lab.conn, domain, [odd.sam, "*", "o(b)*"])
    assert list(users) == [odd.sam.upper()]  # "*" is a name, not a wildcard


def test_2000_users_resolve_in_at_most_5_searches(
    samba_dc: SambaDC, domain: DomainInfo, samba_bulk_users: list[LabAccount]
) -> None:
    sams = [account.sam for account in samba_bulk_users]
    with samba_dc.admin_connection() as conn:
        users = lookup_users(conn, domain, [*sams, "no-such-user"], batch_size=500)
        assert conn.searches <= 5
        assert conn.searches == 5  # 2,001 names in batches of 500; each batch fits one page
    assert len(users) == 2000
    assert len({u.dn for u in users.values()}) == 2000
    assert users[sams[1234].upper()].dn == samba_bulk_users[1234].dn


def test_default_batches_cost_one_search_each(
    samba_dc: SambaDC, domain: DomainInfo, samba_bulk_users: list[LabAccount]
) -> None:
    sams = [account.sam for account in samba_bulk_users]
    with samba_dc.admin_connection() as conn:
        users = lookup_users(conn, domain, sams)
        assert conn.searches == math.ceil(len(sams) / 100)
    assert len(users) == len(sams)


def test_a_pool_spreads_the_batches_over_its_connections(
    samba_dc: SambaDC, domain: DomainInfo, samba_bulk_users: list[LabAccount]
) -> None:
    sams = [account.sam for account in samba_bulk_users]
    with LDAPPool(samba_dc.ldap_settings(), size=3) as pool:
        users = lookup_users(pool, domain, sams, batch_size=100)
        opened = len(pool._opened)
        operations = pool.operations
    assert len(users) == len(sams)
    assert opened == 3  # 20 batches on at most 3 connections
    assert operations == opened + math.ceil(len(sams) / 100)  # a bind each, a search per batch


def test_no_names_no_searches(samba_dc: SambaDC, domain: DomainInfo) -> None:
    with samba_dc.admin_connection() as conn:
        assert lookup_users(conn, domain, []) == {}
        assert conn.searches == 0


def test_batch_size_beyond_a_page_is_refused(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        lookup_users(samba_lab.conn, domain, ["x"], batch_size=1000)


# -- groups ------------------------------------------------------------------------------------


def test_read_group_returns_member_dns(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    members = samba_lab.users(3, prefix="gm")
    group = samba_lab.group(prefix="grp", members=[m.dn for m in members])
    found = read_group(samba_lab.conn, domain, group.sam)
    assert (found.name, found.dn) == (group.sam, group.dn)
    assert found.members == {m.dn for m in members}


def test_read_empty_group(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    group = samba_lab.group(prefix="empty")
    assert read_group(samba_lab.conn, domain, group.sam).members == frozenset()


def test_read_missing_group(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    with pytest.raises(GroupNotFoundError, match=r"NFON\\nope does not exist"):
        read_group(samba_lab.conn, domain, "nope")


def test_nested_members_follow_groups_inside_groups(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    direct, deep, outside = samba_lab.users(3, prefix="nest")
    inner = samba_lab.group(prefix="inner", members=[deep.dn])
    middle = samba_lab.group(prefix="middle", members=[inner.dn])
    outer = samba_lab.group(prefix="outer", members=[direct.dn, middle.dn])
    samba_lab.group(prefix="aside", members=[outside.dn])
    assert read_group(samba_lab.conn, domain, outer.sam).members == {direct.dn, middle.dn}
    found = nested_members(samba_lab.conn, domain, outer.dn)
    assert found == {dn_key(direct.dn), dn_key(deep.dn)}  # users only, at any depth
