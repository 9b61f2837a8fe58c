"""``provisioner lab up|status|tamper|down`` as a user runs them: a background lab, then nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

from tests.test_doctor import BREAKAGES

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

        break_every_doctor_check(lab, env | {"PROVISIONER_STATE_DIR": str(tmp_path / "state")})
    finally:
        down = provisioner("lab", "down", "--dir", str(lab))
    assert down.returncode == 0
    assert down.stdout.strip() == "lab stopped"
    assert not (lab / "lab.json").exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert provisioner("lab", "status", "--dir", str(lab)).returncode == 1


def doctor(host: str, env: dict[str, str]) -> dict[str, str]:
    """``doctor --format json``: each check's status."""
    ran = provisioner("doctor", str(EXAMPLE), "--server", host, "--format", "json", env=env)
    return {c["check"]: c["status"] for c in json.loads(ran.stdout)["checks"]}


def break_every_doctor_check(lab: Path, env: dict[str, str]) -> None:
    """After apply every check passes; the tamper actions, sent through the CLI to the running
    lab, make their checks fail. Three rounds, as some breakages hide others: without TAPI or
    tsecimp.exe there is no listing to read, and the language mode stops the gather itself."""
    applied = provisioner("apply", str(EXAMPLE), "--auto-approve", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert set(doctor("tapi01", env).values()) == {"passed"}
    hiding = {"TapiSrv", "C:\\Windows\\System32\\tsecimp.exe"}
    first = [b for b in BREAKAGES if b[2] not in hiding and b[3] != "language mode"]
    then = [b for b in BREAKAGES if b[2] in hiding]
    last = [b for b in BREAKAGES if b[3] == "language mode"]
    seen = {b[3] for b in first if b[0] != "ws-0101"}
    expected = [seen, seen - {"tsecimp listing"} | {b[3] for b in then}, {"language mode"}]
    for breakages, failing in zip((first, then, last), expected, strict=True):
        for host, action, argument, _, _ in breakages:
            ran = provisioner(
                "lab", "tamper", host or "tapi01", action, argument, "--dir", str(lab)
            )
            assert ran.returncode == 0, ran.stderr
        failed = {check for check, status in doctor("tapi01", env).items() if status == "failed"}
        assert failed == failing
    assert doctor("ws-0101", env)["tcmsetup"] == "failed"
