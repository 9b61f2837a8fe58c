"""Saved plans: applied exactly as saved, refused when the world moved since.

``plan --out F`` fingerprints what it read; ``apply --plan F`` gathers again and refuses a plan
whose hosts or manifests changed, naming what moved, before any batch is sent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.lab.tamper import tamper
from tests.support.lab import EXAMPLES, LabEstate, LabFor


def saved_addresses(path: Path) -> set[str]:
    document = json.loads(path.read_text(encoding="utf-8"))
    return {c["address"] for c in document["plan"]["resource_changes"]}


def applied_addresses(estate: LabEstate) -> set[str]:
    """What the last apply carried out, from the state store."""
    return {
        change["address"]
        for entry in estate.last_apply().values()
        for change in entry["changes"]
        if change["status"] == "ok"
    }


def applied_estate_with_drift(lab_for: LabFor) -> LabEstate:
    """client-tapi, applied, then changed behind the tool's back on tapi01 and ws-0101."""
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    tamper(estate.lab, "tapi01", "unassign-user", "NFON\\jdoe")
    tamper(estate.lab, "ws-0101", "remove-firewall-rule", "nfon-tapi-client-out-smb")
    return estate


def test_saved_plan_of_a_fresh_estate_applies_as_saved(lab_for: LabFor) -> None:
    """The first deployment, reviewed then applied: the most common use of a saved plan.

    Fails today: a host's first gather starts the stopped Telephony service (``tsecimp /d``
    does, as any TAPI client), after it was read as stopped; so the second gather differs from
    the first and every saved plan of a fresh server is refused as stale.
    """
    estate = lab_for(EXAMPLES / "client-tapi")
    saved = estate.directory / "first.plan.json"
    assert estate.plan("--out", saved).code == 2
    with estate.windows("tapi01").lock:  # a host's free disk space moves all the time
        estate.windows("tapi01").state.system.system_drive_free_bytes -= 4096
    applied = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert applied.code == 0, applied.output
    assert estate.plan().code == 0


