"""What the provisioner needs to know from Active Directory, read in as few searches as possible.

A manifest names users as ``DOMAIN\\sam``. :func:`resolve_domain` turns ``NFON`` into the domain's
DN; :func:`lookup_users` reads all users of a run in one search per batch::

    domain = resolve_domain(conn, "NFON")   # DomainInfo('NFON', 'DC=nfon,DC=test', 'nfon.test')
    users = lookup_users(conn, domain, ["jdoe", "MMuster"], groups=["TAPI-Users"])
    users["mmuster"]
    # ADUser(sam='mmuster', sid='S-1-5-21-1004336348-1177238915-682003330-1104',
    #        display_name='Max Muster', disabled=False, dn='CN=Max Muster,OU=Staff,DC=nfon,DC=test',
    #        member_of=frozenset({'TAPI-Users'}))

Each user carries its objectSid, which a rename does not change (sAMAccountName and DN do).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ldap3.utils.conv import escape_filter_chars

from provisioner.directory.model import ADGroup, ADUser
from provisioner.errors import ProvisionerError
from provisioner.transports.ldap import LDAPConnection, dn_key

# crossRef.systemFlags: FLAG_CR_NTDS_NC (1) | FLAG_CR_NTDS_DOMAIN (2) marks a domain partition.
_DOMAIN_CROSSREF = 3
# AD's MaxPageSize: a batch must fit in one page, or each batch costs an extra page request.
MAX_BATCH_SIZE = 999
# userAccountControl ADS_UF_ACCOUNTDISABLE.
_ACCOUNT_DISABLED = 0x2
# The bitwise-AND matching rule (LDAP_MATCHING_RULE_BIT_AND).
_BIT_AND = "1.2.840.113556.1.4.803"


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


def sid_to_string(raw: bytes) -> str:
    """Render a binary objectSid (MS-DTYP 2.4.2.2) in the ``S-1-5-21-...`` form.

    The layout, all that is needed to read it::

        byte 0       Revision, always 1
        byte 1       SubAuthorityCount N, at most 15
        bytes 2-7    IdentifierAuthority, a 48-bit big-endian number (5 = NT AUTHORITY)
        bytes 8-...  N SubAuthorities, each a 32-bit little-endian number

    >>> sid_to_string(bytes.fromhex("010500000000000515000000a1b2c3d4e5f6a7b8c9d0e1f2f4010000"))
    'S-1-5-21-3569595041-3098015461-4074885321-500'
    """
    if len(raw) < 8 or raw[0] != 1:
        raise ValueError(f"not a SID (revision {raw[:1].hex() or 'missing'}): {raw.hex()}")
    count = raw[1]
    if count > 15 or len(raw) != 8 + 4 * count:
        raise ValueError(f"not a SID ({count} sub-authorities in {len(raw)} bytes): {raw.hex()}")
    authority = int.from_bytes(raw[2:8], "big")
    # MS-DTYP writes an authority of 2**32 or more in hex.
    authority_text = str(authority) if authority < 2**32 else f"0x{authority:012X}"
    subs = struct.unpack(f"<{count}I", raw[8:])
    return "-".join(["S", str(raw[0]), authority_text, *map(str, subs)])


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
        netbios=entry.text("nETBIOSName") or netbios.upper(),
        dn=entry.text("nCName") or "",
        dns_root=entry.text("dnsRoot") or "",
    )


def lookup_users(
    conn: LDAPConnection,
    domain: DomainInfo,
    sams: Iterable[str],
    *,
    groups: Iterable[str] = (),
    batch_size: int = 300,
) -> dict[str, ADUser]:
    """Users by lower-case sAMAccountName; names that match no user are simply absent.

    One paged search per ``batch_size`` names (an OR filter), plus one search for ``groups``
    when given. ``groups`` are group sAMAccountNames or DNs; ``ADUser.member_of`` holds those
    (as written here) that the user is a direct member of. Nested groups are not expanded.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}, not {batch_size}")
    wanted = list(dict.fromkeys(sam.lower() for sam in sams))
    if not wanted:
        return {}
    group_dns = _group_dns(conn, domain, groups)
    attributes = ["sAMAccountName", "objectSid", "displayName", "userAccountControl"]
    if group_dns:
        attributes.append("memberOf")
    users: dict[str, ADUser] = {}
    for batch in _batches(wanted, batch_size):
        names = "".join(f"(sAMAccountName={escape_filter_chars(sam)})" for sam in batch)
        entries = conn.search_paged(
            domain.dn,
            f"(&(objectCategory=person)(objectClass=user)(|{names}))",
            attributes,
            page_size=batch_size + 1,  # a full page makes the server send a cookie: one more ask
        )
        for entry in entries:
            sam = entry.text("sAMAccountName") or ""
            raw_sid = entry.binary("objectSid")
            if not sam or raw_sid is None:
                continue  # not readable with our rights: treat it as absent
            member_of = {dn_key(dn) for dn in entry.texts("memberOf")}
            users[sam.lower()] = ADUser(
                sam=sam,
                sid=sid_to_string(raw_sid),
                display_name=entry.text("displayName"),
                disabled=bool(int(entry.text("userAccountControl") or 0) & _ACCOUNT_DISABLED),
                dn=entry.dn,
                member_of=frozenset(name for name, dn in group_dns.items() if dn in member_of),
            )
    return users


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
        dn=group.dn,
        members=frozenset(member.decode("utf-8") for member in members),
    )


def _group_dns(conn: LDAPConnection, domain: DomainInfo, groups: Iterable[str]) -> dict[str, str]:
    """Map each requested group (name or DN, as written) to its DN key, in one search."""
    requested = list(dict.fromkeys(groups))
    by_dn = {group: dn_key(group) for group in requested if "=" in group}
    names = [group for group in requested if "=" not in group]
    if not names:
        return by_dn
    terms = "".join(f"(sAMAccountName={escape_filter_chars(name)})" for name in names)
    found = conn.search_paged(domain.dn, f"(&(objectClass=group)(|{terms}))", ["sAMAccountName"])
    dns = {(entry.text("sAMAccountName") or "").lower(): dn_key(entry.dn) for entry in found}
    missing = [name for name in names if name.lower() not in dns]
    if missing:
        raise GroupNotFoundError(
            f"group(s) {', '.join(missing)} do not exist in {domain.netbios}; "
            "create them in AD or fix the manifest"
        )
    return {**by_dn, **{name: dns[name.lower()] for name in names}}


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
