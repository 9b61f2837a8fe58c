"""Both spellings of a rule canonicalise to one form: no perpetual diffs from normalisation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.manifest.models import FirewallRule
from provisioner.remote.contract import FirewallRuleFacts
from provisioner.resources.firewall import (
    canonical_addresses,
    canonical_ports,
    canonical_profiles,
    from_facts,
    from_manifest,
    to_spec,
)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["10.0.3.5-10.0.3.5"], ["10.0.3.5"]),  # x-x is x (ansible PR 22555)
        (["10.0.3.5/255.255.255.255"], ["10.0.3.5"]),
        (["10.0.2.0/255.255.255.0"], ["10.0.2.0/24"]),
        (["10.0.2.0/24", "10.0.2.7"], ["10.0.2.0/24"]),  # contained
        (["10.0.3.0/25", "10.0.3.128/25"], ["10.0.3.0/24"]),  # adjacent halves
        (["10.0.3.5", "10.0.3.6", "10.0.3.7"], ["10.0.3.5-10.0.3.7"]),
        (["*"], ["any"]),
        (["Any"], ["any"]),
        ([], ["any"]),
        (["localsubnet", "10.0.0.1"], ["10.0.0.1", "LocalSubnet"]),
        (["fe80::1", "10.0.0.1"], ["10.0.0.1", "fe80::1"]),
    ],
)
def test_addresses(tokens: list[str], expected: list[str]) -> None:
    assert canonical_addresses(tokens) == expected


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["445", "135"], ["135", "445"]),
        (["135", "135"], ["135"]),
        (["49152-65535", "50000"], ["49152-65535"]),
        (["*"], ["any"]),
        ([], ["any"]),
        (["RPC", "135"], ["135", "RPC"]),
        (["88-88"], ["88"]),
    ],
)
def test_ports(tokens: list[str], expected: list[str]) -> None:
    assert canonical_ports(tokens) == expected


def test_profiles() -> None:
    assert canonical_profiles(0x7FFFFFFF) == ["any"]
    assert canonical_profiles(7) == ["any"]
    assert canonical_profiles(1) == ["domain"]
    assert canonical_profiles(6) == ["private", "public"]
    assert canonical_profiles("any") == ["any"]
    assert canonical_profiles(["public", "domain", "private"]) == ["any"]


def test_manifest_and_host_spelling_agree() -> None:
    rule = FirewallRule.model_validate(
        {
            "name": "r",
            "direction": "in",
            "protocol": "tcp",
            "local_ports": [445, 135],
            "remote_addresses": ["10.0.2.0/24", "10.0.3.5"],
            "description": "x",
        }
    )
    facts = FirewallRuleFacts(
        name="r",
        group="G",
        direction=1,
        action=1,
        protocol=6,
        local_ports="135,445",
        remote_ports="*",
        remote_addresses="10.0.2.0/255.255.255.0,10.0.3.5-10.0.3.5",
        profiles=0x7FFFFFFF,
        enabled=True,
        description="x",
    )
    assert from_manifest(rule) == from_facts(facts)


ADDRESS = st.builds(
    lambda a, b, c, prefix: f"10.{a}.{b}.{c}" if prefix is None else f"10.{a}.{b}.0/{prefix}",
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 255),
    st.none() | st.integers(22, 30),
)


@given(
    addresses=st.lists(ADDRESS, min_size=1, max_size=6),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=5),
    direction=st.sampled_from(["in", "out"]),
    protocol=st.sampled_from(["tcp", "udp"]),
    profiles=st.sampled_from(["any", ["domain"], ["private", "public"]]),
)
def test_written_rule_reads_back_equal(addresses, ports, direction, protocol, profiles) -> None:  # type: ignore[no-untyped-def]
    """What we write in the host's spelling canonicalises back to exactly what we wanted."""
    networks = [a if "/" not in a else _network(a) for a in addresses]
    rule = FirewallRule.model_validate(
        {
            "name": "r",
            "direction": direction,
            "protocol": protocol,
            "local_ports": ports,
            "remote_addresses": networks,
            "profiles": profiles,
        }
    )
    wanted = from_manifest(rule)
    spec = to_spec("r", wanted, "G")
    read_back = FirewallRuleFacts(**spec.model_dump())
    assert from_facts(read_back) == wanted


def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


# --- Windows' own spellings -------------------------------------------------------------------
# What a host may hand back is what INetFwRule documents, not only what we wrote:
# RemoteAddresses (learn.microsoft.com/windows/win32/api/netfw/nf-netfw-inetfwrule-get_remoteaddresses):
# comma-delimited tokens; "*" alone for any; the keywords Defaultgateway, DHCP, DNS, WINS and
# LocalSubnet (not case-sensitive); a subnet by mask or by prefix length, a bare address meaning
# mask 255.255.255.255; IPv6 addresses; IPv4 and IPv6 ranges "first-last".
# LocalPorts (learn.microsoft.com/windows/win32/api/netfw/nf-netfw-inetfwrule-get_localports):
# comma-delimited ports and ranges "low-high", "*" for any, and keywords such as RPC and RPC-EPMap.

