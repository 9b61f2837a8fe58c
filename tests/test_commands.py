"""Small pieces of the command layer: what facts print, what a host reports."""

from __future__ import annotations

from provisioner.commands import describe_facts, without_fingerprints
from provisioner.lab.windows_host import WindowsHost
from provisioner.plan.model import Action, Change
from provisioner.planner import Host
from provisioner.remote.contract import ApplyResponse, GatherRequest
from provisioner.runner import host_result


def test_facts_never_print_a_fingerprint() -> None:
    facts = {
        "telephony": {"account_password": {"salt": "ab", "hmac": "cd"}, "x": [1]},
        "tsp_instances": [{"settings": {"password": {"salt": "ef", "hmac": "01"}}}],
    }
    assert without_fingerprints(facts) == {
        "telephony": {"account_password": "(set)", "x": [1]},
        "tsp_instances": [{"settings": {"password": "(set)"}}],
    }


def test_facts_text_shows_what_a_preflight_reads() -> None:
    host = WindowsHost.fresh("TAPI01")
    host.state.system.pending_reboot = ["Windows Update"]
    request = GatherRequest(role="server", firewall_group="G", verpatch_path="C:\\vp.exe")
    text = describe_facts(host.gather(request))
    assert "Windows 10.0.17763 (Windows Server 2019 Standard), PowerShell 5.1.17763.1 " in text
    assert "FullLanguage, elevated, 40960 MB free, pending reboot: Windows Update" in text
    assert "tools: tsecimp present, tcmsetup present, verpatch MISSING" in text
    assert "as NT AUTHORITY\\NetworkService, server mode off" in text


def change(address: str, tenant: str | None, host: str = "h") -> Change:
    return Change(
        address=address,
        action=Action.UPDATE,
        kind="tsp_instance",
        host=host,
        tenant=tenant,
        id=address,
    )


def test_a_step_the_host_did_not_report_is_unknown_not_done() -> None:
    planned = change("a", None)
    result = host_result(
        [planned],
        ApplyResponse(status="ok", results=[]),
        {"a.0": [planned]},
        Host("server/h", "h", "server"),
    )
    assert [r.status for r in result.changes] == ["unknown"]
