"""Run a command in a network namespace of its own, and find what it left running.

Samba binds fixed ports, so a test that starts a DC beside the session's runs it in a fresh
network namespace. Every process a test starts carries a marker in its environment, which its
children (Samba, samba-tool) inherit, so what is left after a kill can be found::

    marker = new_marker()
    process = subprocess.Popen(in_new_network_namespace(["python", "-m", "provisioner", ...]),
                               env=marked(marker))
    process.kill()                          # unshare's child gets SIGKILL too (--kill-child)
    assert wait_until_gone(marker) == []    # pids still running, if any
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.ci import part_unavailable

MARKER_VARIABLE = "PROVISIONER_TEST_PROCESS_MARK"


def in_new_network_namespace(command: Sequence[str], *, kill_child: str = "KILL") -> list[str]:
    """``command`` run in a fresh network namespace with loopback up; when the returned
    process (unshare) ends, the command gets ``kill_child``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        part_unavailable(
            "a network namespace of its own needs root, unshare and ip", "a second Samba DC"
        )
    return [
        "unshare", "--net", "--fork", f"--kill-child={kill_child}",
        sys.executable, "-c", _LOOPBACK_UP_THEN_EXEC, *command,
    ]  # fmt: skip


# Loopback up, then the command, with SIGINT as a terminal gives it (a test run started in the
# background inherits SIGINT ignored, and then Ctrl-C could not be tried).
_LOOPBACK_UP_THEN_EXEC = (
    "import os, signal, subprocess, sys\n"
    "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def run_alone(
    command: Sequence[str], *, cwd: Path, timeout: float = 300, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``command`` to its end in a network namespace of its own; also what it left running
    (described, then killed, so that a failure does not hold ports for the next test)."""
    marker = new_marker()
    done = subprocess.run(
        in_new_network_namespace(command),
        cwd=cwd,
        env=marked(marker, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    left = wait_until_gone(marker)
    kill_all(left)
    return done, describe(left)


def new_marker() -> str:
    return secrets.token_hex(8)


def marked(marker: str, **extra: str) -> dict[str, str]:
    """The environment for a marked process."""
    return {**os.environ, MARKER_VARIABLE: marker, **extra}


def marked_processes(marker: str) -> list[int]:
    """Live processes (zombies aside) whose environment carries ``marker``."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environment and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, timeout: float = 60.0) -> list[int]:
    """Wait until no marked process runs; the pids still running when ``timeout`` is up."""
    deadline = time.monotonic() + timeout
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def describe(pids: Sequence[int]) -> list[str]:
    """``["4242 samba (S, parent 4100): samba: root process", ...]`` for an assertion message."""
    lines = []
    for pid in pids:
        try:
            status = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line
            )
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            lines.append(f"{pid} (gone)")
            continue
        state = status.get("State", "?").split()[0]
        lines.append(
            f"{pid} {status.get('Name', '?')} ({state}, parent {status.get('PPid', '?')}): "
            f"{command.strip()}"
        )
    return lines


def kill_all(pids: Sequence[int]) -> None:
    """Clean up after a failed test, so that one failure does not hold the ports for others."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
