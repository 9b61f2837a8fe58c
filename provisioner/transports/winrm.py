"""WinRM transport: one WinRS shell per host, commands fed over stdin, errors that say what to fix.

Built on pywinrm's :class:`winrm.protocol.Protocol` rather than ``Session.run_ps``, whose
``-EncodedCommand`` line overflows cmd.exe's 8,191 characters: scripts and data go over stdin
(console mode off, as Ansible sends it), in chunks below the host's MaxEnvelopeSizekb (pywinrm
never splits; 500 KB is the default, some hosts have 150 KB)::

    endpoint = WinRMEndpoint("tapi01.example.net", user="EXAMPLE\\\\svc-prov",
                             password=Secret("..."), ca_file="ca/example-root.pem")
    with WinRMSession(endpoint) as session:
        result = session.run("powershell.exe", ["-NoProfile", "-NonInteractive", "-Command", "-"],
                             stdin=script.encode("utf-8"), retry=True)
        result.stdout, result.exit_code        # (b'{"contract": 1, ...}', 0)
        session.counters                       # SessionCounters(commands=1, messages=5)

The first ``run`` opens the shell (Create); each command costs Command, its Sends, Receives and a
Signal; closing the session deletes the shell. Every command has an overall deadline
(``command_timeout_s``), and :meth:`WinRMSession.abort` stops a session from another thread (on
Ctrl-C): it signals the running command and deletes the shell over a connection of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
from winrm import exceptions as pywinrm
from winrm import transport as pywinrm_transport
from winrm.protocol import Protocol

from provisioner.errors import ProvisionerError, TransportError
from provisioner.secrets import Secret

log = logging.getLogger(__name__)

# WSMan fault codes Windows reports (wsmerror.h).
OPERATION_TIMEOUT = 2150858793  # 0x80338029
SHELL_NOT_FOUND = 2150858843  # 0x8033805B
ENVELOPE_TOO_LARGE = 2150859025  # 0x80338111
MAX_SHELLS_EXCEEDED = 2150859173  # 0x803381A5 ERROR_WSMAN_QUOTA_MAX_SHELLS
MAX_OPERATIONS_EXCEEDED = 2150859174  # 0x803381A6 ERROR_WSMAN_QUOTA_MAX_OPERATIONS
QUOTA_USER = 2150859175  # 0x803381A7
QUOTA_SYSTEM = 2150859176  # 0x803381A8
MAX_SHELL_USERS_EXCEEDED = 2150859179  # 0x803381AB ERROR_WSMAN_QUOTA_MAX_SHELLUSERS

_FAULT_ADVICE = {
    OPERATION_TIMEOUT: "the operation timed out on the host (OperationTimeout): the host is "
    "overloaded or the command hangs; raise operation_timeout_s or check the host",
    SHELL_NOT_FOUND: "the WinRS shell is gone (host restarted, WinRM service restarted, or the "
    "shell passed IdleTimeout): run again",
    ENVELOPE_TOO_LARGE: "a request exceeded the host's MaxEnvelopeSizekb: raise it to Windows' "
    'default (winrm set winrm/config @{MaxEnvelopeSizekb="500"})',
    MAX_SHELLS_EXCEEDED: "quota MaxShellsPerUser exceeded: close other WinRM sessions of this user "
    'or raise it (winrm set winrm/config/winrs @{MaxShellsPerUser="30"})',
    MAX_OPERATIONS_EXCEEDED: "quota MaxConcurrentOperationsPerUser exceeded: wait for other "
    "operations of this user to end or raise it "
    '(winrm set winrm/config/service @{MaxConcurrentOperationsPerUser="1500"})',
    QUOTA_USER: "a WinRM quota of this user is exceeded: close other WinRM sessions of this user",
    QUOTA_SYSTEM: "a system-wide WinRM quota is exceeded on the host: retry later",
    MAX_SHELL_USERS_EXCEEDED: "quota MaxConcurrentUsers exceeded: too many users hold shells on "
    'the host; retry later or raise it (winrm set winrm/config/winrs @{MaxConcurrentUsers="10"})',
}
# Other spellings: 2144108120 is what some Windows tools report for the operations quota.
_CODE_ALIASES = {2144108120: MAX_OPERATIONS_EXCEEDED}

# One Send envelope must stay below pywinrm's MaxEnvelopeSize (153,600): base64 grows stdin by
# 4/3, and the SOAP header around it takes about 2 KB. No request is larger: a host's
# MaxEnvelopeSizekb must allow this much.
MAX_ENVELOPE_BYTES = Protocol.DEFAULT_MAX_ENV_SIZE
_SEND_ENVELOPE_RESERVE = 4_096
_MAX_SEND_BYTES = (MAX_ENVELOPE_BYTES - _SEND_ENVELOPE_RESERVE) // 4 * 3
DEFAULT_COMMAND_TIMEOUT_S = 1800  # the most one command may take unless the settings say
_RETRY_DELAY_S = 0.5  # before the one retry of a read-only command
_ABORT_OPERATION_TIMEOUT_S = 5  # Signal and Delete sent by abort() wait no longer than this

Auth = Literal["ntlm", "kerberos", "credssp", "basic", "certificate"]


class WinRMError(TransportError):
    """Base of every WinRM failure; the message names host:port and what to fix."""


class WinRMConfigError(ProvisionerError):
    """The endpoint settings are unsafe or incomplete; nothing was sent."""


class WinRMAuthError(WinRMError):
    """The host refused the credentials (HTTP 401)."""


class WinRMTLSError(WinRMError):
    """The host's certificate could not be verified."""


