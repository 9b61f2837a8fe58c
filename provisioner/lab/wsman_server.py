"""A WS-Management (WinRS shell) server on loopback that plays a Windows WinRM listener.

It knows nothing about Windows itself: every finished command goes to the handler it was given,
which plays the host. A handler that upper-cases its input::

    def upper(command: str, arguments: list[str], stdin: bytes) -> CommandResult:
        return CommandResult(stdout=stdin.upper())

    with WSManServer(upper, username="lab", password=Secret("pw")) as server:
        server.url            # 'http://127.0.0.1:40123/wsman'
        server.counters       # ServerCounters(messages={'Create': 1, ...}, commands=1, ...)

A handler reads the variables the client set with ``rsp:Environment`` through
:func:`command_environment`, as a Windows process reads its environment block.

What it implements (MS-WSMV, the subset WinRS clients use): the shell life cycle (Create,
Command, Send, Receive, Signal, Delete), ``OperationTimeout``, Basic, NTLM and Negotiate
(SPNEGO) auth with ``multipart/encrypted`` message encryption over plain HTTP (pyspnego as the
acceptor), fault injection (:class:`Faults`, changeable while the server runs) and
:class:`ServerCounters` (messages per action, every command line, stdin payload and option set,
so tests can search them for secrets). Two independent clients, pywinrm and pypsrp, are tested
against it, so it cannot lean on one client's habits.

Windows' rules it enforces, each from a public source, written down before the client's
handling of them was looked at (sources listed below the table):

===  ==========================================================================  ==============
#    rule                                                                        source
===  ==========================================================================  ==============
Q1   A request larger than MaxEnvelopeSizekb x 1024 bytes (default 500 KB) is    [MS-WSMV]
     refused before any SOAP processing: HTTP 413, empty body.                   2.2.4.10,
                                                                                 [INST], [413]
Q2   A reply never exceeds the smaller of the client's ``wsman:MaxEnvelopeSize`` [MS-WSMV]
     and MaxEnvelopeSizekb x 1024; a client asking for fewer than 8192 octets    3.1.4.1.7,
     gets ``w:EncodingLimit`` (ERROR_WSMAN_MAXENVELOPE_SIZE_NOT_SUPPORTED).      [WSMERR]
Q3   MaxShellsPerUser 30: the 31st open shell of one user is refused by Create   [QUOTAS],
     with ``w:QuotaLimit``, code 2150859173 (0x803381A5).                        [MS-WSMV]
                                                                                 3.1.4.5.2.1,
                                                                                 [SHELLS]
Q4   MaxConcurrentOperationsPerUser 1500: beyond it a Create or Command is       [INST], [OPS],
     refused with ``w:QuotaLimit``, code 2150859174 (0x803381A6). A Signal       [MS-WSMV]
     (Terminate) does not give a text shell's operation back; deleting the       note 118
     shell does. The model counts the shell and every command started in it
     (which other requests count is not documented: GUESS).
F1   Receive, Send or Signal naming an unknown CommandId: HTTP 500,              [REC]
     ``s:Sender`` / ``w:InvalidSelectors``, ``w:FaultDetail`` ending in          bad_cmd_id,
     ``UnexpectedSelectors``, WSManFault code 2150858843, message about a        receive_failure
     command identifier that does not exist.
F2   Any request naming an unknown ShellId (deleted, expired, service            [REC]
     restarted): the same subcode, FaultDetail and code, the message nested in   is_alive_invalid
     an ``f:ProviderFault`` of the "Shell provider".                             _selectors
F3   A Receive with nothing to return within ``OperationTimeout``: HTTP 500,     [REC]
     ``s:Receiver`` / ``w:TimedOut``, code 2150858793; the command runs on.      operation_timeout
F4   Fault detail elements declare ``xmlns:f`` on ``f:WSManFault`` itself, with  [REC]
     the listener's ``Machine`` attribute.
H1   Reply headers carry ``p:ActivityId`` (an upper-case GUID, ``p`` bound to    [REC]
     the Microsoft wsman.xsd namespace) besides Action, MessageID, To and        bad_cmd_id,
     RelatesTo; clients must ignore it.                                          environment
C1   CreateResponse: ``x:ResourceCreated`` with the listener's URL as            [REC] standard,
     ``a:Address``; ``rsp:Shell`` with ShellId, ResourceUri, Owner (the user),   environment
     ClientIP, the Environment asked for, IdleTimeOut ``PT7200.000S``,
     InputStreams, OutputStreams, ShellRunTime and ShellInactivity
     ``P0DT0H0M0S``, in that order.
C2   Variables sent in ``rsp:Environment`` at Create are in the environment of   [CREATE], [REC]
     every command started in that shell (``cmd /c set`` lists them); names      environment
     and values may hold any character.
C3   Send accepts ``End`` as ``true``/``True``; Signal of a finished command     [REC] send,
     answers SignalResponse (pypsrp signals ctrl_c after Done); Delete answers   standard;
     an empty body.                                                              [PYWINRM]
S1   powershell.exe that fails before its script runs (Constrained Language      [PYWINRM]
     Mode, a missing assembly) writes ``#< CLIXML`` and an ``<Objs>`` document   test_session,
     to stderr: progress records, then one ``<S S="Error">`` element per line,   [ANSIBLE]
     control characters as ``_xHHHH_`` (CR LF as ``_x000D__x000A_``, a literal
     ``_x`` as ``_x005F_x``); exit code 1, nothing on stdout.
===  ==========================================================================  ==============

Sources:

* [INST] Microsoft Learn, "Installation and configuration for Windows Remote Management":
  MaxEnvelopeSizekb 500, MaxConcurrentOperationsPerUser 1500 (winrm/config/service).
  https://learn.microsoft.com/windows/win32/winrm/installation-and-configuration-for-windows-remote-management
* [QUOTAS] Microsoft Learn, "Quota Management for Remote Shells": MaxShellsPerUser 30.
  https://learn.microsoft.com/windows/win32/winrm/quotas
* [MS-WSMV] Microsoft Open Specifications, Web Services Management Protocol Extensions for
  Windows Vista: 2.2.4.10 ConfigType (MaxEnvelopeSizekb also limits request packets),
  3.1.4.1.7 wsman:MaxEnvelopeSize, 3.1.4.5.2.1 wsman:QuotaLimit, and product behaviour note
  118 to 3.1.4.12 (Signal Terminate does not decrement MaxConcurrentOperationsPerUser for a
  text-based command shell; cited by ansible/ansible pull request 83656).
* [WSMERR] the Win32 metadata's RemoteManagement constants (as published in Microsoft's
  windows-rs documentation): ERROR_WSMAN_MAXENVELOPE_SIZE_NOT_SUPPORTED = 2150858862.
* [413] ansible-collections/ansible.windows issues 391 and 620: a request over the default
  MaxEnvelopeSizekb is answered with HTTP 413 by the WinRM service (maintainer's analysis).
* [SHELLS], [OPS] the fault codes as real hosts report them: test-kitchen issue 656
  (2150859173, "maximum number of ... concurrent shells"), masterzen/winrm issue 129 and
  dmitry-zaets/vagrantfile-windows-iis-mssql issue 7 (2150859174, "... concurrent operations").
* [REC] envelopes recorded from real Windows hosts in pypsrp's test suite,
  ``tests/tests_pypsrp/responses/test_winrs_*.yml`` and ``test_psrp_*.yml`` (file suffixes
  named in the table).
* [PYWINRM] pywinrm's ``winrm/tests/conftest.py`` (DeleteResponse) and
  ``winrm/tests/test_session.py`` (a CLIXML error document from a real host).
* [ANSIBLE] Ansible's ``_parse_clixml`` (``plugins/shell/powershell.py``) and its unit tests:
  several ``<Objs>`` documents, ``S="Error"`` lines, ``_xHHHH_`` escapes incl. surrogate pairs.
* [CREATE] Microsoft Learn, WSManCreateShell and WSMAN_ENVIRONMENT_VARIABLE (wsman.h).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import contextvars
import hmac
import logging
import os
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Protocol
from xml.sax.saxutils import escape, quoteattr

from provisioner.secrets import Secret

log = logging.getLogger(__name__)

# WSMan fault codes as Windows reports them in <f:WSManFault Code="..."> (wsmerror.h).
OPERATION_TIMEOUT = 2150858793  # 0x80338029: nothing to return within OperationTimeout (F3)
INVALID_SELECTORS = 2150858843  # 0x8033805B: unknown ShellId or CommandId (F1, F2)
ENVELOPE_SIZE_NOT_SUPPORTED = 2150858862  # 0x8033806E: MaxEnvelopeSize below 8192 (Q2)
MAX_SHELLS_EXCEEDED = 2150859173  # 0x803381A5 ERROR_WSMAN_QUOTA_MAX_SHELLS (Q3)
MAX_OPERATIONS_EXCEEDED = 2150859174  # 0x803381A6 ERROR_WSMAN_QUOTA_MAX_OPERATIONS (Q4)
INVALID_PARAMETER = 87  # Win32 ERROR_INVALID_PARAMETER, which Windows puts in some WSMan faults

MAX_ENVELOPE_KB = 500  # MaxEnvelopeSizekb (Q1)
MAX_SHELLS_PER_USER = 30  # MaxShellsPerUser (Q3)
MAX_OPERATIONS_PER_USER = 1_500  # MaxConcurrentOperationsPerUser (Q4)
IDLE_TIMEOUT = "PT7200.000S"  # what a default listener reports in CreateResponse (C1)
_MIN_CLIENT_ENVELOPE = 8_192  # Q2

_SOAP = "http://www.w3.org/2003/05/soap-envelope"
_ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
_WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
_MS_WSMAN = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd"
_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
_FAULT_NS = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"
_WMI_ERROR_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/MSFT_WmiError"
_FAULT_DETAIL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail"
_SHELL_URI = f"{_SHELL}/cmd"
_ANONYMOUS = f"{_ADDRESSING}/role/anonymous"
_COMMAND_DONE = f"{_SHELL}/CommandState/Done"
_COMMAND_RUNNING = f"{_SHELL}/CommandState/Running"
_FAULT_ACTION = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"

_ENCRYPTED_CONTENT_TYPE = 'multipart/encrypted;protocol="{protocol}";boundary="Encrypted Boundary"'
_BOUNDARY = b"--Encrypted Boundary"
_DEFAULT_CLIENT_ENVELOPE = 153_600  # what a client that names no MaxEnvelopeSize gets
# Bytes a Receive reply needs besides its stream data (header, CommandState, End markers).
_RECEIVE_SKELETON_RESERVE = 2_048

Action = Literal["Create", "Command", "Send", "Receive", "Signal", "Delete"]

_ENVIRONMENT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("wsman_environment")


def command_environment() -> dict[str, str]:
    """Inside a handler: the variables the client set with ``rsp:Environment`` (rule C2)."""
    return dict(_ENVIRONMENT.get({}))


@dataclass
class CommandResult:
    """What a command printed and returned.

    ``str`` output is encoded with the shell's codepage (``WINRS_CODEPAGE``: 65001 is UTF-8,
    437 replaces what cp437 lacks with ``?``), as the Windows console would; ``bytes`` go
    out unchanged.
    """

    stdout: bytes | str
    stderr: bytes | str = b""
    exit_code: int = 0


class CommandOutput(Protocol):
    """What the server reads from a handler's answer: :class:`CommandResult` or alike."""

    @property
    def stdout(self) -> bytes | str: ...
    @property
    def stderr(self) -> bytes | str: ...
    @property
    def exit_code(self) -> int: ...


