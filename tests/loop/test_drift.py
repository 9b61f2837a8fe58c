"""Drift: what moved behind the tool's back, read-only, without noise.

A one-line summary first, grouped by host and tenant, each difference once, no restarts, only
what an apply would change (plus unmanaged objects in the managed scope); a clean estate and an
estate that merely spells things differently both exit 0.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from provisioner.lab.tamper import tamper
from provisioner.manifest.models import domain_user_key
from provisioner.resources import line_assignment
from tests.support.lab import EXAMPLES, LabEstate, LabFor

ALL_PROFILES = 0x7FFFFFFF


def two_line_user(estate: LabEstate, tenant: str) -> str:
    model = estate.model()
    return next(a.user for a in model.tenants[tenant].assignments if len(a.lines) >= 2)


def change_behind_the_tools_back(estate: LabEstate) -> dict[str, str]:
    """client-tapi, applied, then changed by hand; returns address → expected category."""
    tapi01 = estate.windows("tapi01")
    user = two_line_user(estate, "k6732")
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    with tapi01.lock:
        state = tapi01.state
        rules = {rule.name: rule for rule in state.firewall_rules}
        rules["nfon-tapi-in-rpc-epmap"].enabled = False
        state.firewall_rules.append(
            replace(rules["nfon-tapi-in-rpc-epmap"], name="rogue-rdp", local_ports="3389")
        )
        for settings in state.tsp_settings.values():
            settings.number_format = "international"
        holder = state.tsec_users[domain_user_key(user)]
        holder.lines = holder.lines[:1]
    with estate.windows("ws-0102").lock:
        estate.windows("ws-0102").state.tapi_client.connection_oriented = True
    return {
        "server/tapi01/firewall_rule/nfon-tapi-in-rpc-epmap": "changed",
        "server/tapi01/firewall_rule/nfon-tapi-in-smb": "missing",
        "server/tapi01/firewall_rule/rogue-rdp": "unmanaged",
        "tenant/k6732/tsp_instance": "changed",
        line_assignment.address("k6732", user): "changed",
        "client/ws-0102/tapi_client": "changed",
    }


def test_a_clean_estate_has_no_drift_in_any_format(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    for output_format in ("text", "markdown", "html"):
        result = estate.drift("--format", output_format)
        assert result.code == 0, result.output
        assert "No drift" in result.out
    document = estate.drift("--format", "json")
    assert document.code == 0, document.output
    assert document.json()["items"] == [] and document.json()["has_drift"] is False


def test_drift_lists_each_difference_once_grouped_and_without_noise(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    expected = change_behind_the_tools_back(estate)
    estate.reset_counters()

    document = estate.drift("--format", "json")
    assert document.code == 2, document.output
    items = document.json()["items"]
    assert {i["address"]: i["category"] for i in items} == expected
    assert len(items) == len(expected)  # each difference once
    assert document.json()["counts"] == {"changed": 4, "missing": 1, "unmanaged": 1}

    text = estate.drift()
    assert text.code == 2
    lines = text.out.splitlines()
    assert lines[0].startswith("Drift: 4 changed, 1 missing, 1 unmanaged, on 2 hosts and 1 tenant")
    assert "restart" not in text.out.lower()
    # each item on one line of its own, and the items of one host or tenant together
    item_lines = [n for n, line in enumerate(lines) for a in expected if f" {a} " in f"{line} "]
    assert len(item_lines) == len(expected)
    group_of = {i["address"]: (i["host"], i["tenant"]) for i in items}
    order = [group_of[a] for n in item_lines for a in expected if f" {a} " in f"{lines[n]} "]
    runs = [group for k, group in enumerate(order) if k == 0 or order[k - 1] != group]
    assert len(runs) == len(set(order)), f"a group is split: {order}"

    for output_format in ("markdown", "html"):
        report = estate.drift("--format", output_format)
        assert report.code == 2
        assert "4 changed, 1 missing, 1 unmanaged" in report.out
        for address in expected:
            assert address.replace("\\", "\\\\") in report.out or address in report.out

    # nothing an apply would not change: drift = the plan's changes without restarts + unmanaged
    plan = estate.plan_json()
    planned = {c["address"] for c in plan["resource_changes"] if c["type"] != "restart"}
    assert planned | {u["address"] for u in plan["unmanaged"]} == set(expected)

    # read-only: one gather per host and drift, no batch anywhere
    sent = [p for h in estate.lab.hosts.values() for p in h.server.counters.stdin_payloads]
    assert not any(b'"steps"' in payload for payload in sent)

    assert estate.apply().code == 0
    after = estate.drift("--format", "json")
    assert after.code == 2  # the unmanaged rule stays: prune is off
    assert [i["address"] for i in after.json()["items"]] == [
        "server/tapi01/firewall_rule/rogue-rdp"
    ]
    with estate.windows("tapi01").lock:
        state = estate.windows("tapi01").state
        state.firewall_rules = [r for r in state.firewall_rules if r.name != "rogue-rdp"]
    assert estate.drift().code == 0


def respelled_addresses(text: str) -> str:
    """The same addresses as Windows might also list them: networks halved, order reversed."""
    spelled = []
    for part in text.split(","):
        address, _, mask = part.partition("/")
        network = ipaddress.ip_network(f"{address}/{mask or '32'}")
        if network.prefixlen == 32:
            spelled.append(f"{address}-{address}")
            continue
        for half in network.subnets(prefixlen_diff=1):
            spelled.append(f"{half.network_address}/{half.netmask}")
    return ",".join(reversed(spelled))


def test_the_same_settings_in_another_spelling_are_not_drift(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    tapi01 = estate.windows("tapi01")
    with tapi01.lock:
        state = tapi01.state
        for rule in state.firewall_rules:
            rule.remote_addresses = respelled_addresses(rule.remote_addresses)
            rule.profiles = 7 if rule.profiles == ALL_PROFILES else rule.profiles
            if rule.local_ports.isdigit():
                rule.local_ports = f"{rule.local_ports}-{rule.local_ports}"
        state.telephony_administrators = [a.lower() for a in state.telephony_administrators]
        engine = next(s for s in state.services.values() if s.name == "NFONCTIEngine")
        assert engine.account == "LocalSystem"
        engine.account = "NT AUTHORITY\\SYSTEM"
        for location in state.locations:
            location.name = location.name.upper()
    with estate.windows("ws-0101").lock:
        client = estate.windows("ws-0101").state.tapi_client
        client.servers = [s.upper() for s in client.servers]
    result = estate.drift()
    assert result.code == 0, result.output
    assert estate.plan().code == 0


def test_drift_takes_targets_like_plan(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    expected = change_behind_the_tools_back(estate)

    def drifted(*selectors: str) -> dict[str, str]:
        args = [a for s in selectors for a in ("--target", s)]
        result = estate.drift("--format", "json", *args)
        assert result.code == 2, result.output
        return {i["address"]: i["category"] for i in result.json()["items"]}

    on_tapi01 = {a: c for a, c in expected.items() if not a.startswith("client/")}
    assert drifted("server=tapi01") == on_tapi01  # the unmanaged rule on tapi01 included
    assert drifted("host=ws-0102") == {"client/ws-0102/tapi_client": "changed"}
    assert drifted("server/tapi01/firewall_rule/*") == {
        a: c for a, c in expected.items() if "/firewall_rule/" in a
    }
    assert drifted("tenant=k6732", "host=ws-0102") == {
        a: c for a, c in expected.items() if a.startswith(("tenant/", "client/"))
    }
    assert estate.drift("--target", "server=tapi01", "--format", "json").json()["counts"] == {
        "changed": 3,
        "missing": 1,
        "unmanaged": 1,
    }

    nothing = estate.drift("--target", "server=nosuch")
    assert nothing.code == 1
    assert "--target 'server=nosuch' matches nothing" in nothing.err
    clean = estate.drift("--target", "host=ws-0101")
    assert clean.code == 0, clean.output