class WinRMEncryptionError(WinRMError):
    """The bare HTTP 500 Windows answers when the transport is not encrypted as it requires."""


class WinRMFaultError(WinRMError):
    """The host answered with a WSMan fault; ``code`` is Windows' fault code."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class WinRMConnectionError(WinRMError):
    """The host could not be reached: refused, unknown name, or connection lost."""


class WinRMReadTimeoutError(WinRMConnectionError):
    """The host did not answer one message within ``read_timeout_s``."""


class WinRMHTTPError(WinRMError):
    """The host answered an HTTP error without a WSMan fault; ``status`` is its code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class WinRMDeadlineError(WinRMError):
    """A command outlived ``command_timeout_s`` and was stopped on the host."""


class WinRMInterrupted(WinRMError):
    """The session was aborted (Ctrl-C) while a command ran; its shell was closed."""


@dataclass(frozen=True)
class WinRMEndpoint:
    """Where and how to reach one host's WinRM listener.

    >>> endpoint = WinRMEndpoint("tapi01", auth="basic", user="lab", password=Secret("pw"))
    >>> endpoint.url, endpoint.password
    ('https://tapi01:5986/wsman', Secret((sensitive)))
    """

    host: str
    port: int = 5986
    scheme: Literal["https", "http"] = "https"
    auth: Auth = "ntlm"
    user: str = ""
    password: Secret | None = None
    ca_file: str | None = None  # the CA that issued the host's certificate (PEM)
    allow_insecure: bool = False  # basic over http, or https without verification (labs only)
    operation_timeout_s: int = 20
    read_timeout_s: int = 30
    command_timeout_s: int = DEFAULT_COMMAND_TIMEOUT_S  # one command, its messages and retry
    cert_pem: str | None = None  # client certificate and key, for auth="certificate"
    cert_key_pem: str | None = None

    @property
    def address(self) -> str:
        """``host:port`` as messages print it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}/wsman"

    @property
    def verifies_certificate(self) -> bool:
        """https, with the host's certificate checked (unless allow_insecure and no CA file)."""
        return self.scheme == "https" and not (self.allow_insecure and not self.ca_file)


@dataclass
class CommandResult:
    """What a remote command printed and returned (bytes in the shell's codepage)."""

    stdout: bytes
    stderr: bytes = b""
    exit_code: int = 0


@dataclass
class SessionCounters:
    commands: int = 0  # commands started (a retried command counts each try)
    messages: int = 0  # WSMan messages sent, every action, retries included