CommandHandler = Callable[[str, list[str], bytes], CommandOutput]
"""``handler(command, arguments, stdin) -> CommandResult``, called once stdin has ended."""


def clixml_error(lines: list[str]) -> bytes:
    """What powershell.exe writes to stderr when it fails before its script runs (rule S1).

    A progress record first, as a host that loads modules writes one, then each line as one
    error string; characters XML 1.0 cannot carry, and a literal ``_x``, as ``_xHHHH_``.
    """

    def escaped(text: str) -> str:
        out = []
        for char in text:
            code = ord(char)
            if char == "_":
                out.append("_x005F_")
            elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
                out.append(f"_x{code:04X}_")
            elif code > 0xFFFF:  # a surrogate pair, one escape per UTF-16 code unit
                high, low = divmod(code - 0x10000, 0x400)
                out.append(f"_x{0xD800 + high:04X}__x{0xDC00 + low:04X}_")
            else:
                out.append(char)
        return escape("".join(out))

    strings = "".join(f'<S S="Error">{escaped(line + chr(13) + chr(10))}</S>' for line in lines)
    return (
        "#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject'
        '</T><T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record">'
        "<AV>Preparing modules for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC>"
        "<T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
        f"{strings}</Objs>"
    ).encode()


@dataclass
class Faults:
    """Trouble to inject; change the fields while the server runs.

    Message numbers count WSMan messages since start (or the last ``counters.reset()``), from 1.
    ``*_times`` fields count down as faults fire; ``None`` means "every time".

    >>> faults = Faults(fault_on_action="Receive", fault_code=INVALID_SELECTORS, fault_times=1)
    >>> faults.fault_on_action, faults.fault_code, faults.fault_times   # the next Receive faults
    ('Receive', 2150858843, 1)
    """

    latency_s: float = 0.0  # added before answering each message
    drop_after_messages: int | None = None  # close the connection, unanswered, after N messages
    drop_times: int | None = None
    fault_code: int = OPERATION_TIMEOUT  # what the two fault_on_* fields answer with
    fault_on_message: int | None = None  # answer message N with fault_code (fires once)
    fault_on_action: str | None = None  # answer this action ("Command", "Receive", ...)
    fault_times: int | None = None
    # Send injected faults as MSFT_WmiError (error_Code) instead of a WSManFault element: how
    # Windows often reports the MaxConcurrentOperationsPerUser quota.
    fault_as_wmi_error: bool = False
    http_status_on_action: tuple[str, int] | None = None  # ("Receive", 503): a bare HTTP error
    http_status_times: int | None = None
    cut_reply_on_action: str | None = None  # send half of this action's reply, then hang up
    cut_reply_times: int | None = None
    reject_credentials: bool = False  # every request gets HTTP 401
    handler_delay_s: float = 0.0  # hold each command's result back this long
    # powershell.exe fails before its script runs (Constrained Language Mode, a missing
    # assembly): these lines go to stderr as CLIXML, exit code 1, the handler is not called.
    powershell_fails_with: list[str] | None = None


