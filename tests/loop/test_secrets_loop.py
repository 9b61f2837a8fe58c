"""Secrets never show, and a changed secret is seen without being read back.

Every output of a full run (plans in every format, apply, drift in every format, saved plans,
``render tsecimp``, ``facts``, the journal, log records, error messages) and everything the
simulated hosts received (command lines, stdin, their state) is searched for every secret value
the lab's inventory holds, in UTF-8 and UTF-16LE, plain and in base64.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from provisioner.lab.tamper import tamper
from provisioner.secrets import REDACTED
from tests.support.lab import EXAMPLES, LabEstate, LabFor, secret_forms, secret_hits


def simulator_records(estate: LabEstate) -> dict[str, list[str | bytes]]:
    """What each simulated host received and keeps: command lines, stdin, its state."""
    places: dict[str, list[str | bytes]] = {}
    for name, host in estate.lab.hosts.items():
        recorded: list[str | bytes] = []
        for command in host.windows.record:
            recorded += [command.command, *command.arguments, command.stdin]
        places[f"{name}: commands the host ran"] = recorded
        places[f"{name}: WinRM command lines"] = list(host.server.counters.command_lines)
        places[f"{name}: WinRM stdin"] = list(host.server.counters.stdin_payloads)
        places[f"{name}: host state"] = [host.windows.state.to_json()]
    return places


def tool_outputs(
    estate: LabEstate, caplog: pytest.LogCaptureFixture
) -> dict[str, list[str | bytes]]:
    places: dict[str, list[str | bytes]] = {
        f"output of provisioner {' '.join(r.args[:1] + r.args[2:])}": [r.output]
        for r in estate.transcript
    }
    places |= {f"file {name}": [data] for name, data in estate.written_files().items()}
    places["log records"] = [caplog.text] + [
        str(record.args) for record in caplog.records if record.args
    ]
    return places


def test_secret_forms_find_a_value_however_it_is_encoded() -> None:
    import base64

    value = "Kx9-s3cr3t-Pa55"
    for prefix in (b"", b"a", b"ab"):
        for encoded in (value.encode(), value.encode("utf-16-le")):
            blob = b"<x>" + base64.b64encode(prefix + encoded + b"tail") + b"</x>"
            assert secret_hits({"V": value}, {"blob": blob}) == ["V in blob"]
    assert secret_hits({"V": value}, {"text": f"say {value}!"}) == ["V in text"]
    assert secret_hits({"V": value}, {"text": "Kx9-s3cr3t"}) == []
    assert all(len(form) >= 8 for form in secret_forms(value))


@pytest.mark.parametrize("example", ["client-tapi", "multi-tenant"])
def test_no_secret_in_any_output_record_or_file(
    lab_for: LabFor, caplog: pytest.LogCaptureFixture, tmp_path: Path, example: str
) -> None:
    caplog.set_level(logging.DEBUG)
    estate = lab_for(EXAMPLES / example)
    server = next(iter(estate.lab.plan.servers))
    tenant = next(p.stem for p in sorted(estate.manifests.glob("k*.yaml")))
    manifests = estate.manifests

    for output_format in ("text", "json", "markdown"):
        assert estate.plan("--format", output_format).code == 2
    saved = estate.directory / "plan.json"
    assert estate.plan("--out", saved).code == 2
    assert estate.apply().code == 0

    # something to report: drift, including a changed TSP instance (the password's neighbour)
    tamper(estate.lab, server, "remove-firewall-rule", "nfon-tapi-in-smb")
    for record in estate.windows(server).state.tsp_settings.values():
        record.debug_level = 7
    for output_format in ("text", "json", "markdown", "html"):
        assert estate.drift("--format", output_format).code == 2
    assert estate.drift("--format", "html", "--output", estate.directory / "drift.html").code == 2
    assert estate.cli("render", "tsecimp", manifests, "--tenant", tenant).code == 0
    assert estate.cli("render", "tsecimp", manifests, "--server", server).code == 0
    for output_format in ("text", "json"):
        assert (
            estate.cli("facts", manifests, "--server", server, "--format", output_format).code == 0
        )

    # a new CTI password travels (sealed) with the next apply
    accounts = estate.lab.plan.cti_variables  # variable → K-account
    variable = sorted(accounts)[0]
    new_password = "n3w-CTI-pa55word-" + variable.lower()
    assert estate.lab.cti is not None
    estate.lab.cti.set_password(accounts[variable], new_password)
    estate.set_secret(variable, new_password)
    assert estate.plan().code == 2
    assert estate.apply().code == 0

    # errors: a CTI API that refuses the password, a secret that cannot be resolved
    estate.lab.cti.set_password(accounts[variable], "pbx-has-another-one")
    refused = estate.plan()
    assert refused.code == 1 and "refused the login" in refused.output
    estate.lab.cti.set_password(accounts[variable], new_password)
    estate.server(server).faults.reject_credentials = True
    rejected = estate.plan()
    assert rejected.code == 1 and "rejected the credentials" in rejected.output
    estate.server(server).faults.reject_credentials = False
    estate.monkeypatch.delenv("PROVISIONER_INVENTORY")
    unresolved = estate.plan()
    assert unresolved.code == 1 and "is not set" in unresolved.output

    # the search is not vacuous: secrets did travel, sealed, and the loggers did log
    stdin = estate.server(server).counters.stdin_payloads
    assert sum(payload.count(b'"sealed"') for payload in stdin) >= 2
    assert len(caplog.records) > 10

    values = estate.lab.values | {f"{variable} (new)": new_password}
    hits = secret_hits(values, tool_outputs(estate, caplog) | simulator_records(estate))
    assert hits == []


def _plan_changes(estate: LabEstate) -> dict[str, dict[str, object]]:
    return {c["address"]: c for c in estate.plan_json()["resource_changes"]}


def test_changed_cti_password_is_seen_by_fingerprint_for_that_tenant_only(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    assert estate.lab.cti is not None

    # 1. through the environment: K7001's password changed at NFON and in the secret store
    estate.lab.cti.set_password("K7001", "k7001-rotated-Pa55word")
    estate.set_secret("K7001_CTI_PASSWORD", "k7001-rotated-Pa55word")
    for _ in range(2):  # planning reads nothing back and changes nothing: same answer twice
        changes = _plan_changes(estate)
        assert {a for a, c in changes.items() if c["type"] != "restart"} == {
            "tenant/k7001/tsp_instance"
        }
        changed = changes["tenant/k7001/tsp_instance"]
        assert changed["change"]["actions"] == ["update"]
        assert changed["sensitive_changed"] == ["cti_password"]
        assert (
            changed["change"]["before"]["cti_password"]
            == changed["change"]["after"]["cti_password"]
            == REDACTED
        )  # type: ignore[index]
        assert {
            k
            for k in changed["change"]["after"]
            if changed["change"]["before"][k] != changed["change"]["after"][k]
        } == set()  # type: ignore[attr-defined,index]
    text = estate.plan()
    assert text.code == 2
    assert "cti_password: (sensitive, changed)" in text.out
    assert text.out.count("(sensitive, changed)") == 1

    assert estate.apply().code == 0
    password = estate.windows("crm01").instance_password("K7001")
    assert password is not None and password.reveal() == "k7001-rotated-Pa55word"
    after = estate.plan()
    assert after.code == 0, after.output

    # 2. through the inventory's secrets (what the lab writes for its own values)
    estate.lab.cti.set_password("K8450", "k8450-rotated-Pa55word")
    yaml = YAML()
    inventory = yaml.load(estate.lab.inventory_path)
    inventory["secrets"]["K8450_CTI_PASSWORD"] = "k8450-rotated-Pa55word"
    yaml.dump(inventory, estate.lab.inventory_path)
    changes = _plan_changes(estate)
    assert {a for a, c in changes.items() if c["type"] != "restart"} == {
        "tenant/k8450/tsp_instance"
    }
    assert changes["tenant/k8450/tsp_instance"]["sensitive_changed"] == ["cti_password"]
    assert estate.apply().code == 0
    assert estate.plan().code == 0
