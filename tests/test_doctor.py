"""``provisioner doctor``: every check passes on a well-built lab host and fails, with its message,
on a host broken for it; one gather, read-only; ``--capture`` keeps no secret and no user name."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from provisioner.connectors import in_process
from provisioner.doctor import CHECKS, diagnose, doctor_request, run_checks, subject_of
from provisioner.lab.tamper import tamper
from provisioner.lab.windows_host import LockRecord, WindowsHostState
from provisioner.planner import Host
from provisioner.remote.contract import HostFacts
from provisioner.remote.tsecimp import merge_providers, parse_listing
from provisioner.transports.winrm import WinRMEndpoint
from tests.support.host_fixtures import HostFixture, host_fixtures
from tests.support.host_model import ModelEstate
from tests.support.lab import EXAMPLES, LabEstate, LabFor, running_lab
from tests.support.testbed import SERVER_MANIFEST, TEST_SERVER, manifests_of_the_test_server

VERPATCH = "C:\\ProgramData\\NFON-Provisioner\\Tools\\verpatch.exe"
TAPI01 = Host("server/tapi01", "tapi01", "server")
SERVER_CHECKS = [c.name for c in CHECKS if c.role != "client" and c.name != "package source"]
CLIENT_CHECKS = [c.name for c in CHECKS if c.role != "server"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEstate]:
    """The client-tapi example's lab, applied once for the module."""
    with running_lab(tmp_path_factory.mktemp("doctor"), EXAMPLES / "client-tapi") as estate:
        assert estate.apply().code == 0
        yield estate


@pytest.fixture
def lab(built: LabEstate) -> Iterator[LabEstate]:
    """The built lab; whatever a test breaks is mended afterwards."""
    hosts = {name: host.windows.state.to_json() for name, host in built.lab.hosts.items()}
    quotas = {name: vars(host.server).copy() for name, host in built.lab.hosts.items()}
    assert built.lab.cti is not None
    pbx = built.lab.cti.pbx("K6732")
    extensions = copy.deepcopy(pbx.extensions)
    built.reset_counters()
    yield built
    for name, host in built.lab.hosts.items():
        host.windows.state = WindowsHostState.from_json(hosts[name])
        for quota in ("max_envelope_kb", "max_shells", "max_operations"):
            setattr(host.server, quota, quotas[name][quota])
    pbx.extensions[:] = extensions


def doctor(estate: LabEstate, host: str, *extra: str | Path) -> tuple[int, dict[str, Any]]:
    result = estate.cli("doctor", estate.manifests, "--server", host, "--format", "json", *extra)
    assert result.err == "" or "--capture" in extra, result.err
    return result.code, result.json()


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["check"]: check["status"] for check in report["checks"]}


def test_every_check_passes_on_each_host_of_the_client_tapi_example(lab: LabEstate) -> None:
    for host, checks in [("tapi01", SERVER_CHECKS)] + [
        (f"ws-010{n}", CLIENT_CHECKS) for n in (1, 2, 3)
    ]:
        code, report = doctor(lab, host)
        assert code == 0, report
        assert statuses(report) == dict.fromkeys(["WinRM", *checks], "passed"), report
    assert lab.commands() == dict.fromkeys(lab.lab.hosts, 1)  # ONE gather per doctor


