"""The dialing location the phonebook number formats need; it must also be the current one.

Address ``server/tapi01/location``::

    {"name": "Dresden", "country_code": 49, "area_code": "351", "outside_access": "0",
     "long_distance_access": "0", "international_access": "00", "current": True}
"""

from __future__ import annotations

from provisioner.plan.model import Change
from provisioner.remote.contract import LocationSet, Operation
from provisioner.resources.base import HostContext, KindSpec, Resource

KIND = "location"
SPECS = (KindSpec(KIND, phase=40),)  # before the TSP instances whose number formats need it


def _address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{KIND}"


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is None or ctx.server.location is None:
        return []
    location = ctx.server.location
    return [
        Resource(
            _address(ctx),
            KIND,
            ctx.name,
            {
                "name": location.name,
                "country_code": location.country_code,
                "area_code": location.area_code,
                "outside_access": location.outside_access,
                "long_distance_access": location.long_distance_access,
                "international_access": location.international_access,
                "current": True,
            },
        )
    ]


def live(ctx: HostContext) -> list[Resource]:
    if ctx.facts is None or ctx.server is None or ctx.server.location is None:
        return []
    wanted = ctx.server.location.name.lower()
    for found in ctx.facts.locations:
        if found.name.lower() == wanted:
            return [
                Resource(
                    _address(ctx),
                    KIND,
                    ctx.name,
                    {
                        "name": ctx.server.location.name,  # names compare without case
                        "country_code": found.country_code,
                        "area_code": found.area_code,
                        "outside_access": found.outside_access,
                        "long_distance_access": found.long_distance_access,
                        "international_access": found.international_access,
                        "current": found.current,
                    },
                )
            ]
    return []


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    assert ctx.server is not None and ctx.server.location is not None
    return [LocationSet(**ctx.server.location.model_dump())]
