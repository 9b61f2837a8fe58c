"""One module per resource kind: its canonical form, how to read it from facts, how to change it.

Every module that works on hosts declares its kinds (``SPECS``, see
:class:`~provisioner.resources.base.KindSpec`) and offers the same functions over a
:class:`~provisioner.resources.base.HostContext`:

* ``desired(ctx)``: the resources the manifests ask for on this host;
* ``live(ctx)``: the resources the gathered facts show, in the managed scope only;
* ``operations(change, resource, ctx)``: the contract operations that carry out one change.

Three kinds differ, for a reason: ``line_assignment`` turns all of a host's changes into one
``tsecimp`` import (``batch_operations``); ``restart`` has no desired or live side (the planner
adds one for each service the other kinds' changes need); and ``users_group`` is carried out over
LDAP, not on a host (``pairs``). ``services`` holds the two Windows services, Telephony and the
CTI engine.

They know nothing about transports: facts come in as contract models, operations go out as them.
Adding a kind means a module here, its entry below, its contract operations and the scripts.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol, cast

from provisioner.resources import (
    firewall,
    line_assignment,
    location,
    package,
    restart,
    services,
    tapi_client,
    tsp_instance,
)
from provisioner.resources.base import HostContext, KindSpec, Resource


class Declares(Protocol):
    """A resource module: it declares its kinds."""

    @property
    def SPECS(self) -> tuple[KindSpec, ...]: ...


class HostKinds(Declares, Protocol):
    """A resource module whose kinds live on hosts, as the planner sees it."""

    def desired(self, ctx: HostContext) -> list[Resource]: ...

    def live(self, ctx: HostContext) -> list[Resource]: ...


HOST_MODULES: tuple[HostKinds, ...] = (
    package,
    firewall,
    services,
    location,
    tsp_instance,
    line_assignment,
    tapi_client,
)
"""The modules whose kinds live on hosts, in the order their resources are compared."""

_DECLARING: tuple[Declares, ...] = (*HOST_MODULES, restart)
SPECS: dict[str, KindSpec] = {spec.name: spec for module in _DECLARING for spec in module.SPECS}
MODULE_OF: dict[str, ModuleType] = {
    spec.name: cast(ModuleType, module) for module in _DECLARING for spec in module.SPECS
}
"""The module whose ``operations`` carry out a change of each kind (the runner makes one
``tsecimp`` import of a host's line assignments instead: ``line_assignment.batch_operations``)."""
