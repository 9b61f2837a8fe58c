"""One Windows host as the provisioner sees it: gather facts, apply a batch. One shell per run.

    with RemoteHost("tapi01", WinRMSession(endpoint)) as host:
        facts = host.gather(GatherRequest(role="server", firewall_group="NFON-TAPI-Provisioner"))
        response = host.apply(ApplyRequest(lock=..., steps=[...]))

Each call is ONE command in the host's one :class:`Shell`, whatever the number of resources:
the shipped script and its request as JSON on stdin, one JSON document back. The shell is a
WinRS shell over WS-Management (:class:`~provisioner.transports.winrm.WinRMSession`), or
:class:`InProcessShell`, which hands the same stdin to a command handler in this process (the
lab's Windows model) with no TLS and no WS-Management: the scripts' identities still pick the
behaviour, and the answer is parsed the same way.

A gather that meets a transient transport failure runs once more in a fresh shell; the host keeps
a :class:`RetryEvent` for each such retry (``host.retries``), for the output and the state store.
An apply is never retried.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from pydantic import BaseModel

from provisioner.errors import ProvisionerError
from provisioner.host_locks import holder_line
from provisioner.remote import scripts
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    GatherRequest,
    HostFacts,
    UploadRequest,
    UploadResponse,
)
from provisioner.remote.scripts import LockRefused
from provisioner.transports.winrm import CommandResult, WinRMError

T = TypeVar("T", bound=BaseModel)


class HostError(ProvisionerError):
    """Something failed on or on the way to one host; the message starts with its name."""

    def __init__(self, host: str, cause: ProvisionerError) -> None:
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


class HostLocked(HostError):
    """A gather asked for the host's lock and another owner holds it: it read nothing else."""

    def __init__(self, host: str, cause: LockRefused) -> None:
        super().__init__(host, cause)
        self.holder = cause.holder
        self.args = (f"{holder_line(host, cause.holder)}; to queue behind it, add --wait SECONDS",)


@dataclass(frozen=True)
class RetryEvent:
    """A read-only command that failed on the way and ran once more in a fresh shell."""

    host: str
    operation: str  # "gather"
    cause: str  # the transport's message for the failure
    at: datetime

    def line(self) -> str:
        return f"{self.host}: {self.operation} retried in a fresh shell after: {self.cause}"


class Shell(Protocol):
    """Where a host's commands run: a WinRS shell, or a command handler in this process."""

    def run(
        self,
        command: str,
        arguments: Sequence[str] = (),
        stdin: bytes = b"",
        *,
        retry: bool = False,
        on_retry: Callable[[WinRMError], None] | None = None,
    ) -> CommandResult: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...


class CommandOutput(Protocol):
    @property
    def stdout(self) -> bytes: ...
    @property
    def stderr(self) -> bytes: ...
    @property
    def exit_code(self) -> int: ...


CommandHandler = Callable[[str, list[str], bytes], CommandOutput]
"""``handler(command, arguments, stdin) -> output``: a host that runs commands in this process."""


class InProcessShell:
    """A command handler called directly: nothing is sent over a network, nothing retried."""

    def __init__(self, handler: CommandHandler) -> None:
        self.handler = handler
        self._aborted = False

    def run(
        self,
        command: str,
        arguments: Sequence[str] = (),
        stdin: bytes = b"",
        *,
        retry: bool = False,
        on_retry: Callable[[WinRMError], None] | None = None,
    ) -> CommandResult:
        if self._aborted:
            raise ProvisionerError("interrupted; nothing more is run")
        output = self.handler(command, list(arguments), stdin)
        return CommandResult(output.stdout, output.stderr, output.exit_code)

    def abort(self) -> None:
        self._aborted = True  # a running handler finishes; nothing runs after it

    def close(self) -> None:
        """Nothing to release."""


class RemoteHost:
    """A host reached through one :class:`Shell`; the one connector the runner uses."""

    def __init__(
        self,
        name: str,
        shell: Shell,
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.session = shell
        self.retries: list[RetryEvent] = []
        self.on_retry = on_retry

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def abort(self) -> None:
        """From any thread: stop the running command and close the shell (see WinRMSession)."""
        self.session.abort()

    def gather(self, request: GatherRequest) -> HostFacts:
        """Read everything managed on the host (read-only, so retried on transport faults: a
        lock it takes is this owner's either way). :class:`HostLocked` when it asked for the
        host's lock and another holds it."""
        return self._run("gather", request, HostFacts, retry=True)

    def apply(self, request: ApplyRequest) -> ApplyResponse:
        """Carry out a batch; never retried blindly (the host may have done part of it)."""
        return self._run("apply", request, ApplyResponse, retry=False)

    def upload(self, path: Path, sha256: str) -> UploadResponse:
        """Send a package from this workstation into the host's package cache (one command).

        The file is checked against ``sha256`` here and again on the host before it is kept."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            cause = ProvisionerError(f"the package {path} cannot be read ({exc.strerror})")
            raise HostError(self.name, cause) from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            cause = ProvisionerError(
                f"the package {path} has sha256 {actual}, not {sha256}: it changed after the "
                "plan was made"
            )
            raise HostError(self.name, cause)
        encoded = base64.b64encode(content).decode("ascii")
        request = UploadRequest(name=path.name, sha256=sha256, content=encoded)
        return self._run("upload", request, UploadResponse, retry=True)  # content-addressed

    def _run(
        self, name: scripts.ScriptName, request: BaseModel, model: type[T], *, retry: bool
    ) -> T:
        script = scripts.load(name)
        command, arguments = scripts.command_line()

        def retried(cause: WinRMError) -> None:
            event = RetryEvent(self.name, name, str(cause), datetime.now(UTC))
            self.retries.append(event)
            if self.on_retry is not None:
                self.on_retry(event)

        try:
            result = self.session.run(
                command,
                arguments,
                scripts.stdin_payload(script, request),
                retry=retry,
                on_retry=retried,
            )
            return scripts.parse_output(
                result.stdout, model, stderr=result.stderr, exit_code=result.exit_code
            )
        except LockRefused as exc:
            raise HostLocked(self.name, exc) from None
        except ProvisionerError as exc:
            raise HostError(self.name, exc) from None
