"""The JSON plan: Terraform's shape, our extras beside it, valid against the shipped schema.

Every plan the examples give in the lab (fresh, after apply, with problems) is checked against
``docs/plan.schema.json``, read with ``jq`` the way scripts read ``terraform show -json``, and
read back the way a saved plan reads its changes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest

from provisioner.lab.tamper import tamper
from provisioner.plan.model import Action, Change, Plan
from provisioner.render.json_format import change_from_json, change_to_json, plan_to_json
from tests.support.ci import part_unavailable
from tests.support.lab import EXAMPLES, ROOT, LabEstate, LabFor

SCHEMA = json.loads((ROOT / "docs" / "plan.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=None)


def test_the_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def assert_valid(document: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}"
        for e in VALIDATOR.iter_errors(document)
    ]
    assert errors == []


def jq_actions(text: str) -> list[list[str]]:
    """``jq '.resource_changes[].change.actions'``, as a script reading the plan would."""
    jq = shutil.which("jq")
    if jq is None:
        part_unavailable("jq is not installed", "jq (scripts/setup.sh --test installs it)")
    done = subprocess.run(
        [jq, "-c", ".resource_changes[].change.actions"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def checked_plan(estate: LabEstate, expected_code: int) -> dict[str, Any]:
    """``plan --format json`` (and ``--out``): valid, readable by jq, readable back."""
    saved = estate.directory / "checked.plan.json"
    result = estate.cli("plan", estate.manifests, "--format", "json", "--out", saved)
    assert result.code == expected_code, result.output
    text = result.out[: result.out.rindex("}") + 1]  # the line after it names the saved file
    document: dict[str, Any] = json.loads(text)
    assert_valid(document)
    assert_valid(json.loads(saved.read_text(encoding="utf-8"))["plan"])
    assert jq_actions(text) == [c["change"]["actions"] for c in document["resource_changes"]]
    for data in document["resource_changes"]:
        assert change_to_json(change_from_json(data), held_back=data["held_back"]) == data
    return document


def by_address(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["address"]: c for c in document["resource_changes"]}


def test_client_tapi_plans_fit_the_schema(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    fresh = checked_plan(estate, 0)
    changes = by_address(fresh)
    package = changes["server/tapi01/package"]
    assert (package["type"], package["name"], package["mode"]) == ("package", "tapi01", "managed")
    assert package["change"]["actions"] == ["create"]
    assert package["change"]["before_sensitive"] is False
    instance = changes["tenant/k6732/tsp_instance"]
    assert instance["change"]["after_sensitive"] == {"cti_password": True}
    assert instance["sensitive_changed"] == ["cti_password"]
    rule = changes["server/tapi01/firewall_rule/nfon-tapi-in-smb"]
    assert rule["name"] == "nfon-tapi-in-smb"
    restart = changes["server/tapi01/restart/TapiSrv"]
    assert restart["change"]["after"] == {"service": "TapiSrv", "interrupts": ["k6732"]}
    assert not any(c["held_back"] for c in fresh["resource_changes"])
    assert {"server/tapi01", "client/ws-0101"} <= set(fresh["fingerprints"])

    assert estate.apply().code == 0
    assert checked_plan(estate, 0)["resource_changes"] == []

    tamper(estate.lab, "", "remove-extension", "K6732/1254")  # a line the manifests assign
    tamper(estate.lab, "tapi01", "unassign-user", "NFON\\MAUERSBERGERM")
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    with_problems = checked_plan(estate, 1)
    assert [p["tenant"] for p in with_problems["problems"]] == ["k6732"]
    held = {c["address"] for c in with_problems["resource_changes"] if c["held_back"]}
    assert held == {"tenant/k6732/line_assignment/NFON\\MAUERSBERGERM"}


def test_multi_tenant_plans_fit_the_schema_and_mark_what_is_held_back(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.lab.cti is not None
    fresh = checked_plan(estate, 0)
    restart = by_address(fresh)["server/crm01/restart/NFONCTIEngine"]
    assert restart["change"]["after"]["interrupts"] == ["k6732", "k7001", "k8450"]

    estate.lab.cti.set_password("K7001", "changed-at-nfon-only")  # its login fails now
    with_problems = checked_plan(estate, 1)
    held = {c["address"] for c in with_problems["resource_changes"] if c["held_back"]}
    assert held == {
        c["address"] for c in with_problems["resource_changes"] if c["tenant"] == "k7001"
    }
    assert "server/crm01/restart/TapiSrv" not in held  # k6732 and k8450 still need it

    assert estate.apply().code == 1
    assert checked_plan(estate, 1)["resource_changes"]  # k7001's part is still to do
    estate.lab.cti.set_password("K7001", estate.lab.values["K7001_CTI_PASSWORD"])
    assert estate.apply().code == 0
    assert checked_plan(estate, 0)["resource_changes"] == []

    # a change only k7001's instance needs: its restarts are held back with it
    tenant = estate.manifests / "k7001.yaml"
    tenant.write_text(tenant.read_text() + "debug_level: 3\n")
    estate.lab.cti.set_password("K7001", "changed-at-nfon-only")
    held_restarts = checked_plan(estate, 1)
    changes = held_restarts["resource_changes"]
    assert "tenant/k7001/tsp_instance" in {c["address"] for c in changes}
    assert {c["address"] for c in changes if c["held_back"]} == {
        c["address"] for c in changes if c["tenant"] == "k7001"
    } | {"server/crm01/restart/TapiSrv", "server/crm01/restart/NFONCTIEngine"}
    applied = estate.apply()
    assert applied.code == 1
    assert "held back: server/crm01/restart/TapiSrv" in applied.out
    assert "✓ server/crm01/restart" not in applied.out


# --- without a lab ----------------------------------------------------------------------------


def test_a_prune_says_why_in_terraforms_words() -> None:
    change = Change(
        "client/ws-0101/firewall_rule/old",
        Action.DELETE,
        "firewall_rule",
        "ws-0101",
        before={"local_ports": ["1"]},
        action_reason="delete_because_no_resource_config",
    )
    data = change_to_json(change)
    assert data["action_reason"] == "delete_because_no_resource_config"
    assert data["change"]["after_sensitive"] is False
    assert "action_reason" not in change_to_json(
        Change("server/h/package", Action.CREATE, "package", "h", after={"version": "1"})
    )


@pytest.mark.parametrize("address", ["tenant/k1/line_assignment/NFON\\A/B", "server/s/restart/X"])
def test_the_name_is_everything_after_the_kind(address: str) -> None:
    kind = address.split("/")[2]
    data = plan_to_json(Plan(changes=[Change(address, Action.CREATE, kind, "s", after={})]))
    assert data["resource_changes"][0]["name"] == address.split("/", 3)[3]


def test_an_empty_plan_fits_the_schema() -> None:
    assert_valid(plan_to_json(Plan()))
