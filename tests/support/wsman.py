"""Fixtures for the lab WS-Management server: a lab CA, started servers, a test command handler.

Tests that use them declare ``pytest_plugins = ["tests.support.wsman"]``::

    def test_something(start_wsman: StartWSMan) -> None:
        server = start_wsman(tls=True)                  # HTTPS, cert from the lab CA
        endpoint = endpoint_for(server)                 # a WinRMEndpoint that trusts that CA
"""

from __future__ import annotations

import hashlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests
from pypsrp import exceptions as pypsrp_errors
from pypsrp.shell import SignalCode, WinRS
from pypsrp.wsman import WSMan
from winrm import exceptions as pywinrm_errors
from winrm.protocol import Protocol as WinRMProtocol

from provisioner.lab.tls import LabTLS, ensure_lab_tls
from provisioner.lab.wsman_server import (
    OPERATION_TIMEOUT,
    CommandResult,
    WSManServer,
    command_environment,
)
from provisioner.secrets import Secret
from provisioner.transports.winrm import WinRMEndpoint

LAB_USER = "labadmin"
LAB_PASSWORD = "Kx9-wsman-Pa55!"  # unique enough to search for in error texts and logs


def echo_upper(command: str, arguments: list[str], stdin: bytes) -> CommandResult:
    """A pretend host with a few verbs; pywinrm sends all arguments as one text.

    ``upper`` prints stdin (UTF-8) upper-cased; ``echo`` prints its arguments; ``repeat N X``
    prints X N times; ``digest`` prints stdin's length and SHA-256; ``fail`` writes to stderr
    and exits 3; ``env NAME`` prints the variable NAME of the command's environment.
    """
    text = " ".join(arguments)
    if command == "env":
        return CommandResult(stdout=command_environment().get(text, "") + "\r\n")
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


# --- two independent WinRM clients behind one small interface -----------------------------------


class Refused(Exception):
    """What a client reported: a WSMan fault (``code``), or a bare HTTP status, or a 401."""

    def __init__(self, client: str, *, code: int | None = None, http: int | None = None) -> None:
        super().__init__(f"{client}: fault {code}, HTTP {http}")
        self.code = code  # WSManFault Code
        self.http = http  # HTTP status without a fault (401 for refused credentials)


class RawShell(Protocol):
    """One WinRS shell, driven one WSMan message at a time."""

    shell_id: str

    def command(self, command: str, arguments: list[str]) -> str: ...
    def send(self, command_id: str, data: bytes, end: bool) -> None: ...
    def receive(self, command_id: str) -> tuple[bytes, bytes, int | None]: ...
    def signal(self, command_id: str) -> None: ...
    def delete(self) -> None: ...


class Client(Protocol):
    name: str

    def open(
        self, *, codepage: int = 65001, environment: dict[str, str] | None = None
    ) -> RawShell: ...


def run_in(
    shell: RawShell, command: str, arguments: list[str], stdin: bytes = b""
) -> tuple[bytes, bytes, int]:
    """Command, Send, Receive until Done (OperationTimeout faults are waited out), Signal."""
    command_id = shell.command(command, arguments)
    if stdin:
        shell.send(command_id, stdin, True)
    out, err = b"", b""
    while True:
        try:
            more_out, more_err, code = shell.receive(command_id)
        except Refused as refused:
            if refused.code == OPERATION_TIMEOUT:
                continue
            raise
        out, err = out + more_out, err + more_err
        if code is not None:
            shell.signal(command_id)
            return out, err, code


class _PyWinRMShell:
    def __init__(self, protocol: Any, shell_id: str) -> None:
        self.protocol = protocol
        self.shell_id = shell_id

    def command(self, command: str, arguments: list[str]) -> str:
        return str(_pywinrm_call(self.protocol.run_command, self.shell_id, command, arguments))

    def send(self, command_id: str, data: bytes, end: bool) -> None:
        _pywinrm_call(self.protocol.send_command_input, self.shell_id, command_id, data, end)

    def receive(self, command_id: str) -> tuple[bytes, bytes, int | None]:
        out, err, code, done = _pywinrm_call(
            self.protocol.get_command_output_raw, self.shell_id, command_id
        )
        return out, err, code if done else None

    def signal(self, command_id: str) -> None:
        _pywinrm_call(self.protocol.cleanup_command, self.shell_id, command_id)

    def delete(self) -> None:
        _pywinrm_call(self.protocol.close_shell, self.shell_id, close_session=False)


@dataclass
class PyWinRMClient:
    """pywinrm's ``Protocol`` (``transport`` ntlm or basic)."""

    protocol: Any
    name: str = "pywinrm"

    def open(self, *, codepage: int = 65001, environment: dict[str, str] | None = None) -> RawShell:
        shell_id = _pywinrm_call(self.protocol.open_shell, codepage=codepage, env_vars=environment)
        return _PyWinRMShell(self.protocol, str(shell_id))


def _pywinrm_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except pywinrm_errors.WinRMOperationTimeoutError:
        raise Refused("pywinrm", code=OPERATION_TIMEOUT) from None
    except pywinrm_errors.WSManFaultError as exc:
        code = exc.wsman_fault_code if exc.wsman_fault_code is not None else exc.wmierror_code
        raise Refused("pywinrm", code=code) from None
    except pywinrm_errors.InvalidCredentialsError:
        raise Refused("pywinrm", http=401) from None
    except PermissionError:  # requests_ntlm: a 401 that holds no NTLM challenge
        raise Refused("pywinrm", http=401) from None
    except pywinrm_errors.WinRMTransportError as exc:
        raise Refused("pywinrm", http=exc.code) from None


