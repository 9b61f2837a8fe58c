"""``provisioner lab up|status|tamper|down`` as a user runs them: a background lab, then nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.support.processes import (
    describe,
    in_new_network_namespace,
    kill_all,
    marked,
    marked_processes,
    new_marker,
    wait_until_gone,
)
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


def test_lab_up_outside_the_repository_says_it_found_no_manifests(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "provisioner", "lab", "up", "--dir", str(tmp_path / "lab")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no manifests/examples here
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("error: no manifests to simulate: give their paths"), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "lab" / "lab.json").exists()


# -- a lab up that is stopped half-way leaves nothing behind -----------------------------------
#
# Each run is a `lab up` with Active Directory in a network namespace of its own (Samba's ports
# are fixed), whose processes all carry a marker: afterwards none of them may be left.


def _lab_up(
    tmp_path: Path, marker: str, *extra: str, kill_child: str = "KILL", cache: Path | None = None
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "provisioner", "lab", "up", str(EXAMPLE)]
    command += ["--dir", str(tmp_path / "lab"), *extra]
    environment = {"PROVISIONER_CACHE": str(cache)} if cache else {}
    return subprocess.Popen(
        in_new_network_namespace(command, kill_child=kill_child),
        cwd=ROOT,
        env=marked(marker, **environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_nothing_left(marker: str, said: str = "") -> None:
    """Nothing marked runs once the stop has had its time (lab up gives the daemon 30 s)."""
    left = wait_until_gone(marker)
    described = describe(left)
    kill_all(left)
    assert not left, f"left running: {described}; lab up said: {said}"


@pytest.mark.samba
@pytest.mark.parametrize(
    ("point", "kill_child"),
    [
        ("lab: starting the simulated NFON CTI API", "KILL"),
        ("lab: starting 4 simulated Windows hosts", "INT"),  # Ctrl-C
        ("lab: provisioning domain", "KILL"),  # samba-tool at work (an empty cache)
        ("lab: starting Samba AD DC", "KILL"),
        ("lab: importing", "TERM"),
    ],
    ids=["first-step", "ctrl-c", "provisioning", "samba-starting", "importing"],
)
def test_lab_up_stopped_at_any_point_leaves_no_process(
    tmp_path: Path, point: str, kill_child: str
) -> None:
    marker = new_marker()
    cache = tmp_path / "cache" if "provisioning" in point else None
    process = _lab_up(tmp_path, marker, kill_child=kill_child, cache=cache)
    said = []
    try:
        assert process.stderr is not None
        while line := process.stderr.readline():
            said.append(line)
            if line.startswith(point):
                break
        assert said and said[-1].startswith(point), said
    finally:
        process.kill()  # unshare; its --kill-child sends `lab up` the signal
        _, rest = process.communicate()
    _assert_nothing_left(marker, "".join(said) + rest)


@pytest.mark.samba
def test_lab_up_that_runs_out_of_time_stops_what_it_started(tmp_path: Path) -> None:
    marker = new_marker()
    process = _lab_up(tmp_path, marker, "--timeout", "0.5")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1, out + err
    assert "the lab was not ready within 0.5 s (--timeout)" in err
    _assert_nothing_left(marker, err)


@pytest.mark.samba
def test_a_ready_lab_outlives_lab_up_and_a_killed_daemon_takes_its_samba_along(
    tmp_path: Path,
) -> None:
    marker = new_marker()
    process = _lab_up(tmp_path, marker)
    out, err = process.communicate(timeout=300)
    state_file = tmp_path / "lab" / "lab.json"
    daemon = json.loads(state_file.read_text())["pid"] if state_file.exists() else None
    try:
        assert process.returncode == 0, out + err
        assert "lab: starting Samba AD DC for NFON (NFON.TEST)" in err
        assert "Active Directory: ldaps://127.0.0.1:636" in out
        assert daemon in marked_processes(marker), "the lab did not outlive lab up"
    finally:
        kill_all([daemon] if daemon else [])  # SIGKILL: no chance to clean up
    _assert_nothing_left(marker)


def test_lab_up_says_why_the_lab_did_not_start_and_leaves_nothing(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "site.yaml").write_text("kind: Site\nname: broken\n")
    marker = new_marker()
    command = ["lab", "up", str(manifests), "--dir", str(tmp_path / "lab")]
    done = subprocess.run(
        [sys.executable, "-m", "provisioner", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=marked(marker),
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: the lab did not start: "), line
    assert "site.yaml" in line and "(lab: the manifests must validate)" in line, line
    assert not wait_until_gone(marker)


def test_a_lab_of_several_estates_gives_each_an_inventory_of_its_own(tmp_path: Path) -> None:
    """A run refuses an inventory naming hosts its manifests lack: one inventory per estate."""
    lab = tmp_path / "lab"
    up = provisioner("lab", "up", "--dir", str(lab))  # both examples
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        for example in ("client-tapi", "multi-tenant"):
            inventory = lab / f"inventory-{example}.yaml"
            assert f"inventory for {example}: {inventory}" in up.stdout
            plan = provisioner(
                "plan", str(EXAMPLE.parent / example), "--detailed-exitcode",
                env={"PROVISIONER_INVENTORY": str(inventory),
                     "PROVISIONER_STATE_DIR": str(tmp_path / "state")},
            )  # fmt: skip
            assert plan.returncode == 2, plan.stdout + plan.stderr
    finally:
        assert provisioner("lab", "down", "--dir", str(lab)).returncode == 0
