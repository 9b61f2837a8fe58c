"""Handlers: a service restarted once, after the last change that needs it (Ansible's handlers).

No manifest names a restart. The planner adds one per service that the host's changes need, as
their kinds declare it (``KindSpec.restarts``). Address ``server/tapi01/restart/TapiSrv``::

    {"service": "TapiSrv", "interrupts": ["k6732", "k7001"]}
"""

from __future__ import annotations

from collections.abc import Iterable

from provisioner.plan.model import Action, Change
from provisioner.remote.contract import Operation, ServiceControl
from provisioner.resources.base import HostContext, KindSpec, Resource, Restart

KIND = "restart"
# after the TSP instances (50), before the line assignments (60), whose new lines need it
SPECS = (KindSpec(KIND, phase=55),)


def changes(ctx: HostContext, restarts: Iterable[Restart]) -> list[Change]:
    return [
        Change(
            address=f"server/{ctx.name}/{KIND}/{restart.service}",
            action=Action.RESTART,
            kind=KIND,
            host=ctx.name,
            # the TSP instances of every tenant on the server stop with either service
            after={"service": restart.service, "interrupts": [t.name for t in ctx.tenants]},
            reason=restart.reason,
        )
        for restart in restarts
    ]


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    return [ServiceControl(op="service.restart", name=str((change.after or {})["service"]))]