@dataclass
class ServerCounters:
    """What the server received; tests read it and call :meth:`reset` between phases."""

    messages: dict[str, int] = field(default_factory=dict)  # {"Create": 1, "Receive": 12, ...}
    commands: int = 0
    command_lines: list[str] = field(default_factory=list)  # "powershell -NoProfile -"
    command_options: list[dict[str, str]] = field(default_factory=list)  # wsman:OptionSet each
    stdin_payloads: list[bytes] = field(default_factory=list)  # one whole stdin per command
    signals: list[str] = field(default_factory=list)  # the last segment of each Signal code
    largest_request_bytes: int = 0  # largest SOAP envelope received (decrypted)
    largest_reply_bytes: int = 0  # largest SOAP envelope sent (before encryption)
    unauthorized_replies: int = 0  # HTTP 401s sent (NTLM's first round trip is one)
    connections: int = 0  # TCP connections accepted: keep-alive keeps this at 1 per client

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    def reset(self) -> None:
        fresh = ServerCounters()
        for name in vars(fresh):
            setattr(self, name, getattr(fresh, name))


class WSManServer:
    """One simulated WinRM listener on 127.0.0.1 with one local account.

    ``ssl_context`` makes it HTTPS (see :mod:`provisioner.lab.tls`); without it the server
    speaks plain HTTP, where Basic is accepted only while ``allow_unencrypted`` (Windows'
    AllowUnencrypted) and NTLM or Negotiate requests are message-encrypted. The quotas are
    Windows' defaults unless given (rules Q1 to Q4).
    """

    def __init__(
        self,
        handler: CommandHandler,
        *,
        username: str,
        password: Secret,
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
        allow_unencrypted: bool = True,
        ntlm: bool = True,
        faults: Faults | None = None,
        max_shells: int = MAX_SHELLS_PER_USER,
        max_operations: int = MAX_OPERATIONS_PER_USER,
        max_envelope_kb: int = MAX_ENVELOPE_KB,
        max_output_per_receive: int = 100_000,
    ) -> None:
        self.handler = handler
        self.username = username
        self._password = password
        self.ssl_context = ssl_context
        self.allow_unencrypted = allow_unencrypted
        self.ntlm = ntlm
        self.faults = faults or Faults()
        self.max_shells = max_shells
        self.max_operations = max_operations
        self.max_envelope_kb = max_envelope_kb
        self.max_output_per_receive = max_output_per_receive
        self.counters = ServerCounters()
        self.handler_errors: list[BaseException] = []  # exceptions the handler raised

        self._requested_port = port
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a command finished, or stopping
        self._shells: dict[str, _Shell] = {}
        self._workers: set[threading.Thread] = set()
        self._stopping = False
        self._stopped = threading.Event()  # ends handler delays at stop()
        self._ntlm_dir: tempfile.TemporaryDirectory[str] | None = None
        self._http: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> WSManServer:
        if self._http is not None:
            raise RuntimeError("the WSMan server is already running")
        self._stopping = False
        self._stopped.clear()
        if self.ntlm:
            _teach_account_lookup()
            self._ntlm_dir = tempfile.TemporaryDirectory(prefix="wsman-ntlm-")
            _write_ntlm_user_file(self._ntlm_file, self.username, self._password)
        self._http = _HTTPServer(("127.0.0.1", self._requested_port), self)
        self._serve_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"wsman-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, close every connection, and join the server's threads."""
        http = self._http
        if http is None:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._stopped.set()
        http.shutdown()
        http.close_connections()
        http.server_close()  # joins the connection threads
        if self._serve_thread is not None:
            self._serve_thread.join()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            # A handler cannot be interrupted; a slow one is left to finish as a daemon thread.
            worker.join(timeout=5)
        with self._lock:
            self._shells.clear()
        if self._ntlm_dir is not None:
            self._ntlm_dir.cleanup()
            self._ntlm_dir = None
        self._http = None
        self._serve_thread = None

    def __enter__(self) -> WSManServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the WSMan server is not running")
        return int(self._http.server_address[1])

    @property
    def scheme(self) -> Literal["http", "https"]:
        return "https" if self.ssl_context else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/wsman"

    @property
    def open_shells(self) -> int:
        with self._lock:
            return len(self._shells)

    @property
    def operations(self) -> int:
        """Operations held against MaxConcurrentOperationsPerUser now (rule Q4)."""
        with self._lock:
            return self._operations_held()

    # -- HTTP: size, auth and encryption -------------------------------------------------------

    def _handle_post(self, request: _RequestHandler, body: bytes) -> None:
        if request.path.split("?")[0] != "/wsman":
            request.send_reply(404, b"")
            return
        if not self._authenticated(request):
            return
        if not body:
            # The empty request clients send to set up the NTLM security context.
            request.send_reply(200, b"")
            return
        if len(body) > self.max_envelope_kb * 1024:
            request.send_reply(413, b"")  # Q1: refused before any SOAP processing
            return
        content_type_of_request = request.headers.get("Content-Type", "")
        encrypted = content_type_of_request.startswith("multipart/encrypted")
        if encrypted:
            if request.auth_context is None or not request.auth_context.complete:
                request.send_reply(400, b"")
                return
            try:
                body = _unwrap_message(request.auth_context, body)
            except Exception:
                log.debug("could not decrypt a WSMan message", exc_info=True)
                request.send_reply(400, b"")
                return
        elif self.ssl_context is None and not self.allow_unencrypted:
            # What Windows answers when AllowUnencrypted is false: a bare 500, no SOAP fault.
            request.send_reply(500, b"")
            return

        outcome = self._handle_envelope(body, _Client(request.client_address[0], request.user))
        if outcome is None:
            request.drop()
            return
        status, reply, cut = outcome
        content_type = "application/soap+xml;charset=UTF-8"
        if encrypted and request.auth_context is not None and reply:
            protocol = content_type_of_request.split('protocol="', 1)[-1].split('"', 1)[0]
            reply = _wrap_message(request.auth_context, reply, protocol)
            content_type = _ENCRYPTED_CONTENT_TYPE.format(protocol=protocol)
        request.send_reply(status, reply, content_type, cut=cut)

    def _authenticated(self, request: _RequestHandler) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if self.faults.reject_credentials:
            return self._refuse(request)
        if request.auth_context is not None and request.auth_context.complete and not header:
            return True  # NTLM authenticates the connection, not each request
        if scheme.lower() == "basic":
            if self._check_basic(token):
                request.user = self.username
                return True
            return self._refuse(request)
        if scheme.lower() in ("negotiate", "ntlm") and self.ntlm:
            return self._step_ntlm(request, scheme, token)
        return self._refuse(request)

    def _check_basic(self, token: str) -> bool:
        try:
            user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
        except ValueError:
            return False
        # Both compared in full (no short cut), as bytes: compare_digest refuses non-ASCII str.
        user_ok = hmac.compare_digest(user.lower().encode(), self.username.lower().encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.reveal().encode())
        return user_ok and password_ok

    def _step_ntlm(self, request: _RequestHandler, scheme: str, token: str) -> bool:
        """One step of NTLM, raw or wrapped in SPNEGO (what ``Negotiate`` clients send)."""
        import spnego  # imported here: only servers with NTLM need it

        try:
            in_token = base64.b64decode(token)
            with _accounts_for_this_thread(self._ntlm_file):
                if request.auth_context is None or request.auth_context.complete:
                    # The negotiate acceptor takes both a SPNEGO token and a bare NTLM one.
                    request.auth_context = spnego.server(
                        protocol="negotiate", options=spnego.NegotiateOptions.use_negotiate
                    )
                out_token = request.auth_context.step(in_token)
        except Exception:
            log.debug("NTLM step refused", exc_info=True)
            request.auth_context = None
            return self._refuse(request)
        answer = f"{scheme} {base64.b64encode(out_token).decode()}" if out_token else None
        if not request.auth_context.complete:
            request.send_reply(401, b"", extra_headers={"WWW-Authenticate": answer or scheme})
            return False
        # SPNEGO ends with a token the client needs (mechListMIC): it rides on the reply.
        request.pending_auth_header = answer
        request.user = str(request.auth_context.client_principal or self.username)
        return True

    @property
    def _ntlm_file(self) -> Path:
        assert self._ntlm_dir is not None
        return Path(self._ntlm_dir.name) / "ntlm-users"

    def _refuse(self, request: _RequestHandler) -> bool:
        with self._lock:
            self.counters.unauthorized_replies += 1
        challenges = ['Basic realm="WSMAN"']
        if self.ntlm:
            challenges.append("Negotiate")
        request.send_reply(401, b"", extra_headers={"WWW-Authenticate": ", ".join(challenges)})
        return False

    # -- WSMan: faults injected, then the shell protocol ----------------------------------------

    def _handle_envelope(self, body: bytes, client: _Client) -> tuple[int, bytes, bool] | None:
        """``(HTTP status, SOAP reply, cut it off)``, or ``None`` to drop the connection."""
        try:
            message = _Message.parse(body)
        except (ET.ParseError, ValueError) as exc:
            return 400, f"malformed WSMan message: {exc}".encode(), False

        faults = self.faults
        with self._lock:
            counters = self.counters
            counters.messages[message.action] = counters.messages.get(message.action, 0) + 1
            counters.largest_request_bytes = max(counters.largest_request_bytes, len(body))
            number = counters.total_messages
            after = faults.drop_after_messages
            drop = _fire(faults, "drop_times", after is not None and number > after)
            injected: int | None = None
            if faults.fault_on_message == number:
                faults.fault_on_message = None
                injected = faults.fault_code
            elif _fire(faults, "fault_times", faults.fault_on_action == message.action):
                injected = faults.fault_code
            status_fault = faults.http_status_on_action
            bare_status = _fire(
                faults,
                "http_status_times",
                status_fault is not None and status_fault[0] == message.action,
            )
            cut = _fire(faults, "cut_reply_times", faults.cut_reply_on_action == message.action)
        if faults.latency_s:
            time.sleep(faults.latency_s)
        if drop:
            return None
        if bare_status and status_fault is not None:
            return status_fault[1], b"", False
        try:
            if injected is not None:
                raise self._fault_for(injected, message)
            reply = self._dispatch(message, client)
            status = 200
        except _WSManFault as fault:
            status, reply = (
                500,
                _fault(message, fault, wmi=injected is not None and faults.fault_as_wmi_error),
            )
        with self._lock:
            self.counters.largest_reply_bytes = max(self.counters.largest_reply_bytes, len(reply))
        return status, reply, cut

    def _dispatch(self, message: _Message, client: _Client) -> bytes:
        if message.resource_uri != _SHELL_URI:
            raise _WSManFault(
                INVALID_PARAMETER, "The resource URI is not supported.", "w:InvalidParameter"
            )
        if message.max_envelope_bytes < _MIN_CLIENT_ENVELOPE:
            raise self._fault_for(ENVELOPE_SIZE_NOT_SUPPORTED, message)  # Q2
        if message.action == "Create":
            return self._create(message, client)
        shell = self._shell(message)
        if message.action == "Delete":
            return self._delete(message, shell)
        if message.action == "Command":
            return self._command(message, shell)
        if message.action == "Send":
            return self._send(message, shell)
        if message.action == "Receive":
            return self._receive(message, shell)
        if message.action == "Signal":
            return self._signal(message, shell)
        raise _WSManFault(
            INVALID_PARAMETER,
            f"The action {message.action} is not supported.",
            "a:ActionNotSupported",
        )

    def _create(self, message: _Message, client: _Client) -> bytes:
        codepage = int(message.options.get("WINRS_CODEPAGE") or 437)
        try:
            encoding = codecs.lookup(f"cp{codepage}").name
        except LookupError:
            raise _WSManFault(
                INVALID_PARAMETER, f"WINRS_CODEPAGE {codepage} is not valid.", "w:InvalidOptions"
            ) from None
        variables = message.body.findall(
            f"{{{_SHELL}}}Shell/{{{_SHELL}}}Environment/{{{_SHELL}}}Variable"
        )
        environment = {v.get("Name", ""): v.text or "" for v in variables}
        shell = _Shell(id=_new_id(), codepage=codepage, encoding=encoding, environment=environment)
        with self._lock:
            if len(self._shells) >= self.max_shells:
                raise self._fault_for(MAX_SHELLS_EXCEEDED, message)
            if self._operations_held() >= self.max_operations:
                raise self._fault_for(MAX_OPERATIONS_EXCEEDED, message)
            self._shells[shell.id] = shell
        echoed = "".join(
            f"<rsp:Variable Name={quoteattr(name)}>{escape(value)}</rsp:Variable>"
            for name, value in environment.items()
        )
        return _envelope(
            f"{_TRANSFER}/CreateResponse",
            message,
            f"<x:ResourceCreated><a:Address>{escape(self.url)}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{_SHELL_URI}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            f"</a:ReferenceParameters></x:ResourceCreated>"
            f'<rsp:Shell xmlns:rsp="{_SHELL}"><rsp:ShellId>{shell.id}</rsp:ShellId>'
            f"<rsp:ResourceUri>{_SHELL_URI}</rsp:ResourceUri>"
            f"<rsp:Owner>{escape(client.user)}</rsp:Owner>"
            f"<rsp:ClientIP>{escape(client.address)}</rsp:ClientIP>"
            + (f"<rsp:Environment>{echoed}</rsp:Environment>" if environment else "")
            + f"<rsp:IdleTimeOut>{IDLE_TIMEOUT}</rsp:IdleTimeOut>"
            "<rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>"
            "<rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            "<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>",
        )

    def _delete(self, message: _Message, shell: _Shell) -> bytes:
        with self._changed:
            self._shells.pop(shell.id, None)
            shell.commands.clear()
            self._changed.notify_all()  # a Receive waiting in this shell answers F2 now
        return _envelope(f"{_TRANSFER}/DeleteResponse", message, "")

    def _shell(self, message: _Message) -> _Shell:
        with self._lock:
            shell = self._shells.get(message.shell_id or "")
        if shell is None:
            raise self._fault_for(INVALID_SELECTORS, message)  # F2
        return shell

    def _command(self, message: _Message, shell: _Shell) -> bytes:
        line = message.body.find(f"{{{_SHELL}}}CommandLine")
        if line is None:
            raise _WSManFault(
                INVALID_PARAMETER,
                "The Command request holds no rsp:CommandLine.",
                "w:InvalidParameter",
            )
        command = _Command(
            id=_new_id(),
            command=line.findtext(f"{{{_SHELL}}}Command") or "",
            arguments=[a.text or "" for a in line.iterfind(f"{{{_SHELL}}}Arguments")],
        )
        with self._lock:
            if self._operations_held() >= self.max_operations:
                raise self._fault_for(MAX_OPERATIONS_EXCEEDED, message)
            shell.commands[command.id] = command
            shell.operations += 1  # held until the shell is deleted (Q4)
            self.counters.commands += 1
            self.counters.command_lines.append(" ".join([command.command, *command.arguments]))
            self.counters.command_options.append(dict(message.options))
        return _envelope(
            f"{_SHELL}/CommandResponse",
            message,
            f"<rsp:CommandResponse><rsp:CommandId>{command.id}</rsp:CommandId></rsp:CommandResponse>",
        )

    def _send(self, message: _Message, shell: _Shell) -> bytes:
        stream = message.body.find(f"{{{_SHELL}}}Send/{{{_SHELL}}}Stream")
        if stream is None or stream.get("Name") != "stdin":
            raise _WSManFault(
                INVALID_PARAMETER,
                "The Send request holds no stdin rsp:Stream.",
                "w:InvalidParameter",
            )
        command = self._command_of(shell, stream.get("CommandId"), message)
        with self._lock:
            if command.stdin_ended:
                raise _WSManFault(
                    INVALID_PARAMETER, "The stdin of this command has ended.", "w:InvalidParameter"
                )
            command.stdin.append(base64.b64decode(stream.text or ""))
            command.stdin_ended = stream.get("End", "false").lower() == "true"  # C3
            if command.stdin_ended:
                self._start(shell, command)
        return _envelope(f"{_SHELL}/SendResponse", message, "<rsp:SendResponse/>")

    def _receive(self, message: _Message, shell: _Shell) -> bytes:
        desired = message.body.find(f"{{{_SHELL}}}Receive/{{{_SHELL}}}DesiredStream")
        command_id = None if desired is None else desired.get("CommandId")
        command = self._command_of(shell, command_id, message)
        with self._changed:
            if not command.started and not command.stdin:
                self._start(shell, command)  # a command that got no stdin runs at once
            waited = self._changed.wait_for(
                lambda: (
                    command.finished
                    or bool(command.output)
                    or self._stopping
                    or shell.commands.get(command.id) is not command
                ),
                timeout=message.operation_timeout_s,
            )
            if self._stopping or shell.id not in self._shells:
                raise self._fault_for(INVALID_SELECTORS, message)  # F2: the shell went away
            if shell.commands.get(command.id) is not command:
                raise self._fault_for(INVALID_SELECTORS, message, command=True)  # F1
            if not waited:
                raise self._fault_for(OPERATION_TIMEOUT, message)  # F3
            limit = min(message.max_envelope_bytes, self.max_envelope_kb * 1024)  # Q2
            streams = self._take_output(command, limit)
            done = command.finished and not command.output
        state = _COMMAND_DONE if done else _COMMAND_RUNNING
        exit_code = f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode>" if done else ""
        end_markers = (
            f'<rsp:Stream Name="stdout" CommandId="{command.id}" End="true"></rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{command.id}" End="true"></rsp:Stream>'
            if done
            else ""
        )
        return _envelope(
            f"{_SHELL}/ReceiveResponse",
            message,
            f"<rsp:ReceiveResponse>{streams}{end_markers}"
            f'<rsp:CommandState CommandId="{command.id}" State="{state}">{exit_code}'
            f"</rsp:CommandState></rsp:ReceiveResponse>",
        )

    def _take_output(self, command: _Command, max_envelope_bytes: int) -> str:
        """Stream elements for as much pending output as one reply may carry (lock held)."""
        room = max_envelope_bytes - _RECEIVE_SKELETON_RESERVE
        raw_left = self.max_output_per_receive
        parts: list[str] = []
        while command.output and raw_left > 0:
            name, data = command.output[0]
            opening = f'<rsp:Stream Name="{name}" CommandId="{command.id}">'
            fits = max((room - len(opening) - len("</rsp:Stream>")) // 4 * 3, 0)
            take = min(len(data), fits, raw_left)
            if take <= 0:
                break
            parts.append(f"{opening}{base64.b64encode(data[:take]).decode()}</rsp:Stream>")
            room -= len(parts[-1])
            raw_left -= take
            if take == len(data):
                command.output.popleft()
            else:
                command.output[0] = (name, data[take:])
        return "".join(parts)

    def _signal(self, message: _Message, shell: _Shell) -> bytes:
        signal = message.body.find(f"{{{_SHELL}}}Signal")
        command = self._command_of(
            shell, None if signal is None else signal.get("CommandId"), message
        )
        code = "" if signal is None else signal.findtext(f"{{{_SHELL}}}Code") or ""
        with self._changed:
            # The command ends (a Receive waiting on it answers F1), but its operation stays
            # counted until the shell is deleted (Q4).
            shell.commands.pop(command.id, None)
            self.counters.signals.append(code.rsplit("/", 1)[-1])
            self._changed.notify_all()
        return _envelope(f"{_SHELL}/SignalResponse", message, "<rsp:SignalResponse/>")

    def _command_of(self, shell: _Shell, command_id: str | None, message: _Message) -> _Command:
        with self._lock:
            command = shell.commands.get(command_id or "")
        if command is None:
            raise self._fault_for(INVALID_SELECTORS, message, command=True)  # F1
        return command

    def _operations_held(self) -> int:
        """Operations against MaxConcurrentOperationsPerUser (lock held; Q4, a GUESS)."""
        return sum(shell.operations for shell in self._shells.values())

    def _start(self, shell: _Shell, command: _Command) -> None:
        """Run the handler in its own thread, so a slow one makes Receives time out (lock held)."""
        command.started = True
        stdin = b"".join(command.stdin)
        self.counters.stdin_payloads.append(stdin)
        worker = threading.Thread(
            target=self._run_handler,
            args=(shell, command, stdin),
            name=f"wsman-command-{command.id}",
            daemon=True,
        )
        self._workers.add(worker)
        worker.start()

    def _run_handler(self, shell: _Shell, command: _Command, stdin: bytes) -> None:
        _ENVIRONMENT.set(dict(shell.environment))  # what the command's process inherits (C2)
        try:
            if self.faults.handler_delay_s:
                self._stopped.wait(self.faults.handler_delay_s)
            fails_with = self.faults.powershell_fails_with
            if fails_with is not None and _is_powershell(command.command):
                stdout, stderr, exit_code = b"", clixml_error(fails_with), 1  # S1
            else:
                result = self.handler(command.command, list(command.arguments), stdin)
                stdout, stderr = shell.encode(result.stdout), shell.encode(result.stderr)
                exit_code = result.exit_code
        except Exception as exc:
            # A broken simulated host shows up as a failed command, and in handler_errors.
            self.handler_errors.append(exc)
            stdout, stderr, exit_code = b"", shell.encode(f"{type(exc).__name__}: {exc}\r\n"), 1
        with self._changed:
            if stdout:
                command.output.append(("stdout", stdout))
            if stderr:
                command.output.append(("stderr", stderr))
            command.exit_code = exit_code
            command.finished = True
            self._changed.notify_all()
            self._workers.discard(threading.current_thread())

    def _fault_for(self, code: int, request: _Message, *, command: bool = False) -> _WSManFault:
        """The fault Windows answers with ``code``, in its documented shape (F1 to F4, Q2 to Q4)."""
        if code == INVALID_SELECTORS:
            # F1 names the command in a plain message; F2 wraps it in the shell provider's fault.
            return _WSManFault(
                code,
                "The WS-Management service cannot process the request: its selectors name no "
                "resource that exists.",
                "w:InvalidSelectors",
                sender=True,
                detail="UnexpectedSelectors",
                provider=None if command else "Shell provider",
                message="The Windows Remote Shell got a request for a command identifier that "
                "does not exist: the command has ended, or the identifier is wrong."
                if command
                else f"The shell {request.shell_id} does not exist on this host.",
            )
        reasons = {
            OPERATION_TIMEOUT: (
                "w:TimedOut",
                "The WS-Management service cannot complete the operation within the time "
                "given in OperationTimeout.",
            ),
            ENVELOPE_SIZE_NOT_SUPPORTED: (
                "w:EncodingLimit",
                f"The MaxEnvelopeSize of the request ({request.max_envelope_bytes}) is below "
                f"the {_MIN_CLIENT_ENVELOPE} octets the service supports.",
            ),
            MAX_SHELLS_EXCEEDED: (
                "w:QuotaLimit",
                "The WS-Management service cannot process the request. This user may hold at "
                f"most {self.max_shells} concurrent shells, which has been exceeded. Close "
                "existing shells or raise the quota for this user.",
            ),
            MAX_OPERATIONS_EXCEEDED: (
                "w:QuotaLimit",
                "The WS-Management service cannot process the request. This user may run at "
                f"most {self.max_operations} concurrent operations, which has been exceeded. "
                "Close existing operations for this user, or raise the quota for this user.",
            ),
        }
        subcode, reason = reasons.get(
            code, ("w:InternalError", f"The WS-Management service failed with error {code}.")
        )
        return _WSManFault(code, reason, subcode)


# -- state -------------------------------------------------------------------------------------


@dataclass
class _Shell:
    id: str
    codepage: int
    encoding: str
    environment: dict[str, str] = field(default_factory=dict)
    commands: dict[str, _Command] = field(default_factory=dict)
    operations: int = 1  # the shell and every command started in it (Q4)

    def encode(self, text: bytes | str) -> bytes:
        return text if isinstance(text, bytes) else text.encode(self.encoding, errors="replace")


@dataclass
class _Command:
    """One command in a shell: its stdin so far, its output not yet received."""

    id: str
    command: str
    arguments: list[str]
    stdin: list[bytes] = field(default_factory=list)
    stdin_ended: bool = False
    started: bool = False
    finished: bool = False
    exit_code: int = 0
    output: deque[tuple[str, bytes]] = field(default_factory=deque)


@dataclass(frozen=True)
class _Client:
    address: str  # ClientIP in CreateResponse
    user: str  # Owner in CreateResponse


def _new_id() -> str:
    return str(uuid.uuid4()).upper()


def _is_powershell(command: str) -> bool:
    name = command.replace("/", "\\").rsplit("\\", 1)[-1].lower()
    return name in ("powershell", "powershell.exe")


def _fire(faults: Faults, times_field: str, condition: bool) -> bool:
    """Whether a fault fires now, counting down its ``*_times`` field (lock held)."""
    if not condition:
        return False
    times = getattr(faults, times_field)
    if times is None:
        return True
    if times <= 0:
        return False
    setattr(faults, times_field, times - 1)
    return True


# -- SOAP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Message:
    """The parts of a request envelope the server acts on."""

    action: str  # the last segment of wsa:Action: "Create", "Receive", ...
    message_id: str
    resource_uri: str
    shell_id: str | None
    options: dict[str, str]
    operation_timeout_s: float
    max_envelope_bytes: int
    body: ET.Element

    @classmethod
    def parse(cls, data: bytes) -> _Message:
        root = ET.fromstring(data)
        header = root.find(f"{{{_SOAP}}}Header")
        body = root.find(f"{{{_SOAP}}}Body")
        if header is None or body is None:
            raise ValueError("no SOAP Header or Body")
        selector = header.find(f"{{{_WSMAN}}}SelectorSet/{{{_WSMAN}}}Selector[@Name='ShellId']")
        options = {
            option.get("Name", ""): option.text or ""
            for option in header.iterfind(f"{{{_WSMAN}}}OptionSet/{{{_WSMAN}}}Option")
        }
        return cls(
            action=(header.findtext(f"{{{_ADDRESSING}}}Action") or "").rsplit("/", 1)[-1],
            message_id=header.findtext(f"{{{_ADDRESSING}}}MessageID") or "",
            resource_uri=header.findtext(f"{{{_WSMAN}}}ResourceURI") or "",
            shell_id=None if selector is None else selector.text,
            options=options,
            operation_timeout_s=_duration_s(
                header.findtext(f"{{{_WSMAN}}}OperationTimeout") or "PT60S"
            ),
            max_envelope_bytes=int(
                header.findtext(f"{{{_WSMAN}}}MaxEnvelopeSize") or _DEFAULT_CLIENT_ENVELOPE
            ),
            body=body,
        )


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def _duration_s(text: str) -> float:
    """An xs:duration such as ``PT20S`` or ``PT1M30.500S``, in seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"bad OperationTimeout {text!r}")
    days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _envelope(action_uri: str, request: _Message, body: str) -> bytes:
    """A reply envelope with the header fields a real listener sends (H1)."""
    return (
        f'<s:Envelope xml:lang="en-US" xmlns:s="{_SOAP}" xmlns:a="{_ADDRESSING}" '
        f'xmlns:x="{_TRANSFER}" xmlns:w="{_WSMAN}" xmlns:rsp="{_SHELL}" xmlns:p="{_MS_WSMAN}">'
        f"<s:Header><a:Action>{action_uri}</a:Action>"
        f"<a:MessageID>uuid:{_new_id()}</a:MessageID><p:ActivityId>{_new_id()}</p:ActivityId>"
        f"<a:To>{_ANONYMOUS}</a:To><a:RelatesTo>{escape(request.message_id)}</a:RelatesTo>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


class _WSManFault(Exception):
    def __init__(
        self,
        code: int,
        reason: str,
        subcode: str = "w:InternalError",
        *,
        sender: bool = False,
        detail: str | None = None,
        provider: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subcode = subcode
        self.sender = sender  # s:Sender (the request is wrong) or s:Receiver
        self.detail = detail  # the w:FaultDetail URI's last segment
        self.provider = provider  # the plug-in whose f:ProviderFault wraps the message
        self.message = message or reason  # f:Message


def _fault(request: _Message, fault: _WSManFault, *, wmi: bool = False) -> bytes:
    if wmi:
        detail = (
            f'<p:MSFT_WmiError xmlns:p="{_WMI_ERROR_NS}"><p:CIMStatusCode>27</p:CIMStatusCode>'
            f"<p:Message>{escape(fault.reason)}</p:Message>"
            f"<p:MessageID>HRESULT 0x{fault.code:08x}</p:MessageID>"
            f"<p:error_Code>{fault.code}</p:error_Code><p:error_Type>HRESULT</p:error_Type>"
            "</p:MSFT_WmiError>"
        )
    else:
        inner = f"<f:Message>{escape(fault.message)}</f:Message>"
        if fault.provider is not None:
            inner = (
                f"<f:Message><f:ProviderFault provider={quoteattr(fault.provider)} "
                'path="%systemroot%\\system32\\WsmSvc.dll">'
                f'<f:WSManFault xmlns:f="{_FAULT_NS}" Code="{fault.code}" Machine="127.0.0.1">'
                f"{inner}</f:WSManFault></f:ProviderFault></f:Message>"
            )
        detail = (
            f"<w:FaultDetail>{_FAULT_DETAIL}/{fault.detail}</w:FaultDetail>" if fault.detail else ""
        ) + (
            f'<f:WSManFault xmlns:f="{_FAULT_NS}" Code="{fault.code}" Machine="127.0.0.1">'
            f"{inner}</f:WSManFault>"
        )
    code = "s:Sender" if fault.sender else "s:Receiver"
    return _envelope(
        _FAULT_ACTION,
        request,
        f"<s:Fault><s:Code><s:Value>{code}</s:Value><s:Subcode><s:Value>{fault.subcode}"
        f'</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">'
        f"{escape(fault.reason)}</s:Text></s:Reason><s:Detail>{detail}</s:Detail></s:Fault>",
    )


# -- NTLM message encryption (MS-WSMV 2.2.9.1.1) -----------------------------------------------


# pyspnego's NTLM acceptor reads its accounts only from the file that the environment variable
# NTLM_USER_FILE names (spnego._ntlm._get_credential_file, looked up at each handshake). Setting
# the variable around each handshake changed the process environment under the provisioner's
# threads, which read it in the same process, and lost hosts. Instead the look-up is taught, once,
# to prefer the file of the server whose thread is stepping a handshake; the environment is
# never touched. (A private function of pyspnego, pinned below 0.13; the NTLM tests catch a
# change.)
_HANDSHAKE = threading.local()  # .accounts: the account file of this thread's server
_LOOKUP_LOCK = threading.Lock()


def _teach_account_lookup() -> None:
    from spnego import _ntlm

    with _LOOKUP_LOCK:
        original = _ntlm._get_credential_file
        if getattr(original, "lab_accounts", False):
            return

        def accounts_of_this_thread() -> str | None:
            return getattr(_HANDSHAKE, "accounts", None) or original()

        accounts_of_this_thread.lab_accounts = True  # type: ignore[attr-defined]
        _ntlm._get_credential_file = accounts_of_this_thread


@contextlib.contextmanager
def _accounts_for_this_thread(path: Path) -> Iterator[None]:
    _HANDSHAKE.accounts = str(path)
    try:
        yield
    finally:
        _HANDSHAKE.accounts = None


def _write_ntlm_user_file(path: Path, username: str, password: Secret) -> None:
    domain, _, user = username.rpartition("\\")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(f"{domain}:{user}:{password.reveal()}\n")


def _unwrap_message(context: Any, body: bytes) -> bytes:
    """The SOAP envelope inside a ``multipart/encrypted`` body (one encrypted part)."""
    parts = [part for part in body.split(_BOUNDARY + b"\r\n") if part]
    header, payload = parts[0], parts[1]
    expected = int(header.split(b"Length=")[1].split(b"\r\n")[0])
    payload = payload.removesuffix(_BOUNDARY + b"--\r\n")
    payload = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
    signature_length = struct.unpack("<i", payload[:4])[0]
    signature = payload[4 : 4 + signature_length]
    message = context.unwrap(signature + payload[4 + signature_length :]).data
    if len(message) != expected:
        raise ValueError("encrypted message length does not match OriginalContent")
    return bytes(message)


def _wrap_message(context: Any, message: bytes, protocol: str) -> bytes:
    sealed = bytes(context.wrap(message, encrypt=True).data)
    signature, data = sealed[:16], sealed[16:]
    return (
        _BOUNDARY + b"\r\n"
        b"\tContent-Type: " + protocol.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + _BOUNDARY
        + b"\r\n\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<i", len(signature))
        + signature
        + data
        + _BOUNDARY
        + b"--\r\n"
    )


# -- HTTP --------------------------------------------------------------------------------------


class _RequestHandler(BaseHTTPRequestHandler):
    """One client connection: HTTP/1.1 keep-alive, bodies drained, Content-Length always."""

    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.auth_context: Any = None  # NTLM authenticates a connection, so it lives here
        self.user = ""  # who the connection authenticated as
        self.pending_auth_header: str | None = None  # SPNEGO's last token, for the next reply

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner._handle_post(self, body)

    def do_GET(self) -> None:
        self.send_reply(405, b"")

    def send_reply(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/soap+xml;charset=UTF-8",
        extra_headers: dict[str, str] | None = None,
        *,
        cut: bool = False,
    ) -> None:
        """Answer; ``cut`` sends half the body under the full Content-Length and hangs up."""
        self.send_response(status)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.pending_auth_header is not None:
            self.send_header("WWW-Authenticate", self.pending_auth_header)
            self.pending_auth_header = None
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.drop()
        elif body:
            self.wfile.write(body)

    def drop(self) -> None:
        """Close the connection without an answer, as a crashed or unplugged host would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every connection thread
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: WSManServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)
        # Without TCP_NODELAY every request waits ~40 ms for Nagle and delayed ACKs.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so a slow or refusing
        # client never stalls the accept loop.
        connection: socket.socket = request
        with self._connections_lock:
            self._connections.add(connection)
        with self.owner._lock:
            self.owner.counters.connections += 1
        try:
            if self.owner._stopping:
                return  # accepted while stop() ran: close_connections() may have missed it
            if self.owner.ssl_context is not None:
                connection.settimeout(_RequestHandler.timeout)
                try:
                    connection = self.owner.ssl_context.wrap_socket(connection, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # e.g. the client rejected our certificate
                with self._connections_lock:
                    self._connections.add(connection)
            _RequestHandler(connection, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(request)
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up mid-request all the time (drops, timeouts, stop()): not worth a trace.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)
