"""The NFON TAPI MSI: installed at the manifest's version, or installed (upgraded) to it.

Canonical attributes: ``{"version": "1.0.0"}``. The source and checksum are how to install it,
not something the host can report, so they are not compared.
"""

from __future__ import annotations

from provisioner.plan.model import Change
from provisioner.remote.contract import Operation, PackageInstall
from provisioner.resources.base import HostContext, KindSpec, Resource

KIND = "package"
SPECS = (KindSpec(KIND, phase=10),)  # first: the TSP the instances copy comes with it


def _address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{KIND}"


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is None or ctx.server.package is None:
        return []
    return [Resource(_address(ctx), KIND, ctx.name, {"version": ctx.server.package.version})]


def live(ctx: HostContext) -> list[Resource]:
    if ctx.facts is None or ctx.server is None or ctx.server.package is None:
        return []  # an unmanaged package is not ours to remove
    wanted = ctx.profile.package_name.lower()
    for package in ctx.facts.packages:
        if package.name.lower() == wanted:
            return [Resource(_address(ctx), KIND, ctx.name, {"version": package.version})]
    return []


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    assert ctx.server is not None and ctx.server.package is not None
    package = ctx.server.package
    return [
        PackageInstall(
            source=package.source,
            sha256=package.sha256.lower(),
            version=package.version,
            properties=ctx.profile.msi_property_map(),
        )
    ]
