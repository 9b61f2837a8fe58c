"""Expansion: firewall presets become the concrete rules of the NFON manual.

NFON's Multiline TAPI manual (its firewall rule tables for the Windows client and the TAPI
server) lists the rules a TAPI server and its clients need. A preset turns
that table into rules from the topology: the server's client subnets, the Site's domain
controllers and DNS servers, the addresses of the servers a client uses. For a server with
``client_subnets: [10.0.2.0/24]`` the preset ``nfon-tapi-server`` yields, among others::

    FirewallRule(name="nfon-tapi-in-rpc-epmap", direction="in", protocol="tcp",
                 local_ports=["135"], remote_addresses=["10.0.2.0/24"], ...)

Expansion is pure and deterministic: the same manifests always give the same rules, in the same
order, under the same names. Those names are what a plan diffs by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.manifest.models import (
    Direction,
    FirewallPreset,
    FirewallRule,
    Protocol,
    TapiClients,
    TapiServer,
)
from provisioner.manifest.validate import Estate


@dataclass(frozen=True)
class _PresetRule:
    suffix: str
    direction: Direction
    protocol: Protocol
    port: str
    peer: str  # which topology list gives the remote addresses
    purpose: str


_SERVER_PRESET = (
    _PresetRule(
        "in-rpc-epmap", Direction.inbound, Protocol.tcp, "135", "clients", "RPC endpoint mapper"
    ),
    _PresetRule("in-smb", Direction.inbound, Protocol.tcp, "445", "clients", "SMB, named pipes"),
    _PresetRule(
        "in-rpc-dynamic",
        Direction.inbound,
        Protocol.tcp,
        "49152-65535",
        "clients",
        "RPC dynamic ports",
    ),
    _PresetRule("out-ldap-tcp", Direction.outbound, Protocol.tcp, "389", "dcs", "LDAP"),
    _PresetRule("out-ldap-udp", Direction.outbound, Protocol.udp, "389", "dcs", "LDAP discovery"),
    _PresetRule("out-kerberos", Direction.outbound, Protocol.tcp, "88", "dcs", "Kerberos"),
    _PresetRule("out-dns-udp", Direction.outbound, Protocol.udp, "53", "dns", "name resolution"),
    _PresetRule("out-dns-tcp", Direction.outbound, Protocol.tcp, "53", "dns", "name resolution"),
    _PresetRule("out-smb-dc", Direction.outbound, Protocol.tcp, "445", "dcs", "SMB to the domain"),
)

_CLIENT_PRESET = (
    _PresetRule(
        "out-rpc-epmap", Direction.outbound, Protocol.tcp, "135", "servers", "RPC endpoint mapper"
    ),
    _PresetRule("out-smb", Direction.outbound, Protocol.tcp, "445", "servers", "SMB, named pipes"),
    _PresetRule(
        "out-rpc-dynamic",
        Direction.outbound,
        Protocol.tcp,
        "49152-65535",
        "servers",
        "RPC dynamic ports",
    ),
)

PRESET_PREFIX = {FirewallPreset.server: "nfon-tapi-", FirewallPreset.client: "nfon-tapi-client-"}
PRESET_RULES = {FirewallPreset.server: _SERVER_PRESET, FirewallPreset.client: _CLIENT_PRESET}


@dataclass(frozen=True)
class ExpandedRule:
    """A concrete rule and where it came from: a preset, or ``rules[i]`` of the manifest."""

    rule: FirewallRule
    preset: FirewallPreset | None = None
    index: int | None = None


def server_rules(estate: Estate, server: TapiServer) -> list[ExpandedRule]:
    """The rules a server's firewall section stands for, presets first, in a fixed order."""
    site = estate.site_of(server)
    peers = {
        "clients": [str(n) for n in server.client_subnets],
        "dcs": [str(a) for a in site.domain_controllers] if site else [],
        "dns": [str(a) for a in site.dns_servers] if site else [],
    }
    return _expand(server.firewall.presets, server.firewall.rules, peers)


def client_rules(estate: Estate, clients: TapiClients) -> list[ExpandedRule]:
    """The rules for every host of a TapiClients group; ``servers`` are the servers it uses."""
    addresses = [str(estate.servers[s].address) for s in clients.servers if s in estate.servers]
    return _expand(clients.firewall.presets, clients.firewall.rules, {"servers": addresses})


def _expand(
    presets: Sequence[FirewallPreset], rules: Sequence[FirewallRule], peers: dict[str, list[str]]
) -> list[ExpandedRule]:
    expanded: list[ExpandedRule] = []
    for preset in presets:
        for spec in PRESET_RULES[preset]:
            addresses = peers.get(spec.peer, [])
            if not addresses:
                continue  # rules.py reports the missing topology; an empty rule would open "any"
            rule = FirewallRule(
                name=PRESET_PREFIX[preset] + spec.suffix,
                direction=spec.direction,
                protocol=spec.protocol,
                local_ports=[spec.port] if spec.direction is Direction.inbound else [],
                remote_ports=[spec.port] if spec.direction is Direction.outbound else [],
                remote_addresses=sorted(set(addresses), key=addresses.index),
                description=f"NFON Multiline TAPI: {spec.purpose}",
            )
            expanded.append(ExpandedRule(rule, preset=preset))
    expanded.extend(ExpandedRule(rule, index=i) for i, rule in enumerate(rules))
    return expanded


def preset_peer_needs(preset: FirewallPreset) -> set[str]:
    return {spec.peer for spec in PRESET_RULES[preset]}
