"""Both spellings of a rule canonicalise to one form: no perpetual diffs from normalisation."""

from __future__ import annotations

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
    import ipaddress

    return str(ipaddress.ip_network(text, strict=False))
