"""Ctrl-C in the middle of a read: every WinRS shell is closed on the hosts, exit code 130.

The command line runs in a child process (a real SIGINT, as a terminal sends it); the lab's hosts
run in this process and hang in their gather, as a host whose command never returns would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.lab import EXAMPLES, LabEstate, LabFor


def wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def start_cli(estate: LabEstate, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner", *args],
        env=os.environ.copy(),  # the lab's PROVISIONER_INVENTORY and PROVISIONER_STATE_DIR
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


@pytest.mark.parametrize("command", ["plan", "drift", "facts"])
def test_ctrl_c_closes_every_shell_and_exits_130(lab_for: LabFor, command: str) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    servers = [host.server for host in estate.lab.hosts.values()]
    for server in servers:
        server.faults.handler_delay_s = 120  # the gather never answers in time
    args = [command, str(estate.manifests)]
    if command == "facts":
        args += ["--server", "tapi01"]
        servers = [estate.server("tapi01")]
    child = start_cli(estate, *args)
    try:
        busy = wait_for(lambda: all(s.counters.messages.get("Receive") for s in servers), 30)
        assert busy, child.stderr.read() if child.poll() is not None and child.stderr else ""
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=15)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err
    for server in servers:
        assert server.open_shells == 0
        assert server.counters.signals == ["terminate"]
        assert server.counters.messages["Delete"] == 1
