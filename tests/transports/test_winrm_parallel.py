"""Many hosts at once: the transport must not touch process-wide state per request.

``requests`` sets and deletes ``os.environ["no_proxy"]`` around every request of a session that
trusts the environment and carries a ``no_proxy`` proxy setting (pywinrm's ``proxy=None``); a
thread that reads the environment meanwhile gets ``KeyError: 'no_proxy'``, and hosts were lost.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from provisioner.lab.tls import LabTLS
from provisioner.secrets import Secret
from provisioner.transports.winrm import WinRMEndpoint, WinRMError, WinRMSession
from tests.support.lab import EXAMPLES, running_lab
from tests.support.wsman import StartWSMan, endpoint_for

HOSTS = 20
COMMANDS_PER_HOST = 12


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    """Switch threads as often as CPython allows, so that races show up."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


class EnvironmentWatch(threading.Thread):
    """Reads the environment the way proxy look-ups do, and records every change it sees."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.start_keys = set(os.environ)
        self.changes: set[str] = set()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                keys = {name for name, _ in os.environ.items()}
            except (KeyError, RuntimeError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.changes |= keys ^ self.start_keys


def test_parallel_hosts_leave_the_environment_alone_and_lose_no_command(
    start_wsman: StartWSMan, lab_tls: LabTLS, tiny_switch_interval: None
) -> None:
    servers = [start_wsman(tls=True) for _ in range(HOSTS)]
    watch = EnvironmentWatch()
    watch.start()

    def drive(index: int) -> list[bytes]:
        endpoint = endpoint_for(servers[index], ca_file=lab_tls.ca_file)
        with WinRMSession(endpoint) as session:
            return [
                session.run("echo", [f"host{index}-{n}"]).stdout for n in range(COMMANDS_PER_HOST)
            ]

    try:
        with ThreadPoolExecutor(max_workers=HOSTS) as pool:
            outputs = list(pool.map(drive, range(HOSTS)))
    finally:
        watch.stop.set()
        watch.join()

    assert outputs == [
        [f"host{i}-{n}\r\n".encode() for n in range(COMMANDS_PER_HOST)] for i in range(HOSTS)
    ]
    assert watch.errors == []
    assert watch.changes == set(), f"the transport changed os.environ: {sorted(watch.changes)}"


class _NotWinRM(http.server.BaseHTTPRequestHandler):
    """A web server at the WinRM port that answers every request with a plain page."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"It works!"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_reply_that_is_not_ws_management_is_named_with_its_parse_error() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotWinRM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = WinRMEndpoint(
        "127.0.0.1",
        port=server.server_address[1],
        scheme="http",
        auth="basic",
        user="u",
        password=Secret("not-sent-anywhere-1"),
        allow_insecure=True,
    )
    try:
        with pytest.raises(WinRMError) as caught, WinRMSession(endpoint) as session:
            session.run("echo", ["x"])
    finally:
        server.shutdown()
        server.server_close()
    message = str(caught.value)
    assert "not valid WS-Management (ParseError" in message
    assert "is a WinRM listener" in message


def estate_with_workstations(directory: Path, count: int) -> Path:
    """The client-TAPI example with ``count`` workstations instead of three."""
    manifests = directory / "manifests"
    shutil.copytree(EXAMPLES / "client-tapi", manifests)
    hosts = ", ".join(f"ws-{n:04d}" for n in range(101, 101 + count))
    clients = manifests / "workstations.yaml"
    clients.write_text(re.sub(r"hosts: \[.*\]", f"hosts: [{hosts}]", clients.read_text()))
    return manifests


def test_a_plan_over_24_lab_hosts_loses_none_under_constant_thread_switching(
    tmp_path: Path, tiny_switch_interval: None
) -> None:
    """Issue 14: real WindowsHosts behind real listeners, ``plan`` working them all at once."""
    manifests = estate_with_workstations(tmp_path, 23)
    with running_lab(tmp_path, manifests) as estate:
        result = estate.plan("--parallelism", "24")
        commands = estate.commands()
    assert len(commands) == 24
    assert result.code == 2, result.output  # changes everywhere, and no problem
    assert commands == dict.fromkeys(commands, 1)  # one gather per host, none lost or repeated
    assert "retried" not in result.err
    assert "error" not in result.output.lower()
