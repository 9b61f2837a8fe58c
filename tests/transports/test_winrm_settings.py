"""WinRM settings from the Site, a TapiServer and the inventory reach a host's endpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

from provisioner.connectors import endpoint_for
from provisioner.inventory import Inventory
from provisioner.manifest import load_estate
from provisioner.manifest.models import WinRMSettings
from provisioner.planner import Host
from tests.support.lab import EXAMPLES

TAPI01 = Host("server/tapi01", "tapi01", "server")
SECRETS = Inventory(secrets={"NFON_WINRM_PASSWORD": "not-a-real-one"})
WORKSTATION = Host("client/ws-0101", "ws-0101", "client")


def example(tmp_path: Path, site_timeout: str = "") -> Path:
    manifests = tmp_path / "client-tapi"
    shutil.copytree(EXAMPLES / "client-tapi", manifests)
    if site_timeout:
        site = manifests / "site.yaml"
        site.write_text(site.read_text().replace("winrm:\n", f"winrm:\n{site_timeout}"))
    return manifests


def test_command_timeout_defaults_to_half_an_hour(tmp_path: Path) -> None:
    estate, errors = load_estate([example(tmp_path)])
    assert not errors
    assert endpoint_for(estate, SECRETS, TAPI01).command_timeout_s == 1800


def test_command_timeout_from_the_site_and_the_inventory(tmp_path: Path) -> None:
    estate, errors = load_estate([example(tmp_path, "  command_timeout_s: 900\n")])
    assert not errors, [str(e) for e in errors]
    assert endpoint_for(estate, SECRETS, WORKSTATION).command_timeout_s == 900
    inventory = SECRETS.model_copy(
        update={"hosts": {"tapi01": WinRMSettings(command_timeout_s=3600)}}
    )
    assert endpoint_for(estate, inventory, TAPI01).command_timeout_s == 3600
    assert endpoint_for(estate, inventory, WORKSTATION).command_timeout_s == 900


def test_a_command_timeout_below_one_second_is_a_manifest_error(tmp_path: Path) -> None:
    _, errors = load_estate([example(tmp_path, "  command_timeout_s: 0\n")])
    assert any("command_timeout_s" in str(error) for error in errors)