KEYWORDS = ["Defaultgateway", "DHCP", "DNS", "WINS", "LocalSubnet"]


@st.composite
def address_intent(draw: st.DrawFn) -> tuple[str, list[str]]:
    """One set of addresses: (our own spelling, the spellings Windows may use for it)."""
    kind = draw(st.sampled_from(["v4net", "v4host", "v4range", "v6net", "v6host", "v6range", "kw"]))
    if kind == "kw":
        word = draw(st.sampled_from(KEYWORDS))
        return word, [word, word.lower(), word.upper()]
    if kind.startswith("v4"):
        base = ipaddress.IPv4Address(draw(st.integers(0x0A000000, 0x0A03FFFF)))
    else:
        base = ipaddress.IPv6Address(draw(st.integers(0xFE80 << 112, (0xFE80 << 112) + 0xFFFFF)))
    if kind.endswith("net"):
        prefix = draw(st.integers(16, 30) if kind == "v4net" else st.integers(100, 126))
        net = ipaddress.ip_network(f"{base}/{prefix}", strict=False)
        spellings = [str(net)]
        if net.version == 4:
            spellings.append(f"{net.network_address}/{net.netmask}")  # 10.0.2.0/255.255.255.0
        return str(net), spellings
    if kind.endswith("host"):
        full = "255.255.255.255" if base.version == 4 else None
        spellings = [str(base), f"{base}-{base}", f"{base}/{base.max_prefixlen}"]
        return str(base), spellings + ([f"{base}/{full}"] if full else [])
    last = base + draw(st.integers(1, 300))
    return f"{base}-{last}", [f"{base}-{last}"]


@given(
    intents=st.lists(address_intent(), min_size=1, max_size=6),
    picks=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    separator=st.sampled_from([",", ", "]),
)
def test_windows_address_spellings_read_as_ours(
    intents: list[tuple[str, list[str]]], picks: list[int], separator: str
) -> None:
    ours = [own for own, _ in intents]
    theirs = separator.join(
        spellings[pick % len(spellings)]
        for (_, spellings), pick in zip(intents, picks, strict=False)
    )
    assert canonical_addresses(theirs.split(",")) == canonical_addresses(ours)
    assert canonical_addresses([*theirs.split(","), "*"]) == ["any"]


@given(
    ports=st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 500)), min_size=1, max_size=5),
    keywords=st.lists(st.sampled_from(["RPC", "RPC-EPMap"]), max_size=2),
    separator=st.sampled_from([",", ", "]),
    degenerate=st.booleans(),
)
def test_windows_port_spellings_read_as_ours(
    ports: list[tuple[int, int]], keywords: list[str], separator: str, degenerate: bool
) -> None:
    spans = [(low, min(low + width, 65535)) for low, width in ports]
    ours = [str(low) if low == high else f"{low}-{high}" for low, high in spans] + keywords
    theirs = separator.join(
        [f"{low}-{high}" if low != high or degenerate else str(low) for low, high in spans]
        + keywords
    )
    assert canonical_ports(theirs.split(",")) == canonical_ports(ours)
    covered = set()
    for token in canonical_ports(ours):
        if token[0].isdigit():
            low_text, _, high_text = token.partition("-")
            covered |= set(range(int(low_text), int(high_text or low_text) + 1))
    assert covered == {p for low, high in spans for p in range(low, high + 1)}


def test_a_windows_rule_and_its_manifest_agree() -> None:
    """A rule as the host lists it, with spaces, masks and x-x, against the manifest's rule."""
    rule = FirewallRule.model_validate(
        {
            "name": "r",
            "direction": "in",
            "protocol": "tcp",
            "local_ports": [135, "49152-65535", 445],
            "remote_addresses": ["10.0.2.0/24", "10.0.3.5", "fe80::/64", "10.0.4.1-10.0.4.9"],
        }
    )
    facts = FirewallRuleFacts(
        name="r",
        group="G",
        direction=1,
        action=1,
        protocol=6,
        local_ports="445, 135,49152-65535",
        remote_addresses="fe80::/64, 10.0.4.1-10.0.4.9,10.0.2.0/255.255.255.0, 10.0.3.5/255.255.255.255",
        profiles=0x7FFFFFFF,
        enabled=True,
    )
    assert from_manifest(rule) == from_facts(facts)
