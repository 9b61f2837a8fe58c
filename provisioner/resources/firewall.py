"""Firewall rules in the managed group, compared in one canonical form.

Windows spells a rule one way (``HNetCfg.FwPolicy2``: protocol numbers, ``10.0.2.0/255.255.255.0``,
a profile bit mask), a manifest another (``tcp``, ``10.0.2.0/24``, ``any``). Both sides are turned
into the same canonical attributes before comparing, or every plan would show an endless
"update"::

    {"direction": "in", "action": "allow", "protocol": "tcp", "local_ports": ["135"],
     "remote_ports": ["any"], "remote_addresses": ["10.0.2.0/24"], "profiles": ["any"],
     "enabled": True, "description": "NFON Multiline TAPI: RPC endpoint mapper"}
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from provisioner.manifest.expand import client_rules, server_rules
from provisioner.manifest.models import FirewallRule
from provisioner.plan.model import Action, Change
from provisioner.remote.contract import (
    FirewallRemove,
    FirewallRuleFacts,
    FirewallRuleSpec,
    FirewallUpsert,
    Operation,
)
from provisioner.resources.base import PRUNE, HostContext, KindSpec, Removal, Resource

KIND = "firewall_rule"

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "icmpv4": 1, "icmpv6": 58, "any": 256}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}
PROFILE_BITS = {"domain": 1, "private": 2, "public": 4}
ALL_PROFILES = 0x7FFFFFFF  # NET_FW_PROFILE2_ALL
DIRECTIONS = {"in": 1, "out": 2}
ACTIONS = {"block": 0, "allow": 1}
_ADDRESS_KEYWORDS = {
    "localsubnet": "LocalSubnet",
    "dns": "DNS",
    "dhcp": "DHCP",
    "wins": "WINS",
    "defaultgateway": "DefaultGateway",
}


def canonical_ports(tokens: Iterable[str]) -> list[str]:
    """``["445", "135", "135"]`` → ``["135", "445"]``; nothing or ``*`` → ``["any"]``."""
    ranges: list[tuple[int, int]] = []
    keywords: set[str] = set()
    for token in tokens:
        token = token.strip()
        if not token or token == "*" or token.lower() == "any":
            return ["any"]
        if token.replace("-", "").isdigit():
            low, _, high = token.partition("-")
            ranges.append((int(low), int(high or low)))
        else:
            keywords.add(token)
    if not ranges and not keywords:
        return ["any"]
    merged = _merge(ranges)
    return [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged] + sorted(keywords)


def canonical_addresses(tokens: Iterable[str]) -> list[str]:
    """Addresses as Windows or a manifest writes them, in one form: merged, sorted, CIDR if exact.

    ``["10.0.2.0/255.255.255.0", "10.0.3.5-10.0.3.5"]`` → ``["10.0.2.0/24", "10.0.3.5"]``.
    """
    spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    keywords: set[str] = set()
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        if token in ("*", "any") or token.lower() == "any":
            return ["any"]
        if token.lower() in _ADDRESS_KEYWORDS:
            keywords.add(_ADDRESS_KEYWORDS[token.lower()])
            continue
        if "-" in token:
            low_text, _, high_text = token.partition("-")
            first, last = ipaddress.ip_address(low_text), ipaddress.ip_address(high_text)
            spans[first.version].append((int(first), int(last)))
        else:
            network = ipaddress.ip_network(token, strict=False)
            spans[network.version].append(
                (int(network.network_address), int(network.broadcast_address))
            )
    result: list[str] = []
    for version in (4, 6):
        for low, high in _merge(spans[version]):
            result.append(_render_span(version, low, high))
    return (result + sorted(keywords)) or ["any"]


def _render_span(version: int, low: int, high: int) -> str:
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    if low == high:
        return str(make(low))
    networks = list(ipaddress.summarize_address_range(make(low), make(high)))
    if len(networks) == 1:
        return str(networks[0])
    return f"{make(low)}-{make(high)}"


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def canonical_profiles(value: int | Iterable[str] | str) -> list[str]:
    if isinstance(value, int):
        bits = value & 0x7
        if value == ALL_PROFILES or bits == 0x7 or value == 0:
            return ["any"]
        return [name for name, bit in PROFILE_BITS.items() if bits & bit]
    if isinstance(value, str):
        return ["any"] if value == "any" else [value]
    names = sorted({str(v) for v in value})
    return ["any"] if set(names) >= set(PROFILE_BITS) else names


def from_manifest(rule: FirewallRule) -> dict[str, object]:
    return {
        "direction": rule.direction.value,
        "action": rule.action,
        "protocol": rule.protocol.value,
        "local_ports": canonical_ports(rule.local_ports),
        "remote_ports": canonical_ports(rule.remote_ports),
        "remote_addresses": canonical_addresses(rule.remote_addresses),
        "profiles": canonical_profiles(
            rule.profiles if isinstance(rule.profiles, str) else [p.value for p in rule.profiles]
        ),
        "enabled": rule.enabled,
        "description": rule.description,
    }


def from_facts(rule: FirewallRuleFacts) -> dict[str, object]:
    return {
        "direction": "in" if rule.direction == 1 else "out",
        "action": "allow" if rule.action == 1 else "block",
        "protocol": PROTOCOL_NAMES.get(rule.protocol, str(rule.protocol)),
        "local_ports": canonical_ports(rule.local_ports.split(",")),
        "remote_ports": canonical_ports(rule.remote_ports.split(",")),
        "remote_addresses": canonical_addresses(rule.remote_addresses.split(",")),
        "profiles": canonical_profiles(rule.profiles),
        "enabled": rule.enabled,
        "description": rule.description,
    }


def _address(ctx: HostContext, name: str) -> str:
    scope = "server" if ctx.role == "server" else "client"
    return f"{scope}/{ctx.name}/{KIND}/{name}"


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is not None:
        rules = server_rules(ctx.estate, ctx.server)
    elif ctx.clients is not None:
        rules = client_rules(ctx.estate, ctx.clients)
    else:
        return []
    return [
        Resource(_address(ctx, r.rule.name), KIND, ctx.name, from_manifest(r.rule)) for r in rules
    ]


def live(ctx: HostContext) -> list[Resource]:
    if ctx.facts is None:
        return []
    group = ctx.profile.firewall_group.lower()
    return [
        Resource(
            _address(ctx, rule.name),
            KIND,
            ctx.name,
            from_facts(rule),
            detail=f"{rule.name} ({'in' if rule.direction == 1 else 'out'})",
        )
        for rule in ctx.facts.firewall_rules
        if rule.group.lower() == group
    ]


def prune(ctx: HostContext, resource: Resource) -> Removal | None:
    """Rules of the managed group that no manifest names go when the host's firewall says so."""
    firewall = ctx.server.firewall if ctx.server else ctx.clients.firewall if ctx.clients else None
    return PRUNE if firewall and firewall.prune else None