class WinRMSession:
    """One WinRS shell on one host, reused by every command of a run.

    ``codepage`` is the shell's ``WINRS_CODEPAGE`` (65001 = UTF-8 output); ``max_send_bytes``
    is the most stdin one Send carries. Commands run one at a time from one thread;
    :meth:`abort` is the one method another thread may call.
    """

    def __init__(
        self,
        endpoint: WinRMEndpoint,
        *,
        codepage: int = 65001,
        max_send_bytes: int = 100_000,
    ) -> None:
        if not 0 < max_send_bytes <= _MAX_SEND_BYTES:
            raise ValueError(f"max_send_bytes must be between 1 and {_MAX_SEND_BYTES}")
        _check_endpoint(endpoint)
        self.endpoint = endpoint
        self.codepage = codepage
        self.max_send_bytes = max_send_bytes
        self.counters = SessionCounters()
        self._protocol: Protocol | None = None
        self._shell_id: str | None = None
        self._running: tuple[str, str] | None = None  # (shell, command) while one runs
        self._lock = threading.Lock()  # guards _shell_id and _running against abort()
        self._interrupted = threading.Event()

    def __repr__(self) -> str:
        return f"WinRMSession({self.endpoint.url}, auth={self.endpoint.auth})"

    def __enter__(self) -> WinRMSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the shell now rather than at the first :meth:`run`."""
        self._ensure_shell()

    def run(
        self,
        command: str,
        arguments: Sequence[str] = (),
        stdin: bytes = b"",
        *,
        retry: bool = False,
        on_retry: Callable[[WinRMError], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` in the session's shell, feed it ``stdin`` and wait for its output.

        ``retry=True`` is for read-only commands: after a transient failure (connection reset,
        broken stream, HTTP 5xx, the shell gone) the command runs once more in a fresh shell,
        and ``on_retry`` hears why. Other commands are never repeated blindly; they only move to
        a fresh shell when the old one failed them before they started. All tries together
        must end within ``command_timeout_s``.
        """
        deadline = time.monotonic() + self.endpoint.command_timeout_s
        retried = False
        replaced = False  # the shell was replaced before the command started
        while True:
            started = False
            try:
                shell_id = self._ensure_shell()
                command_id = self._call(
                    Protocol.run_command,
                    shell_id,
                    command,
                    list(arguments),
                    console_mode_stdin=False,
                )
                started = True
                self.counters.commands += 1
                return self._finish(command, shell_id, command_id, stdin, deadline)
            except WinRMError as error:
                if self._interrupted.is_set() and not isinstance(error, WinRMInterrupted):
                    raise self._interruption() from None
                unstarted = isinstance(error, WinRMFaultError) and error.code in (
                    MAX_OPERATIONS_EXCEEDED,  # Windows counts operations until Delete
                    SHELL_NOT_FOUND,
                )
                if unstarted and not started and not replaced:
                    replaced = True  # the command never ran: running it now is no repeat
                    self._drop_shell()
                    continue
                if not retry or retried or not _transient(error):
                    raise
                retried = True
                log.info(
                    "WinRM %s: %s failed (%s), trying again", self.endpoint.address, command, error
                )
                if on_retry is not None:
                    on_retry(error)
                self._drop_shell()
                time.sleep(_RETRY_DELAY_S)
                self._check_deadline(command, deadline)

    def abort(self) -> None:
        """Stop this session from any thread: Signal its command, Delete its shell, now.

        Both go over a connection of their own (the session's may be waiting in a Receive). The
        thread running a command gets :class:`WinRMInterrupted`; later commands are refused.
        Errors are swallowed: the host drops idle shells anyway.
        """
        self._interrupted.set()
        with self._lock:
            shell_id, self._shell_id = self._shell_id, None
            running = self._running
        if shell_id is None:
            return
        endpoint = dataclasses.replace(
            self.endpoint,
            operation_timeout_s=min(self.endpoint.operation_timeout_s, _ABORT_OPERATION_TIMEOUT_S),
            read_timeout_s=min(self.endpoint.read_timeout_s, _ABORT_OPERATION_TIMEOUT_S + 5),
        )
        protocol = self._make_protocol(endpoint)
        if running is not None and running[0] == shell_id:
            _quietly(endpoint, "Signal", lambda: protocol.cleanup_command(shell_id, running[1]))
        _quietly(endpoint, "Delete", lambda: protocol.close_shell(shell_id))
        protocol.transport.close_session()

    def close(self) -> None:
        """Delete the shell. Errors are swallowed: the host drops idle shells anyway."""
        with self._lock:
            protocol, shell_id = self._protocol, self._shell_id
            self._shell_id = None
            self._protocol = None
        if protocol is None:
            return
        try:
            if shell_id is not None:
                protocol.close_shell(shell_id)  # also closes the HTTP connections
            else:
                protocol.transport.close_session()
        except Exception:
            log.debug("WinRM %s: closing the shell failed", self.endpoint.address, exc_info=True)

    # -- inside ------------------------------------------------------------------------------

    def _finish(
        self, command: str, shell_id: str, command_id: str, stdin: bytes, deadline: float
    ) -> CommandResult:
        with self._lock:
            self._running = (shell_id, command_id)
        ending = "signal"  # after a result or a failure, the command is signalled to end
        try:
            chunks = [
                stdin[i : i + self.max_send_bytes]
                for i in range(0, len(stdin), self.max_send_bytes)
            ]
            for index, chunk in enumerate(chunks):
                self._check_deadline(command, deadline)
                end = index == len(chunks) - 1
                self._call(Protocol.send_command_input, shell_id, command_id, chunk, end)
            return self._receive_all(command, shell_id, command_id, deadline)
        except WinRMConnectionError:
            # No Signal after a lost connection: a hung host would make it wait read_timeout_s
            # again, and deleting the shell at close releases the command anyway.
            ending = "lost"
            raise
        except (KeyboardInterrupt, SystemExit):
            ending = "interrupted"  # Ctrl-C: abort() signals it, over its own connection
            raise
        finally:
            if ending != "interrupted":
                with self._lock:
                    self._running = None
            # Signal even after a WSMan fault, and after the deadline: it stops the command.
            if ending == "signal" and not self._interrupted.is_set():
                try:
                    self._call(Protocol.cleanup_command, shell_id, command_id)
                except WinRMError:
                    log.debug("WinRM %s: Signal failed", self.endpoint.address, exc_info=True)

    def _receive_all(
        self, command: str, shell_id: str, command_id: str, deadline: float
    ) -> CommandResult:
        """pywinrm's ``get_command_output`` loop: Receive until Done, each reply ~100 KB."""
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        while True:
            self._check_deadline(command, deadline)
            try:
                out, err, exit_code, done = self._call(
                    Protocol.get_command_output_raw,
                    shell_id,
                    command_id,
                    operation_timeout_is_fault=False,
                )
            except pywinrm.WinRMOperationTimeoutError:
                continue  # nothing yet within OperationTimeout: the command still runs
            stdout.append(out)
            stderr.append(err)
            if done:
                return CommandResult(b"".join(stdout), b"".join(stderr), exit_code)

    def _check_deadline(self, command: str, deadline: float) -> None:
        if time.monotonic() < deadline:
            return
        limit = self.endpoint.command_timeout_s
        raise WinRMDeadlineError(
            f"WinRM {self.endpoint.address}: {command} did not finish within "
            f"winrm.command_timeout_s={limit} s and was stopped: the host kept answering "
            "OperationTimeout or sent its output too slowly; check the host, or raise "
            "command_timeout_s in the winrm settings of the Site, the TapiServer or the inventory"
        )

    def _interruption(self) -> WinRMInterrupted:
        return WinRMInterrupted(f"WinRM {self.endpoint.address}: interrupted; the shell was closed")

    def _drop_shell(self) -> None:
        """Delete the current shell but keep the connection; errors are swallowed."""
        with self._lock:
            shell_id, self._shell_id = self._shell_id, None
        if shell_id is not None and self._protocol is not None:
            try:
                self._call(Protocol.close_shell, shell_id, close_session=False)
            except WinRMError:
                log.debug("WinRM %s: deleting shell failed", self.endpoint.address, exc_info=True)

    def _ensure_shell(self) -> str:
        with self._lock:
            if self._shell_id is not None:
                return self._shell_id
        if self._protocol is None:
            self._protocol = self._make_protocol(self.endpoint)
            if self.endpoint.allow_insecure and _insecure(self.endpoint):
                log.warning(
                    "WinRM %s: %s (allow_insecure is set)",
                    self.endpoint.address,
                    _insecure(self.endpoint),
                )
        shell_id = self._call(Protocol.open_shell, noprofile=True, codepage=self.codepage)
        with self._lock:
            if not self._interrupted.is_set():
                self._shell_id = shell_id
                return shell_id
        # aborted while the shell was being made: nobody else knows it, so delete it here
        protocol = self._protocol
        assert protocol is not None
        _quietly(
            self.endpoint, "Delete", lambda: protocol.close_shell(shell_id, close_session=False)
        )
        raise self._interruption()

    def _make_protocol(self, endpoint: WinRMEndpoint) -> Protocol:
        verify = endpoint.verifies_certificate
        try:
            return _CountingProtocol(
                self.counters,
                endpoint.url,
                transport=endpoint.auth,
                username=endpoint.user or None,
                password=endpoint.password.reveal() if endpoint.password else None,
                ca_trust_path=endpoint.ca_file or None,  # None: no extra CA path
                server_cert_validation="validate" if verify else "ignore",
                cert_pem=endpoint.cert_pem,
                cert_key_pem=endpoint.cert_key_pem,
                read_timeout_sec=endpoint.read_timeout_s,
                operation_timeout_sec=endpoint.operation_timeout_s,
                proxy=None,  # loopback labs and internal hosts: never an environment proxy
            )
        except pywinrm.WinRMError as exc:
            raise WinRMConfigError(f"WinRM {endpoint.address}: {exc}") from None

    def _call(
        self,
        operation: Callable[..., _T],
        *args: Any,
        operation_timeout_is_fault: bool = True,
        **kwargs: Any,
    ) -> _T:
        """``operation(protocol, *args, **kwargs)``, its failures translated."""
        if self._interrupted.is_set():
            raise self._interruption()
        assert self._protocol is not None
        try:
            with _translated_errors(self.endpoint, operation_timeout_is_fault):
                return operation(self._protocol, *args, **kwargs)
        except WinRMConnectionError:
            # NTLM authenticates a connection and keys its message encryption to it: after a
            # lost connection the next message needs a new HTTP session, which authenticates
            # and sets up encryption again (pywinrm would resend under the old keys).
            self._protocol.transport.close_session()
            raise


