"""Directory facts read from a real Samba AD DC."""

from __future__ import annotations

import math
import re

import ldap3
import pytest

from provisioner.directory.facts import (
    DomainInfo,
    DomainNotFoundError,
    GroupNotFoundError,
    lookup_users,
    read_group,
    resolve_domain,
    sid_to_string,
)
from provisioner.lab.samba import SambaDC
from tests.support.samba import LabAccount, LabDirectory

pytestmark = pytest.mark.samba

SID = re.compile(r"^S-1-5-21-\d+-\d+-\d+-\d+$")


@pytest.fixture(scope="module")
def domain(samba_dc: SambaDC) -> DomainInfo:
    with samba_dc.admin_connection() as conn:
        return resolve_domain(conn, samba_dc.netbios)


# -- objectSid ---------------------------------------------------------------------------------


def test_sid_layout_well_known_and_domain_sids() -> None:
    administrators = bytes.fromhex("01020000000000052000000020020000")
    assert sid_to_string(administrators) == "S-1-5-32-544"
    everyone = bytes.fromhex("010100000000000100000000")
    assert sid_to_string(everyone) == "S-1-1-0"
    domain_user = bytes.fromhex("010500000000000515000000a1b2c3d4e5f6a7b8c9d0e1f2f4010000")
    assert sid_to_string(domain_user) == "S-1-5-21-3569595041-3098015461-4074885321-500"


@pytest.mark.parametrize(
    "raw",
    [b"", bytes.fromhex("0201000000000005"), bytes.fromhex("010200000000000520000000")],
    ids=["empty", "revision-2", "truncated"],
)
def test_sid_rejects_malformed_bytes(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a SID"):
        sid_to_string(raw)


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
    assert list(users) == [jane.sam.lower()]
    user = users[jane.sam.lower()]
    assert (user.sam, user.display_name, user.disabled, user.dn) == (
        jane.sam,
        "Jane Doe",
        False,
        jane.dn,
    )
    assert SID.match(user.sid), user.sid
    assert user.member_of == frozenset()


def test_administrator_has_rid_500(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    admin = lookup_users(samba_lab.conn, domain, ["administrator"])["administrator"]
    assert admin.sid.endswith("-500")


def test_disabled_user_is_flagged(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    gone = samba_lab.user(prefix="off", disabled=True)
    here = samba_lab.user(prefix="on")
    users = lookup_users(samba_lab.conn, domain, [gone.sam, here.sam])
    assert users[gone.sam.lower()].disabled is True
    assert users[here.sam.lower()].disabled is False


def test_deleted_user_is_absent(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    doomed = samba_lab.user(prefix="del")
    kept = samba_lab.user(prefix="kept")
    assert doomed.sam.lower() in lookup_users(samba_lab.conn, domain, [doomed.sam])
    samba_lab.conn.delete(doomed.dn)
    users = lookup_users(samba_lab.conn, domain, [doomed.sam, kept.sam])
    assert list(users) == [kept.sam.lower()]


def test_renamed_user_keeps_its_sid(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    before = samba_lab.user(prefix="old", display_name="Old Name")
    sid = lookup_users(samba_lab.conn, domain, [before.sam])[before.sam.lower()].sid
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
    assert list(users) == [new_sam.lower()]
    after = users[new_sam.lower()]
    assert (after.sid, after.display_name) == (sid, "New Name")
    assert after.dn == f"CN={new_sam},{samba_lab.users_dn}"


def test_filter_characters_in_names_are_escaped(
    samba_lab: LabDirectory, domain: DomainInfo
) -> None:
    odd = samba_lab.user(prefix="o(b)")  # parentheses are legal in a sAMAccountName
    users = lookup_users(samba_lab.conn, domain, [odd.sam, "*", "o(b)*"])
    assert list(users) == [odd.sam.lower()]  # "*" is a name, not a wildcard


def test_2000_users_resolve_in_at_most_5_searches(
    samba_dc: SambaDC, domain: DomainInfo, samba_bulk_users: list[LabAccount]
) -> None:
    sams = [account.sam for account in samba_bulk_users]
    with samba_dc.admin_connection() as conn:
        users = lookup_users(conn, domain, [*sams, "no-such-user"], batch_size=500)
        assert conn.searches <= 5
        assert conn.searches == 5  # 2,001 names in batches of 500; each batch fits one page
    assert len(users) == 2000
    assert len({u.sid for u in users.values()}) == 2000
    assert users[sams[1234].lower()].dn == samba_bulk_users[1234].dn


def test_default_batches_cost_one_search_each(
    samba_dc: SambaDC, domain: DomainInfo, samba_bulk_users: list[LabAccount]
) -> None:
    sams = [account.sam for account in samba_bulk_users]
    with samba_dc.admin_connection() as conn:
        users = lookup_users(conn, domain, sams)
        assert conn.searches == math.ceil(len(sams) / 300)
    assert len(users) == len(sams)


def test_requested_group_memberships(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    alice, bob = samba_lab.user(prefix="alice"), samba_lab.user(prefix="bob")
    tapi = samba_lab.group(prefix="tapi", members=[alice.dn])
    other = samba_lab.group(prefix="other", members=[alice.dn, bob.dn])
    unasked = samba_lab.group(prefix="unasked", members=[bob.dn])
    with samba_lab.dc.admin_connection() as conn:
        users = lookup_users(conn, domain, [alice.sam, bob.sam], groups=[tapi.sam, other.dn])
        assert conn.searches == 2  # the groups, then the users
    assert users[alice.sam.lower()].member_of == {tapi.sam, other.dn}
    assert users[bob.sam.lower()].member_of == {other.dn}
    assert unasked.sam not in users[bob.sam.lower()].member_of


def test_unknown_group_is_an_error(samba_lab: LabDirectory, domain: DomainInfo) -> None:
    user = samba_lab.user()
    with pytest.raises(GroupNotFoundError, match="no-such-group"):
        lookup_users(samba_lab.conn, domain, [user.sam], groups=["no-such-group"])


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
