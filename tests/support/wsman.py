"""Fixtures for the lab WS-Management server: a lab CA, started servers, a test command handler.

Tests that use them declare ``pytest_plugins = ["tests.support.wsman"]``::

    def test_something(start_wsman: StartWSMan) -> None:
        server = start_wsman(tls=True)                  # HTTPS, cert from the lab CA
        endpoint = endpoint_for(server)                 # a WinRMEndpoint that trusts that CA
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from provisioner.lab.tls import LabTLS, ensure_lab_tls
from provisioner.lab.wsman_server import CommandResult, WSManServer
from provisioner.secrets import Secret
from provisioner.transports.winrm import WinRMEndpoint

LAB_USER = "labadmin"
LAB_PASSWORD = "Kx9-wsman-Pa55!"  # unique enough to search for in error texts and logs


def echo_upper(command: str, arguments: list[str], stdin: bytes) -> CommandResult:
    """A pretend host with a few verbs; pywinrm sends all arguments as one text.

    ``upper`` prints stdin (UTF-8) upper-cased; ``echo`` prints its arguments; ``repeat N X``
    prints X N times; ``digest`` prints stdin's length and SHA-256; ``fail`` writes to stderr
    and exits 3.
    """
    text = " ".join(arguments)
    if command == "upper":
        return CommandResult(stdout=stdin.decode("utf-8").upper())
    if command == "echo":
        return CommandResult(stdout=text + "\r\n")
    if command == "repeat":
        count, _, unit = text.partition(" ")
        return CommandResult(stdout=unit.encode() * int(count))
    if command == "digest":
        return CommandResult(stdout=f"{len(stdin)} {hashlib.sha256(stdin).hexdigest()}")
    if command == "fail":
        return CommandResult(stdout="partial\r\n", stderr=f"failed: {text}\r\n", exit_code=3)
    return CommandResult(stdout="", stderr=f"'{command}' is not recognized\r\n", exit_code=1)


class StartWSMan(Protocol):
    def __call__(self, *, tls: bool = False, **kwargs: Any) -> WSManServer: ...


@pytest.fixture(scope="session")
def lab_tls(tmp_path_factory: pytest.TempPathFactory) -> LabTLS:
    return ensure_lab_tls(tmp_path_factory.mktemp("lab-tls"))


@pytest.fixture(scope="session")
def foreign_tls(tmp_path_factory: pytest.TempPathFactory) -> LabTLS:
    """A second, unrelated CA: a client trusting it must refuse the lab's servers."""
    return ensure_lab_tls(tmp_path_factory.mktemp("foreign-tls"))


@pytest.fixture
def start_wsman(lab_tls: LabTLS) -> Iterator[StartWSMan]:
    """Start servers (``echo_upper`` and the lab account by default); all stop at teardown."""
    servers: list[WSManServer] = []

    def start(*, tls: bool = False, **kwargs: Any) -> WSManServer:
        kwargs.setdefault("username", LAB_USER)
        kwargs.setdefault("password", Secret(LAB_PASSWORD))
        handler = kwargs.pop("handler", echo_upper)
        server = WSManServer(
            handler, ssl_context=lab_tls.server_context() if tls else None, **kwargs
        )
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def endpoint_for(
    server: WSManServer, ca_file: Path | None = None, **overrides: Any
) -> WinRMEndpoint:
    """A basic-auth endpoint for ``server``: HTTPS trusting ``ca_file``, or HTTP with opt-in."""
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "scheme": server.scheme,
        "auth": "basic",
        "user": LAB_USER,
        "password": Secret(LAB_PASSWORD),
        "ca_file": str(ca_file) if ca_file else None,
        "allow_insecure": server.scheme == "http",
        "operation_timeout_s": 5,
        "read_timeout_s": 10,
    }
    settings.update(overrides)
    return WinRMEndpoint(**settings)