class _PypsrpShell:
    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.shell_id = str(shell.id)

    def command(self, command: str, arguments: list[str]) -> str:
        response = _pypsrp_call(self.shell.command, command, arguments)
        return str(response.find("rsp:CommandResponse/rsp:CommandId", NAMESPACES).text)

    def send(self, command_id: str, data: bytes, end: bool) -> None:
        _pypsrp_call(self.shell.send, "stdin", data, command_id=command_id, end=end)

    def receive(self, command_id: str) -> tuple[bytes, bytes, int | None]:
        state, code, streams = _pypsrp_call(self.shell.receive, "stdout stderr", command_id)
        done = state.endswith("/Done")
        return streams["stdout"], streams["stderr"], code if done else None

    def signal(self, command_id: str) -> None:
        _pypsrp_call(self.shell.signal, SignalCode.TERMINATE, command_id)

    def delete(self) -> None:
        _pypsrp_call(self.shell.close)


@dataclass
class PypsrpClient:
    """pypsrp's ``WSMan`` and ``WinRS`` (``auth`` negotiate, its default, or basic)."""

    wsman: Any
    name: str = "pypsrp"

    def open(self, *, codepage: int = 65001, environment: dict[str, str] | None = None) -> RawShell:
        shell = WinRS(self.wsman, codepage=codepage, environment=environment)
        _pypsrp_call(shell.open)
        return _PypsrpShell(shell)


def _pypsrp_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except pypsrp_errors.WSManFaultError as exc:
        raise Refused("pypsrp", code=exc.code) from None
    except pypsrp_errors.AuthenticationError:
        raise Refused("pypsrp", http=401) from None
    except pypsrp_errors.WinRMTransportError as exc:
        raise Refused("pypsrp", http=exc.code) from None


def pywinrm_client(
    server: WSManServer, lab_tls: LabTLS, *, operation_timeout_s: int = 5, **kwargs: Any
) -> PyWinRMClient:
    kwargs.setdefault("transport", "ntlm" if server.scheme == "http" else "basic")
    kwargs.setdefault("username", LAB_USER)
    kwargs.setdefault("password", LAB_PASSWORD)
    kwargs.setdefault("operation_timeout_sec", operation_timeout_s)
    kwargs.setdefault("read_timeout_sec", operation_timeout_s + 5)
    protocol = WinRMProtocol(
        server.url,
        ca_trust_path=str(lab_tls.ca_file),
        server_cert_validation="validate",
        proxy=None,
        **kwargs,
    )
    return PyWinRMClient(protocol)


def pypsrp_client(
    server: WSManServer, lab_tls: LabTLS, *, operation_timeout_s: int = 5, **kwargs: Any
) -> PypsrpClient:
    kwargs.setdefault("auth", "negotiate")
    kwargs.setdefault("username", LAB_USER)
    kwargs.setdefault("password", LAB_PASSWORD)
    kwargs.setdefault("operation_timeout", operation_timeout_s)
    kwargs.setdefault("read_timeout", operation_timeout_s + 5)
    https = server.scheme == "https"
    wsman = WSMan(
        "127.0.0.1",
        port=server.port,
        ssl=https,
        cert_validation=str(lab_tls.ca_file) if https else False,
        encryption="never" if kwargs["auth"] == "basic" else "auto",
        **kwargs,
    )
    return PypsrpClient(wsman)


CLIENTS = {"pywinrm": pywinrm_client, "pypsrp": pypsrp_client}


class MakeClient(Protocol):
    def __call__(self, server: WSManServer, **kwargs: Any) -> Client: ...


@pytest.fixture(params=sorted(CLIENTS))
def make_client(request: pytest.FixtureRequest, lab_tls: LabTLS) -> Iterator[MakeClient]:
    """Each test that takes it runs once through pywinrm and once through pypsrp."""
    made: list[Client] = []

    def make(server: WSManServer, **kwargs: Any) -> Client:
        client: Client = CLIENTS[request.param](server, lab_tls, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        if isinstance(client, PypsrpClient):
            client.wsman.close()


# --- a third client: SOAP by hand, to read reply envelopes as they are -------------------------

NAMESPACES = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "p": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}


def soap(
    server: WSManServer,
    action: str,
    body: str = "",
    *,
    shell_id: str | None = None,
    options: dict[str, str] | None = None,
    max_envelope: int = 153_600,
) -> tuple[int, ET.Element | None]:
    """POST one hand-written envelope (Basic auth, plain HTTP): ``(HTTP status, reply root)``."""
    transfer = action in ("Create", "Delete")
    uri = (
        f"http://schemas.xmlsoap.org/ws/2004/09/transfer/{action}"
        if transfer
        else f"http://schemas.microsoft.com/wbem/wsman/1/windows/shell/{action}"
    )
    selector = (
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        if shell_id
        else ""
    )
    option_set = "".join(
        f'<w:Option Name="{name}">{value}</w:Option>' for name, value in (options or {}).items()
    )
    envelope = (
        f'<s:Envelope xmlns:s="{NAMESPACES["s"]}" xmlns:a="{NAMESPACES["a"]}" '
        f'xmlns:w="{NAMESPACES["w"]}" xmlns:rsp="{NAMESPACES["rsp"]}"><s:Header>'
        f"<a:To>{server.url}</a:To><a:Action>{uri}</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        f"<w:MaxEnvelopeSize>{max_envelope}</w:MaxEnvelopeSize>"
        f"<w:OperationTimeout>PT2S</w:OperationTimeout>{selector}"
        f"{f'<w:OptionSet>{option_set}</w:OptionSet>' if option_set else ''}"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
    reply = requests.post(
        server.url,
        data=envelope.encode(),
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
        auth=(LAB_USER, LAB_PASSWORD),
        timeout=10,
    )
    return reply.status_code, ET.fromstring(reply.content) if reply.content else None