SPECS = (KindSpec(KIND, phase=20, prune=prune),)


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    name = change.address.rsplit("/", 1)[1]
    if change.action is Action.DELETE:
        return [FirewallRemove(name=name)]
    after = change.after or {}
    return [FirewallUpsert(rule=to_spec(name, after, ctx.profile.firewall_group))]


def to_spec(name: str, attributes: Mapping[str, Any], group: str) -> FirewallRuleSpec:
    """Canonical attributes back into the host's spelling."""

    def joined(values: object) -> str:
        items = list(values) if isinstance(values, list) else []
        return "*" if items in ([], ["any"]) else ",".join(str(v) for v in items)

    profiles = attributes["profiles"]
    mask = ALL_PROFILES if profiles == ["any"] else sum(PROFILE_BITS[p] for p in profiles)
    return FirewallRuleSpec(
        name=name,
        display_name=name,
        description=str(attributes["description"]),
        group=group,
        direction=DIRECTIONS[str(attributes["direction"])],
        action=ACTIONS[str(attributes["action"])],
        protocol=PROTOCOL_NUMBERS[str(attributes["protocol"])],
        local_ports=joined(attributes["local_ports"]),
        remote_ports=joined(attributes["remote_ports"]),
        remote_addresses=joined(attributes["remote_addresses"]),
        profiles=mask,
        enabled=bool(attributes["enabled"]),
    )
