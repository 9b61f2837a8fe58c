"""Remote-TAPI client settings of a workstation (``tcmsetup /c``).

Address ``client/ws-0101/tapi_client``::

    {"enabled": True, "servers": ["tapi01.nfon.test"], "connection_oriented": False}

The server list is ordered (tcmsetup replaces it whole, in the given order); names compare
without regard to case.
"""

from __future__ import annotations

from provisioner.plan.model import Change
from provisioner.remote.contract import Operation, TapiClientSet
from provisioner.resources.base import HostContext, KindSpec, Resource

KIND = "tapi_client"
SPECS = (KindSpec(KIND, phase=70),)  # last, after the client's firewall rules


def _address(ctx: HostContext) -> str:
    return f"client/{ctx.name}/{KIND}"


def server_names(ctx: HostContext) -> list[str]:
    assert ctx.clients is not None
    names = []
    for name in ctx.clients.servers:
        server = ctx.estate.servers[name]
        names.append((server.winrm.host or server.name).lower())
    return names


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.clients is None:
        return []
    return [
        Resource(
            _address(ctx),
            KIND,
            ctx.name,
            {
                "enabled": True,
                "servers": server_names(ctx),
                "connection_oriented": ctx.clients.connection_oriented,
            },
        )
    ]


def live(ctx: HostContext) -> list[Resource]:
    if ctx.facts is None or ctx.clients is None or ctx.facts.tapi_client is None:
        return []
    found = ctx.facts.tapi_client
    return [
        Resource(
            _address(ctx),
            KIND,
            ctx.name,
            {
                "enabled": found.enabled,
                "servers": [s.lower() for s in found.servers],
                "connection_oriented": found.connection_oriented,
            },
        )
    ]


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    assert ctx.clients is not None
    return [
        TapiClientSet(
            servers=server_names(ctx), connection_oriented=ctx.clients.connection_oriented
        )
    ]