def _quietly(endpoint: WinRMEndpoint, what: str, send: Callable[[], object]) -> None:
    """Send one clean-up message; a failure is logged, not raised."""
    try:
        with _translated_errors(endpoint, operation_timeout_is_fault=True):
            send()
    except WinRMError:
        log.debug("WinRM %s: %s failed", endpoint.address, what, exc_info=True)


def _transient(error: WinRMError) -> bool:
    """Whether a read-only command may run once more in a fresh shell after ``error``."""
    if isinstance(error, WinRMReadTimeoutError):
        return False  # a hung host: another try only doubles the wait
    if isinstance(error, WinRMConnectionError):
        return True  # reset, refused, broken stream
    if isinstance(error, WinRMHTTPError):
        return 500 <= error.status < 600
    return isinstance(error, WinRMFaultError) and error.code == SHELL_NOT_FOUND


_T = TypeVar("_T")


class _OwnSettingsTransport(pywinrm_transport.Transport):
    """pywinrm's transport with a session whose settings are its own, never the environment's.

    pywinrm's ``proxy=None`` becomes the proxy setting ``no_proxy="*"`` on a session that trusts
    the environment; for such a session ``requests`` sets and deletes ``os.environ["no_proxy"]``
    around every request, and other threads reading the environment meanwhile fail
    (``KeyError: 'no_proxy'``). Here the session is built with no proxy settings (requests then
    only reads the environment, once) and is then told to use no proxy and ignore the
    environment from its first request on.
    """

    def build_session(self) -> requests.Session:
        if self.session is None:
            self.proxy = "legacy_requests"  # no proxy settings: nothing for requests to write
            try:
                session = super().build_session()
            finally:
                self.proxy = None
            session.trust_env = False
            session.proxies = {}
            return session
        return self.session