def test_every_check_passes_on_the_multi_tenant_server(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    code, report = doctor(estate, "crm01")
    assert code == 0, report
    assert statuses(report) == dict.fromkeys(["WinRM", *SERVER_CHECKS], "passed"), report


BREAKAGES = [
    # (host, tamper action, its argument, the check that fails, what its message says)
    (
        "tapi01",
        "set-system",
        "windows_version=6.3.9600",
        "Windows",
        "older than Windows Server 2016",
    ),
    ("tapi01", "set-system", "powershell_version=4.0", "PowerShell", "the scripts need 5.1"),
    ("tapi01", "set-system", "language_mode=ConstrainedLanguage", "language mode", "core types"),
    ("tapi01", "set-system", "elevated=false", "elevation", "token is not elevated"),
    ("tapi01", "set-winrm", "max_envelope_size_kb=100", "WinRM quotas", "MaxEnvelopeSizekb is 100"),
    ("tapi01", "stop-service", "MpsSvc", "firewall service", "(MpsSvc) is not running"),
    ("tapi01", "set-system", "pending_reboot=Windows Update", "pending reboot", "(Windows Update)"),
    ("tapi01", "disable-service", "TapiSrv", "Telephony service", "TapiSrv is disabled"),
    ("tapi01", "revoke-logon-right", "NFON\\svc-tapi", "Telephony service", "error 1069"),
    ("tapi01", "remove-file", "C:\\Windows\\System32\\tsecimp.exe", "tsecimp", "is missing"),
    ("tapi01", "install-package", "1.1.0", "NFON package", "newer than package.version 1.0.0"),
    ("tapi01", "remove-file", VERPATCH, "verpatch", f"verpatch.exe is not at {VERPATCH}"),
    ("tapi01", "open-instance-key", "K6732", "instance keys", "may be read by APPLICATION"),
    ("tapi01", "open-rpc-port", "445", "RPC exposure", "'Opened by hand: TCP 445' opens"),
    ("tapi01", "set-system", "system_drive_free_bytes=104857600", "free disk", "100 MB free"),
    ("", "forge-line-name", "K6732/1254", "tsecimp listing", "does not read one way only"),
    ("ws-0101", "remove-file", "C:\\Windows\\System32\\tcmsetup.exe", "tcmsetup", "is missing"),
]


@pytest.mark.parametrize(("host", "action", "argument", "check", "says"), BREAKAGES)
def test_each_check_fails_with_its_message_on_a_host_broken_for_it(
    lab: LabEstate, host: str, action: str, argument: str, check: str, says: str
) -> None:
    tamper(lab.lab, host, action, argument)
    code, report = doctor(lab, host or "tapi01")
    failed = {c["check"]: c["message"] for c in report["checks"] if c["status"] == "failed"}
    assert code == 1
    assert list(failed) == [check], report
    assert says in failed[check]


def test_every_check_has_a_breakage() -> None:
    """(Or a test of its own: a host another apply holds is a warning, not a failure.)"""
    assert {check for *_, check, _ in BREAKAGES} | {"WinRM", "package source", "host lock"} == {
        "WinRM",
        *SERVER_CHECKS,
        *CLIENT_CHECKS,
        "package source",
    }


def test_a_host_another_apply_holds_is_a_warning_naming_the_holder(lab: LabEstate) -> None:
    now = datetime.now(UTC)
    lab.windows("tapi01").state.lock = LockRecord(
        owner="bob@ws2 pid 9",
        acquired=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        expires=(now + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    code, report = doctor(lab, "tapi01")
    assert code == 0
    [finding] = [c for c in report["checks"] if c["status"] != "passed"]
    assert (finding["check"], finding["status"]) == ("host lock", "warning")
    assert finding["message"].startswith("another apply: bob@ws2 pid 9, since ")
    assert lab.windows("tapi01").state.lock.owner == "bob@ws2 pid 9"  # doctor takes no lock


def test_a_host_reached_without_verifying_its_certificate_fails_the_winrm_check(
    lab: LabEstate, tmp_path: Path
) -> None:
    """The manifests and the inventory name no CA and allow it: everything else passes."""
    manifests = tmp_path / "manifests"
    shutil.copytree(lab.manifests, manifests)
    site = manifests / "site.yaml"
    site.write_text(site.read_text().replace("  ca_file: certs/nfon-test-ca.pem\n", "", 2))
    yaml = YAML(typ="safe")
    inventory = yaml.load(lab.lab.inventory_path.read_text())
    del inventory["winrm"]["ca_file"]
    inventory["winrm"]["allow_insecure"] = True
    insecure = tmp_path / "inventory.yaml"
    with insecure.open("w") as stream:
        yaml.dump(inventory, stream)
    result = lab.cli(
        "doctor", manifests, "--server", "tapi01", "--format", "json", "--inventory", insecure
    )
    assert result.code == 1, result.output
    failed = [c for c in result.json()["checks"] if c["status"] == "failed"]
    assert [c["check"] for c in failed] == ["WinRM"]
    assert "without verifying its certificate (allow_insecure)" in failed[0]["message"]


def test_an_unreachable_host_is_one_failed_check(lab: LabEstate, tmp_path: Path) -> None:
    yaml = YAML(typ="safe")
    inventory = yaml.load(lab.lab.inventory_path.read_text())
    inventory["hosts"]["tapi01"]["port"] = 9  # nothing listens
    closed = tmp_path / "inventory.yaml"
    with closed.open("w") as stream:
        yaml.dump(inventory, stream)
    code, report = doctor(lab, "tapi01", "--inventory", closed)
    assert code == 1
    assert [c["check"] for c in report["checks"]] == ["WinRM"]
    assert "127.0.0.1:9" in report["checks"][0]["message"]


def test_the_text_report_says_one_line_per_check_and_counts_them(lab: LabEstate) -> None:
    result = lab.cli("doctor", lab.manifests, "--server", "tapi01")
    lines = result.out.splitlines()
    assert lines[0] == "tapi01: one gather, read-only"
    assert [line[:4] for line in lines[1:-1]] == ["  ✓ "] * (1 + len(SERVER_CHECKS))
    assert lines[-1] == f"tapi01: {1 + len(SERVER_CHECKS)} passed, 0 warnings, 0 failed"
    assert result.code == 0


def test_a_share_the_host_cannot_read_by_itself_is_flagged(tmp_path: Path) -> None:
    unc = "\\\\files\\software\\NFONTAPI-1.0.0.msi"
    server = SERVER_MANIFEST.replace(
        "source: https://files.nfon.test/software/NFON/NFONTAPI-1.0.0.msi",
        f"source: '{unc}'\n  host_reads_share: true",
    )
    files = manifests_of_the_test_server() | {f"{TEST_SERVER}.yaml": server}
    model = ModelEstate.of(tmp_path, files)
    host = Host(f"server/{TEST_SERVER}", TEST_SERVER, "server")
    windows = model.windows(TEST_SERVER)
    endpoint = WinRMEndpoint("tapitest", ca_file="ca.pem")

    def package_source() -> tuple[str, str]:
        report = diagnose(model.estate, host, endpoint, in_process({TEST_SERVER: windows}))
        [finding] = [f for f in report.findings if f.check == "package source"]
        return finding.status, finding.message

    status, message = package_source()
    assert status == "failed" and "the second hop" in message and unc in message
    windows.state.readable_shares.append("\\\\files\\software\\")
    assert package_source() == ("passed", f"the host reads {unc} by itself")


def test_a_capture_keeps_what_was_read_without_secrets_or_user_names(
    lab: LabEstate, tmp_path: Path
) -> None:
    facts = lab.windows("tapi01").gather(doctor_request(lab.model(), TAPI01))
    capture = tmp_path / "capture"
    code, _ = doctor(lab, "tapi01", "--capture", capture)
    assert code == 0
    files = {path.name: path.read_bytes().decode() for path in capture.iterdir()}
    assert sorted(files) == ["doctor.json", "facts.json", "listing.txt", "versions.txt"]
    captured = HostFacts.model_validate_json(files["facts.json"])
    assert captured.tsecimp_listing == files["listing.txt"]
    assert "\r\n" in files["listing.txt"]  # as the host printed it
    secret_texts = [
        facts.seal_key.modulus[:40],
        *(
            i.settings.password.hmac
            for i in facts.tsp_instances
            if i.settings and i.settings.password
        ),
        "1004336348",  # the lab domain's SID
    ]
    users = ["svc-tapi", "tapi-admins", "MAUERSBERGERM", "jdoe", "reception"]
    everything = "\n".join(files.values()).casefold()
    assert [t for t in secret_texts + users if t.casefold() in everything] == []
    assert "DOMAIN\\user01" in files["facts.json"].replace("\\\\", "\\")
    shape = [
        (p.name, [(line.permanent_id, line.addresses, len(line.users)) for line in p.lines])
        for p in merge_providers(parse_listing(files["listing.txt"]))
    ]
    original = [
        (p.name, [(line.permanent_id, line.addresses, len(line.users)) for line in p.lines])
        for p in merge_providers(parse_listing(facts.tsecimp_listing or ""))
    ]
    assert shape == original
    assert json.loads(files["doctor.json"])["passed"] is True


@pytest.mark.parametrize(
    "fixture",
    [f for f in host_fixtures() if f.doctor is not None and "example" in f.expected],
    ids=lambda f: f.name,
)
def test_the_checks_read_a_captured_host_as_its_capture_did(fixture: HostFixture) -> None:
    """A capture's facts load as the contract's, and the checks, run offline on them, report
    what the capture's doctor run reported (the WinRM check needs the connection)."""
    facts = fixture.facts
    assert facts is not None and facts.tsecimp_listing == fixture.listing
    findings = run_checks(subject_of(fixture.estate(), fixture.host(), facts))
    recorded = dict(fixture.doctor or {})
    assert recorded.pop("WinRM") == "passed"
    assert {f.check: f.status for f in findings} == recorded
