"""One Windows host as the provisioner sees it: gather facts, apply a batch. One shell per run.

    with RemoteHost("tapi01", endpoint) as host:
        facts = host.gather(GatherRequest(role="server", firewall_group="NFON-TAPI-Provisioner"))
        response = host.apply(ApplyRequest(lock=..., steps=[...]))

Each call is ONE command over the host's one WinRM shell, whatever the number of resources.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from provisioner.errors import ProvisionerError
from provisioner.remote import scripts
from provisioner.remote.contract import ApplyRequest, ApplyResponse, GatherRequest, HostFacts
from provisioner.transports.winrm import WinRMEndpoint, WinRMSession

T = TypeVar("T", bound=BaseModel)


class HostError(ProvisionerError):
    """Something failed on or on the way to one host; the message starts with its name."""

    def __init__(self, host: str, cause: ProvisionerError) -> None:
        super().__init__(f"{host}: {cause}")
        self.host = host
        self.cause = cause


class RemoteHost:
    def __init__(self, name: str, endpoint: WinRMEndpoint) -> None:
        self.name = name
        self.session = WinRMSession(endpoint)

    def __enter__(self) -> RemoteHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def gather(self, request: GatherRequest) -> HostFacts:
        """Read everything managed on the host (read-only, so retried on transport faults)."""
        return self._run("gather", request, HostFacts, retry=True)

    def apply(self, request: ApplyRequest) -> ApplyResponse:
        """Carry out a batch; never retried blindly (the host may have done part of it)."""
        return self._run("apply", request, ApplyResponse, retry=False)

    def _run(
        self, name: scripts.ScriptName, request: BaseModel, model: type[T], *, retry: bool
    ) -> T:
        script = scripts.load(name)
        command, arguments = scripts.command_line()
        try:
            result = self.session.run(
                command, arguments, scripts.stdin_payload(script, request), retry=retry
            )
            return scripts.parse_output(result.stdout, model)
        except ProvisionerError as exc:
            raise HostError(self.name, exc) from None