class _CountingProtocol(Protocol):
    """pywinrm's Protocol, counting every WSMan message it sends."""

    def __init__(self, counters: SessionCounters, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transport.__class__ = _OwnSettingsTransport
        self.counters = counters

    def send_message(self, message: str) -> bytes:
        self.counters.messages += 1
        return super().send_message(message)


def _check_endpoint(endpoint: WinRMEndpoint) -> None:
    where = f"WinRM {endpoint.address}"
    if endpoint.ca_file and not os.path.isfile(endpoint.ca_file):
        raise WinRMConfigError(
            f"{where}: CA file {endpoint.ca_file} does not exist: set ca_file to the PEM of the "
            "CA that issued the host's certificate"
        )
    if endpoint.scheme == "http" and endpoint.auth == "basic" and not endpoint.allow_insecure:
        raise WinRMConfigError(
            f"{where}: basic auth over http sends the password unencrypted; use scheme https "
            "(port 5986) or auth ntlm, or set allow_insecure: true (labs only)"
        )
    if endpoint.auth == "certificate":
        if endpoint.scheme != "https":
            raise WinRMConfigError(f"{where}: certificate auth needs scheme https")
        if not (endpoint.cert_pem and endpoint.cert_key_pem):
            raise WinRMConfigError(f"{where}: certificate auth needs cert_pem and cert_key_pem")
    elif endpoint.auth != "kerberos" and (not endpoint.user or endpoint.password is None):
        raise WinRMConfigError(f"{where}: auth {endpoint.auth} needs user and password")
    if endpoint.auth == "kerberos" and not pywinrm_transport.HAVE_KERBEROS:
        raise WinRMConfigError(
            f"{where}: auth kerberos needs extra packages: pip install 'provisioner[kerberos]'"
        )
    if endpoint.auth == "credssp" and not pywinrm_transport.HAVE_CREDSSP:
        raise WinRMConfigError(
            f"{where}: auth credssp needs extra packages: pip install 'provisioner[credssp]'"
        )
    if endpoint.command_timeout_s < endpoint.operation_timeout_s:
        raise WinRMConfigError(
            f"{where}: command_timeout_s ({endpoint.command_timeout_s}) must be at least "
            f"operation_timeout_s ({endpoint.operation_timeout_s})"
        )
    if endpoint.operation_timeout_s < 1 or endpoint.read_timeout_s <= endpoint.operation_timeout_s:
        raise WinRMConfigError(
            f"{where}: read_timeout_s ({endpoint.read_timeout_s}) must exceed "
            f"operation_timeout_s ({endpoint.operation_timeout_s}), which must be at least 1"
        )


def _insecure(endpoint: WinRMEndpoint) -> str:
    """What is unsafe about an endpoint, or ``""``."""
    if endpoint.scheme == "http" and endpoint.auth == "basic":
        return "basic auth over plain http: the password crosses the network unencrypted"
    if endpoint.scheme == "https" and not endpoint.ca_file:
        return "TLS certificate verification is off: anyone in the path can impersonate the host"
    return ""


def _fault_code(error: pywinrm.WSManFaultError) -> int | None:
    """The fault's code, from WSManFault or else from an MSFT_WmiError (how quotas may come)."""
    code = error.wsman_fault_code if error.wsman_fault_code is not None else error.wmierror_code
    if code is None:
        return None
    if code < 0:
        code += 2**32  # a signed HRESULT
    return _CODE_ALIASES.get(code, code)


@contextmanager
def _translated_errors(endpoint: WinRMEndpoint, operation_timeout_is_fault: bool) -> Iterator[None]:
    """pywinrm and requests exceptions as the typed errors above (never with the password)."""
    where = f"WinRM {endpoint.address}"
    try:
        yield
    except pywinrm.InvalidCredentialsError:
        raise WinRMAuthError(
            f"{where} rejected the credentials of {endpoint.user or 'the client certificate'} "
            f"(HTTP 401, auth {endpoint.auth}): check user and password, and that auth "
            f"{endpoint.auth} is enabled on the host (winrm get winrm/config/service/auth)"
        ) from None
    except PermissionError as exc:
        if "NTLM challenge" not in str(exc):  # not requests_ntlm: e.g. an unreadable key file
            raise WinRMError(
                f"{where}: a file the connection needs cannot be read ({exc}): check its "
                "permissions"
            ) from None
        # requests_ntlm's word for a 401 that carries no NTLM challenge: the host refused the
        # account outright, or does not offer Negotiate at all.
        raise WinRMAuthError(
            f"{where} rejected the credentials of {endpoint.user} (HTTP 401 without an NTLM "
            "challenge, auth ntlm): check user and password, and that Negotiate auth is enabled "
            "on the host (winrm get winrm/config/service/auth)"
        ) from None
    except pywinrm.WinRMOperationTimeoutError:
        if not operation_timeout_is_fault:
            raise
        raise WinRMFaultError(
            f"{where}: {_FAULT_ADVICE[OPERATION_TIMEOUT]} (WSMan fault {OPERATION_TIMEOUT})",
            OPERATION_TIMEOUT,
        ) from None
    except pywinrm.WSManFaultError as exc:
        code = _fault_code(exc)
        advice = _FAULT_ADVICE.get(code or 0) or f"the host refused the request: {exc.reason}"
        raise WinRMFaultError(f"{where}: {advice} (WSMan fault {code})", code) from None
    except pywinrm.WinRMTransportError as exc:
        if exc.code == 500 and not exc.response_text.strip():
            raise WinRMEncryptionError(
                f"{where} answered a bare HTTP 500, which is how Windows refuses an "
                f"unencrypted transport (auth {endpoint.auth} over {endpoint.scheme}): use "
                "scheme https, or auth ntlm (encrypted over http)"
            ) from None
        if exc.code == 413:
            advice = _FAULT_ADVICE[ENVELOPE_TOO_LARGE]
            raise WinRMHTTPError(f"{where}: {advice} (HTTP 413)", exc.code) from None
        if 500 <= exc.code < 600:
            raise WinRMHTTPError(
                f"{where} answered HTTP {exc.code} without a WSMan fault: the WinRM service "
                "failed or is restarting; run again, and check the host's WinRM event log if "
                "it lasts",
                exc.code,
            ) from None
        raise WinRMHTTPError(
            f"{where} answered HTTP {exc.code}: check that {endpoint.url} is a WinRM listener",
            exc.code,
        ) from None
    except requests.exceptions.SSLError as exc:
        trust = f"CA file {endpoint.ca_file}" if endpoint.ca_file else "the default CA bundle"
        raise WinRMTLSError(
            f"{where}: TLS verification of host {endpoint.host} against {trust} failed "
            f"({_reason(exc)}): set ca_file to the CA that issued the host's certificate and "
            "reach the host by a name the certificate lists"
        ) from None
    except requests.exceptions.ConnectionError as exc:
        raise WinRMConnectionError(
            f"{where} is unreachable ({_reason(exc)}): check the host name, that WinRM "
            f"listens on port {endpoint.port} ({endpoint.scheme}) and that the firewall allows it"
        ) from None
    except requests.exceptions.Timeout as exc:
        raise WinRMReadTimeoutError(
            f"{where} did not answer within read_timeout_s={endpoint.read_timeout_s} "
            f"({_reason(exc)}): check the host, or raise read_timeout_s"
        ) from None
    except requests.exceptions.RequestException as exc:
        # e.g. ChunkedEncodingError: the connection broke in the middle of a reply
        raise WinRMConnectionError(
            f"{where}: the HTTP exchange failed ({_reason(exc)}): check the host name and that "
            f"WinRM listens on port {endpoint.port} ({endpoint.scheme})"
        ) from None
    except OSError as exc:  # requests raises it for an unreadable CA bundle, for one
        raise WinRMError(f"{where}: {exc.strerror or exc}") from None
    except pywinrm.WinRMError as exc:
        raise WinRMError(f"{where}: {exc}") from None
    except (ET.ParseError, StopIteration, AssertionError) as exc:
        # pywinrm parses every reply, asserts on RelatesTo and uses next() to find the ShellId
        # and CommandId: these mean the reply was not the WS-Management pywinrm expects.
        raise WinRMError(
            f"{where} sent a reply that is not valid WS-Management ({_origin(exc)}): "
            f"check that {endpoint.url} is a WinRM listener"
        ) from None
    except Exception as exc:
        # Anything else is not the host's doing that we know of: say what it was and where,
        # instead of guessing at the listener.
        text = _origin(exc)
        if endpoint.password is not None:
            text = text.replace(endpoint.password.reveal(), str(endpoint.password))
        raise WinRMError(
            f"{where}: unexpected error in the WinRM client: {text}; please report it"
        ) from None


def _origin(exc: BaseException) -> str:
    """``KeyError: 'x' (in resolve_proxies, requests/utils.py:929)``: what, and where it arose."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        parts = Path(frame.filename).parts[-2:]
        where = f" (in {frame.name}, {'/'.join(parts)}:{frame.lineno})"
    detail = str(exc)
    return f"{type(exc).__name__}{': ' + detail if detail else ''}{where}"


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, short: 'Connection refused', 'timed out'."""
    text = str(exc)
    for marker in (
        "certificate verify failed",
        "Connection refused",
        "Name or service not known",
        "No address associated with hostname",
        "Temporary failure in name resolution",
        "timed out",
        "Connection reset by peer",
        "Connection aborted",
        "RemoteDisconnected",
    ):
        if marker in text:
            if marker == "certificate verify failed":
                return text[text.index(marker) :].split(" (_ssl")[0].rstrip("')\" ")
            return marker
    return type(exc).__name__
