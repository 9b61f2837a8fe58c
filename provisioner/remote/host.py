"""One Windows host as the provisioner sees it: gather facts, apply a batch. One shell per run.

    with RemoteHost("tapi01", endpoint) as host:
        facts = host.gather(GatherRequest(role="server", firewall_group="NFON-TAPI-Provisioner"))
        response = host.apply(ApplyRequest(lock=..., steps=[...]))

Each call is ONE command over the host's one WinRM shell, whatever the number of resources. A
gather that meets a transient transport failure runs once more in a fresh shell; the host keeps
a :class:`RetryEvent` for each such retry (``host.retries``), for the output and the state store.
An apply is never retried.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from provisioner.errors import ProvisionerError
from provisioner.remote import scripts
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    GatherRequest,
    HostFacts,
    UploadRequest,
    UploadResponse,
)
from provisioner.transports.winrm import WinRMEndpoint, WinRMError, WinRMSession

T = TypeVar("T", bound=BaseModel)


class HostError(ProvisionerError):
    """Something failed on or on the way to one host; the message starts with its name."""

    def __init__(self, host: str, cause: ProvisionerError) -> None:
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


@dataclass(frozen=True)
class RetryEvent:
    """A read-only command that failed on the way and ran once more in a fresh shell."""

    host: str
    operation: str  # "gather"
    cause: str  # the transport's message for the failure
    at: datetime

    def line(self) -> str:
        return f"{self.host}: {self.operation} retried in a fresh shell after: {self.cause}"


class RemoteHost:
    def __init__(
        self,
        name: str,
        endpoint: WinRMEndpoint,
        *,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.session = WinRMSession(endpoint)
        self.retries: list[RetryEvent] = []
        self.on_retry = on_retry

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def abort(self) -> None:
        """From any thread: stop the running command and delete the shell (see WinRMSession)."""
        self.session.abort()

    def gather(self, request: GatherRequest) -> HostFacts:
        """Read everything managed on the host (read-only, so retried on transport faults)."""
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
        except ProvisionerError as exc:
            raise HostError(self.name, exc) from None
