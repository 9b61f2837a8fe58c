"""Small pieces of the command layer: what facts print, what a host reports."""

from __future__ import annotations

from provisioner.commands import without_fingerprints
from provisioner.plan.model import Action, Change
from provisioner.planner import Host
from provisioner.remote.contract import ApplyResponse
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
