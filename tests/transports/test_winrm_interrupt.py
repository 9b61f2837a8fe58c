"""Ctrl-C in the middle of a read: every WinRS shell is closed on the hosts, exit code 130.

The command line runs in a child process (a real SIGINT, as a terminal sends it); the lab's hosts
run in this process and hang in their gather, as a host whose command never returns would.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.lab import EXAMPLES, LabFor, provisioner_child


def wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


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
    child = provisioner_child(*args)
    try:
        busy = wait_for(lambda: all(s.counters.messages.get("Receive") for s in servers), 30)
        assert busy, child.stdout.read() if child.poll() is not None and child.stdout else ""
        child.send_signal(signal.SIGINT)
        said, _ = child.communicate(timeout=15)
    finally:
        child.kill()
    assert child.returncode == 130, said
    assert said.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in said
    for server in servers:
        assert server.open_shells == 0
        assert server.counters.signals == ["terminate"]
        assert server.counters.messages["Delete"] == 1
