"""The lab's Active Directory serves the domain the manifests name, seeded in one import."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from provisioner.lab.estate import LabDomain, read_manifests
from tests.support.lab import EXAMPLES, ROOT
from tests.support.processes import run_alone


def _renamed_domain(source: Path, target: Path, netbios: str, dns: str) -> Path:
    shutil.copytree(source, target)
    for path in target.glob("*.yaml"):
        text = path.read_text(encoding="utf-8").replace("NFON\\", f"{netbios}\\")
        text = text.replace("netbios_domain: NFON", f"netbios_domain: {netbios}")
        path.write_text(text.replace("nfon.test", dns), encoding="utf-8")
    return target


def test_the_domain_comes_from_the_site(tmp_path: Path) -> None:
    plan = read_manifests(
        [_renamed_domain(EXAMPLES / "client-tapi", tmp_path / "m", "ACME", "corp.acme.example")]
    )
    # the bind account's UPN suffix names the realm
    assert plan.domains == [LabDomain("ACME", "CORP.ACME.EXAMPLE")]
    assert "ACME\\JDOE" in plan.users


_LAB_AND_READ = """
import json, pathlib, sys
from provisioner.directory.reader import read_directory
from provisioner.inventory import load_inventory
from provisioner.lab.estate import Lab
from provisioner.manifest import load_estate
manifests, directory = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
with Lab(directory, [manifests], active_directory=True) as lab:
    estate, _ = load_estate([manifests])
    facts = read_directory(estate, load_inventory(lab.inventory_path))
    print(json.dumps({
        "domain": [lab.ad.dc.netbios, lab.ad.dc.realm] if lab.ad else lab.directory_note,
        "problems": [problem.message for problem in facts.problems],
        "users": {key: user.account if user else None for key, user in facts.users.items()},
    }))
"""


@pytest.mark.samba
def test_a_lab_for_a_site_of_another_domain_serves_that_domain(tmp_path: Path) -> None:
    manifests = _renamed_domain(EXAMPLES / "client-tapi", tmp_path / "m", "ACME", "acme.test")
    command = [sys.executable, "-c", _LAB_AND_READ, str(manifests), str(tmp_path / "lab")]
    done, left = run_alone(command, cwd=ROOT)  # a DC of its own: the session's holds our ports
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["domain"] == ["ACME", "ACME.TEST"]
    assert found["problems"] == []
    assert found["users"]["ACME\\JDOE"] == "ACME\\jdoe"
    assert None not in found["users"].values(), found["users"]
    assert not left, left
