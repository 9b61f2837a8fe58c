"""What the provisioner needs to know from Active Directory, read in as few searches as possible.

A manifest names users as ``DOMAIN\\sam``. :func:`resolve_domain` turns ``NFON`` into the domain's
DN; :func:`lookup_users` reads all users of a run in one search per batch, the batches spread
over a pool of connections::

    domain = resolve_domain(conn, "NFON")   # DomainInfo('NFON', 'DC=nfon,DC=test', 'nfon.test')
    users = lookup_users(pool, domain, ["jdoe", "straße"])
    users["STRAßE"]                          # keyed as Windows compares names (domain_user_key)
    # ADUser(sam='Straße', domain='NFON', display_name='Eva Straße', disabled=False,
    #        dn='CN=Eva Straße,OU=Staff,DC=nfon,DC=test', dn_key='cn=eva straße,ou=staff,...')

Only what the plan uses is read: the name as the directory spells it, displayName (the default
friendly name) and userAccountControl (disabled or not).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars

from provisioner.directory.model import ADGroup, ADUser
from provisioner.errors import ProvisionerError
from provisioner.manifest.models import domain_user_key
from provisioner.transports.ldap import LDAPConnection, LDAPEntry, LDAPPool, dn_key

# crossRef.systemFlags: FLAG_CR_NTDS_NC (1) | FLAG_CR_NTDS_DOMAIN (2) marks a domain partition.
_DOMAIN_CROSSREF = 3
# AD's MaxPageSize: a batch must fit in one page, so that it needs no paging.
MAX_BATCH_SIZE = 999
# userAccountControl ADS_UF_ACCOUNTDISABLE.
_ACCOUNT_DISABLED = 0x2
# The bitwise-AND matching rule (LDAP_MATCHING_RULE_BIT_AND).
_BIT_AND = "1.2.840.113556.1.4.803"
# LDAP_MATCHING_RULE_IN_CHAIN: "memberOf:<this>:=G" matches members of G through any depth of
# nested groups (Microsoft Learn, "Search Filter Syntax",
# https://learn.microsoft.com/en-us/windows/win32/adsi/search-filter-syntax).
_IN_CHAIN = "1.2.840.113556.1.4.1941"
# sAMAccountType SAM_NORMAL_USER_ACCOUNT: user accounts, not computers or trusts; indexed, the
# cheapest way to ask (Microsoft Learn, "SAM-Account-Type attribute",
# https://learn.microsoft.com/en-us/windows/win32/adschema/a-samaccounttype).
_USERS = "(sAMAccountType=805306368)"
_USER_ATTRIBUTES = ("sAMAccountName", "displayName", "userAccountControl")


class DirectoryError(ProvisionerError):
    """The directory does not hold what the manifests refer to."""


class DomainNotFoundError(DirectoryError):
    """No domain in the forest has the NetBIOS name asked for."""


class GroupNotFoundError(DirectoryError):
    """A group named in the manifests does not exist in the domain."""


@dataclass(frozen=True)
class DomainInfo:
    """``DomainInfo(netbios='NFON', dn='DC=nfon,DC=test', dns_root='nfon.test')``."""

    netbios: str
    dn: str
    dns_root: str


def resolve_domain(conn: LDAPConnection, netbios: str) -> DomainInfo:
    """The domain whose NetBIOS name is ``netbios`` (any case), from its crossRef object.

    Two searches: the RootDSE for configurationNamingContext, then CN=Partitions one level deep.
    """
    config = conn.root_dse(["configurationNamingContext"]).text("configurationNamingContext")
    if not config:
        raise DirectoryError(f"{conn.settings.url} has no configurationNamingContext; is it AD?")
    partitions = f"CN=Partitions,{config}"
    domain_filter = f"(&(objectClass=crossRef)(systemFlags:{_BIT_AND}:={_DOMAIN_CROSSREF})"
    found = conn.search_paged(
        partitions,
        f"{domain_filter}(nETBIOSName={escape_filter_chars(netbios)}))",
        ["nCName", "dnsRoot", "nETBIOSName"],
        scope="level",
    )
    if not found:
        known = conn.search_paged(partitions, f"{domain_filter})", ["nETBIOSName"], scope="level")
        names = sorted(name for entry in known for name in entry.texts("nETBIOSName"))
        raise DomainNotFoundError(
            f"no domain with NetBIOS name {netbios!r} in the forest of {conn.settings.url} "
            f"(it has: {', '.join(names) or 'none'}); fix the DOMAIN part of DOMAIN\\user"
        )
    entry = found[0]
    return DomainInfo(
        netbios=entry.text("nETBIOSName") or netbios,
        dn=entry.text("nCName") or "",
        dns_root=entry.text("dnsRoot") or "",
    )


def lookup_users(
    ldap: LDAPConnection | LDAPPool,
    domain: DomainInfo,
    sams: Iterable[str],
    *,
    batch_size: int = 100,
) -> dict[str, ADUser]:
    """Users keyed by :func:`domain_user_key` of their sAMAccountName; names that match no user
    are simply absent.

    One search per ``batch_size`` names (an OR filter); a pool runs the batches on its
    connections at once. The names are sent as given and the directory decides what matches.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}, not {batch_size}")
    wanted = list({domain_user_key(sam): sam for sam in sams}.values())

    def search(conn: LDAPConnection, batch: list[str]) -> list[ADUser]:
        names = "".join(f"(sAMAccountName={escape_filter_chars(sam)})" for sam in batch)
        # at most one user per name and at most 999 names: within one page, so no paging
        entries = conn.search(domain.dn, f"(&{_USERS}(|{names}))", _USER_ATTRIBUTES)
        return [user for entry in entries if (user := _user(entry, domain)) is not None]

    found = ldap.map(search, list(_batches(wanted, batch_size)))
    return {domain_user_key(user.sam): user for batch in found for user in batch}


def _user(entry: LDAPEntry, domain: DomainInfo) -> ADUser | None:
    sam = entry.text("sAMAccountName")
    if not sam:
        return None  # not readable with our rights: treat it as absent
    return ADUser(
        sam=sam,
        domain=domain.netbios,
        display_name=entry.text("displayName"),
        disabled=bool(int(entry.text("userAccountControl") or 0) & _ACCOUNT_DISABLED),
        dn=entry.dn,
        dn_key=dn_key(entry.dn),
    )


def read_group(conn: LDAPConnection, domain: DomainInfo, name: str) -> ADGroup:
    """The group with sAMAccountName ``name`` and all its direct member DNs (read in ranges)."""
    found = conn.search_paged(
        domain.dn,
        f"(&(objectClass=group)(sAMAccountName={escape_filter_chars(name)}))",
        ["sAMAccountName"],
    )
    if not found:
        raise GroupNotFoundError(f"group {domain.netbios}\\{name} does not exist; create it in AD")
    group = found[0]
    members = conn.read_ranged(group.dn, "member")
    return ADGroup(
        name=group.text("sAMAccountName") or name,
        domain=domain.netbios,
        dn=group.dn,
        members=frozenset(member.decode("utf-8") for member in members),
    )


def nested_members(conn: LDAPConnection, domain: DomainInfo, group_dn: str) -> frozenset[str]:
    """The DN keys of every user in ``group_dn``, directly or through nested groups (one search,
    the directory walks the nesting)."""
    found = conn.search_paged(
        domain.dn, f"(&{_USERS}(memberOf:{_IN_CHAIN}:={escape_filter_chars(group_dn)}))", ["1.1"]
    )
    return frozenset(dn_key(entry.dn) for entry in found)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
