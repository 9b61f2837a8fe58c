"""Firewall presets expand to the NFON manual's table, from the topology, deterministically."""

from __future__ import annotations

from pathlib import Path

from provisioner.manifest import load_estate
from provisioner.manifest.expand import client_rules, server_rules
from tests.manifest.estate import SERVER, write_estate

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"


def _table(rules):  # type: ignore[no-untyped-def]
    return [
        (
            r.rule.name,
            r.rule.direction.value,
            r.rule.protocol.value,
            r.rule.local_ports or r.rule.remote_ports,
            r.rule.remote_addresses,
        )
        for r in rules
    ]


def test_server_preset_is_the_manuals_table(tmp_path: Path) -> None:
    server = SERVER.replace("[10.0.2.0/24]", "[10.0.2.0/24, 10.0.3.0/25]")
    estate, errors = load_estate([write_estate(tmp_path, tapi01_yaml=server)])
    assert errors == []
    dcs, dns, clients = ["10.0.0.10"], ["10.0.0.10"], ["10.0.2.0/24", "10.0.3.0/25"]
    assert _table(server_rules(estate, estate.servers["tapi01"])) == [
        ("nfon-tapi-in-rpc-epmap", "in", "tcp", ["135"], clients),
        ("nfon-tapi-in-smb", "in", "tcp", ["445"], clients),
        ("nfon-tapi-in-rpc-dynamic", "in", "tcp", ["49152-65535"], clients),
        ("nfon-tapi-out-ldap-tcp", "out", "tcp", ["389"], dcs),
        ("nfon-tapi-out-ldap-udp", "out", "udp", ["389"], dcs),
        ("nfon-tapi-out-kerberos", "out", "tcp", ["88"], dcs),
        ("nfon-tapi-out-dns-udp", "out", "udp", ["53"], dns),
        ("nfon-tapi-out-dns-tcp", "out", "tcp", ["53"], dns),
        ("nfon-tapi-out-smb-dc", "out", "tcp", ["445"], dcs),
    ]


def test_client_preset_points_at_the_servers_the_clients_use(tmp_path: Path) -> None:
    second = SERVER.replace("tapi01", "tapi02").replace("10.0.1.20", "10.0.1.21")
    clients = "kind: TapiClients\nname: office\nhosts: [ws1]\nservers: [tapi02, tapi01]\n"
    estate, errors = load_estate([write_estate(tmp_path, tapi02_yaml=second, clients_yaml=clients)])
    assert errors == []
    table = _table(client_rules(estate, estate.clients["office"]))
    assert table == [
        ("nfon-tapi-client-out-rpc-epmap", "out", "tcp", ["135"], ["10.0.1.21", "10.0.1.20"]),
        ("nfon-tapi-client-out-smb", "out", "tcp", ["445"], ["10.0.1.21", "10.0.1.20"]),
        (
            "nfon-tapi-client-out-rpc-dynamic",
            "out",
            "tcp",
            ["49152-65535"],
            ["10.0.1.21", "10.0.1.20"],
        ),
    ]


def test_extra_rules_follow_the_presets_and_expansion_is_deterministic() -> None:
    first, errors = load_estate([EXAMPLES / "client-tapi"])
    again, _ = load_estate([EXAMPLES / "client-tapi"])
    assert errors == []
    rules = server_rules(first, first.servers["tapi01"])
    assert rules == server_rules(again, again.servers["tapi01"])
    assert rules[-1].rule.name == "winrm-https-from-admins"
    assert rules[-1].index == 0
    assert [r.rule.local_ports for r in rules[-1:]] == [["5986"]]
