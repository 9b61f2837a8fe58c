"""The inventory against the manifests: every problem offline, once, at the line that caused it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.errors import ProvisionerError
from provisioner.inventory import check, load_inventory
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from tests.manifest.estate import SITE, write_estate

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["tapi01", "ws1", "ws2"]
# every secret the small estate names, so that only what a test leaves out is missing
ENVIRONMENT = {"AD_PW": "a", "WINRM_PW": "w", "K6732_PW": "k"}


def estate_of(directory: Path, **files: str) -> Estate:
    estate, errors = load_estate([write_estate(directory, **files)])
    assert errors == []
    return estate


def problems(tmp_path: Path, inventory: str, **files: str) -> list[str]:
    manifests = tmp_path / "manifests"
    manifests.mkdir(parents=True)
    estate = estate_of(manifests, **files)
    path = tmp_path / "inventory.yaml"
    path.write_text(inventory, encoding="utf-8")
    found = check(load_inventory(path), estate, HOSTS)
    return [str(p).replace(f"{tmp_path}/", "") for p in found]


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)


def test_a_good_inventory_has_no_problem(tmp_path: Path) -> None:
    assert problems(tmp_path, "hosts:\n  tapi01: {host: 127.0.0.1, port: 40001}\n") == []


def test_an_entry_that_names_no_manifest_host_is_an_error_at_its_line(tmp_path: Path) -> None:
    inventory = "hosts:\n  tapi01: {port: 40001}\n  tapi1: {host: 127.0.0.1}\n"
    assert problems(tmp_path, inventory) == [
        "inventory.yaml:3:3: hosts: 'tapi1' is not a server or workstation of the manifests "
        "(did you mean 'tapi01'?)"
    ]


@pytest.mark.parametrize(
    "inventory", ["winrm: {ca_file: null}\n", "hosts:\n  tapi01: {ca_file: null, port: 40001}\n"]
)
def test_a_null_setting_sets_nothing(tmp_path: Path, inventory: str) -> None:
    """As when settings are merged: null leaves the value of the layer below."""
    assert problems(tmp_path, inventory) == []


def test_host_names_compare_without_case(tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    estate = estate_of(manifests)
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  WS1: {host: 127.0.0.9}\n", encoding="utf-8")
    inventory = load_inventory(path)
    assert check(inventory, estate, HOSTS) == []
    doc = estate.host_documents()["ws1"]
    assert inventory.endpoint_settings("ws1", estate.winrm_for(doc)).host == "127.0.0.9"


def test_basic_auth_in_an_inventory_follows_the_manifests_rule(tmp_path: Path) -> None:
    assert problems(tmp_path, "winrm: {auth: basic}\n") == [
        "inventory.yaml:1:15: basic auth sends the password in a form anyone on the path can "
        "reuse: use ntlm, kerberos or certificate, or set allow_insecure: true"
    ]
    assert problems(tmp_path / "b", "hosts:\n  ws2: {scheme: http, auth: certificate}\n") == [
        "inventory.yaml:2:17: http is only safe with ntlm, kerberos or credssp message "
        "encryption: use https or set allow_insecure: true"
    ]
    allowed = "winrm: {auth: basic, allow_insecure: true}\n"
    assert problems(tmp_path / "c", allowed) == []


def test_a_missing_secret_is_named_once_at_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WINRM_PW")  # the Site's, for all three hosts
    assert problems(tmp_path, "{}\n") == [
        "manifests/site.yaml:14:13: environment variable WINRM_PW is not set "
        "(a secret reference needs it)"
    ]


def test_the_inventorys_own_reference_replaces_the_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WINRM_PW")
    inventory = "winrm: {password: {env: LAB_PW}}\nsecrets: {LAB_PW: x}\n"
    assert problems(tmp_path, inventory) == []
    assert problems(tmp_path / "b", "winrm: {password: {env: LAB_PW}}\n") == [
        "inventory.yaml:1:19: environment variable LAB_PW is not set (a secret reference needs it)"
    ]


def test_every_secret_the_run_needs_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AD_PW")
    monkeypatch.delenv("K6732_PW")
    assert [p.split(": ", 1)[0] for p in problems(tmp_path, "{}\n")] == [
        "manifests/site.yaml:7:18",
        "manifests/k6732.yaml:5:15",
    ]
    assert problems(tmp_path / "off", "directory: {enabled: false}\n") == [
        "manifests/k6732.yaml:5:15: environment variable K6732_PW is not set "
        "(a secret reference needs it)"
    ]


def test_a_relative_ca_path_says_what_it_is_relative_to(tmp_path: Path) -> None:
    assert problems(tmp_path, "winrm: {ca_file: certs/ca.pem}\n") == [
        f"inventory.yaml:1:18: CA file certs/ca.pem does not exist: a relative path is relative "
        f"to the inventory's directory ({tmp_path})"
    ]
    site = SITE.replace(
        "  bind_password: {env: AD_PW}\n", "  bind_password: {env: AD_PW}\n  ca_file: ad.pem\n"
    )
    [problem] = problems(tmp_path / "m", "{}\n", site_yaml=site)
    assert problem == (
        f"manifests/site.yaml:8:12: CA file ad.pem does not exist: a relative path is relative to "
        f"the current directory ({Path.cwd()})"
    )


def test_plan_stops_before_any_connection_with_one_line_per_problem(tmp_path: Path) -> None:
    manifests = write_estate(tmp_path / "m" if (tmp_path / "m").mkdir() is None else tmp_path)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  nowhere: {port: 1}\n", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "AD_PW": "a", "K6732_PW": "k"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "provisioner",
            "plan",
            str(manifests),
            "--inventory",
            str(inventory),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{inventory}:2:3: hosts: 'nowhere' is not a server or workstation of the manifests: "
        "give the manifests that name it too, or remove the entry",
        f"{manifests}/site.yaml:14:13: environment variable WINRM_PW is not set (a secret "
        "reference needs it)",
        "error: 2 problems in the inventory or the secrets and CA files the run needs",
    ]


def test_a_broken_inventory_is_one_located_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts: [a]\n", encoding="utf-8")
    with pytest.raises(ProvisionerError, match=r"inventory.yaml:1:8: hosts: "):
        load_inventory(path)
