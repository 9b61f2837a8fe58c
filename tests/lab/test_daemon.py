"""``provisioner lab up|status|tamper|down`` as a user runs them: a background lab, then nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "client-tapi"


def provisioner(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_lab_up_status_tamper_down(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    up = provisioner("lab", "up", str(EXAMPLE), "--dir", str(lab))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((lab / "lab.json").read_text())
        pid = state["pid"]
        assert set(state["hosts"]) == {"tapi01", "ws-0101", "ws-0102", "ws-0103"}
        inventory = YAML(typ="safe").load((lab / "inventory.yaml").read_text())
        assert inventory["hosts"]["tapi01"]["host"] == "127.0.0.1"
        assert "K6732_CTI_PASSWORD" in inventory["secrets"]

        env = {"PROVISIONER_INVENTORY": str(lab / "inventory.yaml")}
        facts = provisioner(
            "facts", str(EXAMPLE), "--server", "tapi01", "--format", "json", env=env
        )
        assert facts.returncode == 0, facts.stderr
        assert json.loads(facts.stdout)["computer_name"] == "TAPI01"

        status = provisioner("lab", "status", "--dir", str(lab))
        assert status.returncode == 0
        tapi01 = next(line for line in status.stdout.splitlines() if line.startswith("tapi01"))
        commands, messages = (int(x) for x in tapi01.split()[-2:])
        assert commands == 1  # the one gather of `facts`
        assert messages >= 4

        wrong = provisioner(
            "lab", "tamper", "tapi01", "stop-service", "NoSuchService", "--dir", str(lab)
        )
        assert wrong.returncode == 1
        assert wrong.stderr.strip() == "error: lab: tapi01 has no service 'NoSuchService'"
        ok = provisioner("lab", "tamper", "tapi01", "stop-service", "WinRM", "--dir", str(lab))
        assert ok.returncode == 0, ok.stderr

        again = provisioner("lab", "up", str(EXAMPLE), "--dir", str(lab))
        assert again.returncode == 1
        assert "a lab already runs" in again.stderr
    finally:
        down = provisioner("lab", "down", "--dir", str(lab))
    assert down.returncode == 0
    assert down.stdout.strip() == "lab stopped"
    assert not (lab / "lab.json").exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert provisioner("lab", "status", "--dir", str(lab)).returncode == 1