def test_saved_plan_applies_exactly_the_saved_changes(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    wanted = saved_addresses(saved)
    assert wanted == {
        "server/tapi01/firewall_rule/nfon-tapi-in-smb",
        "tenant/k6732/line_assignment/NFON\\JDOE",
        "client/ws-0101/firewall_rule/nfon-tapi-client-out-smb",
    }

    applied = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert applied.code == 0, applied.output
    assert applied_addresses(estate) == wanted
    assert estate.plan().code == 0


def test_a_host_changed_since_the_plan_refuses_it_before_any_batch(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2

    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-rpc-epmap")  # meanwhile
    estate.reset_counters()
    refused = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert refused.code == 1, refused.output
    message = refused.err.strip()
    assert len(message.splitlines()) == 1, message
    assert "tapi01" in message
    assert "server/tapi01/firewall_rule/nfon-tapi-in-rpc-epmap" in message
    assert "ws-0101" not in message  # what did not move is not named
    assert set(estate.batches().values()) == {0}
    assert "nfon-tapi-in-smb" not in {r.name for r in estate.windows("tapi01").state.firewall_rules}


def test_another_apply_in_between_makes_the_saved_plan_stale(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    assert estate.apply("--target", "server=tapi01").code == 0  # a colleague repairs tapi01

    estate.reset_counters()
    refused = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert refused.code == 1, refused.output
    assert "tapi01" in refused.err and "run plan again" in refused.err
    assert set(estate.batches().values()) == {0}
    # ws-0101's part of the saved plan was not applied either
    assert estate.planned_addresses() == {"client/ws-0101/firewall_rule/nfon-tapi-client-out-smb"}


def test_changed_manifests_refuse_the_saved_plan(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    tenant = estate.manifests / "k6732.yaml"
    tenant.write_text(tenant.read_text().replace("debug_level: 0", "debug_level: 3"))

    estate.reset_counters()
    refused = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert refused.code == 1, refused.output
    assert "manifests changed" in refused.err
    assert set(estate.batches().values()) == {0}


def test_a_saved_targeted_plan_applies_only_its_targets(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "tapi01.plan.json"
    assert estate.plan("--target", "server=tapi01", "--out", saved).code == 2
    assert saved_addresses(saved) == {
        "server/tapi01/firewall_rule/nfon-tapi-in-smb",
        "tenant/k6732/line_assignment/NFON\\JDOE",
    }
    applied = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert applied.code == 0, applied.output
    assert estate.planned_addresses() == {"client/ws-0101/firewall_rule/nfon-tapi-client-out-smb"}


def test_a_saved_plan_with_nothing_to_do_applies_nothing(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    saved = estate.directory / "empty.plan.json"
    assert estate.plan("--out", saved).code == 0
    estate.reset_counters()
    applied = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert applied.code == 0, applied.output
    assert set(estate.batches().values()) == {0}


# --- the path a team takes: plan in one place, apply in another ---------------------------------


def contacted(estate: LabEstate) -> dict[str, int]:
    """WinRM commands per host and CTI API requests since the counters were reset."""
    counts = estate.commands()
    counts["cti-api"] = len(estate.lab.cti.requests) if estate.lab.cti else 0
    return {name: n for name, n in counts.items() if n}


def test_a_plan_saved_with_relative_paths_applies_from_the_same_directory(
    lab_for: LabFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The normal case: ``plan manifests --out p.json`` then ``apply --plan p.json``."""
    estate = applied_estate_with_drift(lab_for)
    monkeypatch.chdir(estate.directory)
    assert estate.cli("plan", "manifests", "--out", "repair.plan.json").code == 0
    applied = estate.cli("apply", "--plan", "repair.plan.json", "--auto-approve")
    assert applied.code == 0, applied.output
    assert estate.plan().code == 0


def test_a_saved_plan_from_another_directory_names_where_its_manifests_are(
    lab_for: LabFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    estate = applied_estate_with_drift(lab_for)
    monkeypatch.chdir(estate.directory)
    assert estate.cli("plan", "manifests", "--out", "repair.plan.json").code == 0
    elsewhere = estate.directory / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    estate.reset_counters()

    refused = estate.cli("apply", "--plan", "../repair.plan.json", "--auto-approve")
    assert refused.code == 1, refused.output
    assert refused.err.count("\n") == 1, refused.err
    assert "manifests manifests are not found from" in refused.err
    assert "apply --plan FILE PATH..." in refused.err
    assert contacted(estate) == {}

    applied = estate.cli("apply", "--plan", "../repair.plan.json", "../manifests", "--auto-approve")
    assert applied.code == 0, applied.output
    assert estate.plan().code == 0


def git(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=CI", "-c", "user.email=ci@example.invalid", *map(str, args)],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_a_plan_made_in_one_clone_applies_in_another(
    lab_for: LabFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI plans on the pull request in one checkout; another job applies it on merge."""
    estate = applied_estate_with_drift(lab_for)
    origin = estate.directory / "origin"
    shutil.copytree(estate.manifests, origin / "manifests")
    git("init", "-q", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-qm", "estate", cwd=origin)
    for job in ("plan-job", "apply-job"):
        git("clone", "-q", origin, estate.directory / job, cwd=estate.directory)

    monkeypatch.chdir(estate.directory / "plan-job")
    assert estate.cli("plan", "manifests", "--out", "../artifact.plan.json").code == 0
    monkeypatch.chdir(estate.directory / "apply-job")
    applied = estate.cli("apply", "--plan", "../artifact.plan.json", "--auto-approve")
    assert applied.code == 0, applied.output
    assert applied_addresses(estate) == saved_addresses(estate.directory / "artifact.plan.json")


def test_a_saved_plan_for_another_inventory_is_refused_before_anything_is_contacted(
    lab_for: LabFor,
) -> None:
    """The inventory says where secrets go: it comes from the operator, never from the plan."""
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    other = estate.directory / "other-inventory.yaml"
    other.write_text(estate.lab.inventory_path.read_text() + "# another environment\n")
    estate.reset_counters()

    refused = estate.cli("apply", "--plan", saved, "--inventory", other, "--auto-approve")
    assert refused.code == 1, refused.output
    assert "made with another inventory" in refused.err
    assert contacted(estate) == {}


def test_a_changed_manifest_is_refused_before_anything_is_contacted(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    tenant = estate.manifests / "k6732.yaml"
    tenant.write_text(tenant.read_text() + "# reviewed after the plan\n")
    estate.reset_counters()

    refused = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert refused.code == 1
    assert "manifests changed" in refused.err
    assert contacted(estate) == {}


def test_a_saved_plan_keeps_its_own_targets(lab_for: LabFor) -> None:
    estate = applied_estate_with_drift(lab_for)
    saved = estate.directory / "repair.plan.json"
    assert estate.plan("--out", saved).code == 2
    refused = estate.cli("apply", "--plan", saved, "--target", "server=tapi01", "--auto-approve")
    assert refused.code == 1
    assert "drop --target" in refused.err


def test_a_saved_plan_is_stale_when_what_it_held_back_would_go_ahead(lab_for: LabFor) -> None:
    """The reviewer saw a tenant's changes held back by a problem; once the problem is gone,
    applying the saved plan would carry them out unreviewed."""
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.lab.cti is not None
    estate.lab.cti.set_password("K7001", "changed-at-nfon-only")
    saved = estate.directory / "held.plan.json"
    assert estate.plan("--out", saved).code == 1
    estate.lab.cti.set_password("K7001", estate.lab.values["K7001_CTI_PASSWORD"])

    estate.reset_counters()
    refused = estate.cli("apply", "--plan", saved, "--auto-approve")
    assert refused.code == 1, refused.output
    assert "the problems changed since this plan was made" in refused.err
    assert "tenant/k7001/tsp_instance" in refused.err
    assert set(estate.batches().values()) == {0}
