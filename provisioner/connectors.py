"""How the runner reaches hosts: one small protocol, one factory.

A :class:`Connector` is everything the runner, ``facts``, ``doctor`` and ``conformance`` know of
a host: gather a request into facts, apply a request into a response, upload a package (each
ONE command), abort, close. The runner gets its connectors from one factory, a :data:`Connect`::

    connect = over_winrm(estate, inventory)     # WinRM + PowerShell, from manifests + inventory
    connect = in_process({"tapi01": windows})   # the lab's Windows model, called directly
    with connect(host) as remote:
        facts = remote.gather(gather_request(estate, host))

Both give a :class:`~provisioner.remote.host.RemoteHost`: the shipped scripts with their
requests as JSON on stdin, one JSON document back. Over WinRM the shell is a WinRS shell on the
host (TLS verified); in-process it is the handler itself (no TLS, no WS-Management), so tests
and the conformance suite run the same contract fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from provisioner.inventory import Inventory
from provisioner.manifest.validate import Estate
from provisioner.planner import Host
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    GatherRequest,
    HostFacts,
    UploadResponse,
)
from provisioner.remote.host import CommandHandler, InProcessShell, RemoteHost, RetryEvent
from provisioner.transports.winrm import DEFAULT_COMMAND_TIMEOUT_S, WinRMEndpoint, WinRMSession


class Connector(Protocol):
    """One host, one shell for the whole run; every method but abort is one command."""

    name: str
    retries: list[RetryEvent]

    def gather(self, request: GatherRequest) -> HostFacts: ...

    def apply(self, request: ApplyRequest) -> ApplyResponse: ...

    def upload(self, path: Path, sha256: str) -> UploadResponse: ...

    def abort(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Connector: ...

    def __exit__(self, *exc_info: object) -> None: ...


Connect = Callable[[Host], Connector]
"""``connect(host) -> Connector``: the one factory the runner takes its connectors from."""


def endpoint_for(estate: Estate, inventory: Inventory, host: Host) -> WinRMEndpoint:
    """Manifest WinRM settings (Site defaults, then the host's), overlaid by the inventory."""
    doc = estate.host_documents()[host.name]
    settings = inventory.endpoint_settings(host.name, estate.winrm_for(doc))
    password = inventory.resolve(settings.password) if settings.password else None
    scheme = settings.scheme or "https"
    return WinRMEndpoint(
        host=settings.host or host.name,
        port=settings.port or (5986 if scheme == "https" else 5985),
        scheme=scheme,
        auth=(settings.auth.value if settings.auth else "ntlm"),
        user=settings.user or "",
        password=password,
        ca_file=settings.ca_file,
        allow_insecure=bool(settings.allow_insecure),
        command_timeout_s=settings.command_timeout_s or DEFAULT_COMMAND_TIMEOUT_S,
    )


def over_winrm(
    estate: Estate, inventory: Inventory, *, on_retry: Callable[[RetryEvent], None] | None = None
) -> Connect:
    """Hosts reached over WinRM with the endpoint the manifests and the inventory give them."""

    def connect(host: Host) -> Connector:
        session = WinRMSession(endpoint_for(estate, inventory, host))
        return RemoteHost(host.name, session, on_retry=on_retry)

    return connect


def in_process(handlers: Mapping[str, CommandHandler]) -> Connect:
    """Hosts whose commands a handler in this process runs (by host name): the lab's model."""

    def connect(host: Host) -> Connector:
        return RemoteHost(host.name, InProcessShell(handlers[host.name]))

    return connect
