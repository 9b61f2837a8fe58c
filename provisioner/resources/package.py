"""The NFON TAPI MSI: installed at the manifest's version, or installed (upgraded) to it.

Canonical attributes: ``{"version": "1.10.0"}``. Versions compare as numbers (``1.10.0`` is newer
than ``1.9.0``; ``1.0`` is ``1.0.0``); of several installed products with the package's name the
one with the manifest's ProductCode counts, else the newest. The source and checksum say how to
install it, not what the host reports, so they are not compared.

Where the host gets the file (``package.source``, checked offline by the manifest rules):

* a file on the admin workstation is sent over the host's WinRM channel by the upload script,
  only when a batch installs it and the host's package cache does not hold its sha256 yet;
* an ``https://`` URL is downloaded by the host;
* a UNC path is read by the host itself, only where the manifest says it can
  (``host_reads_share``): WinRM cannot pass the operator's credentials on (the second hop).

A package that keeps the installed product's ProductCode (``package.product_code``) is a minor
upgrade and installs as a reinstall (``REINSTALL=ALL REINSTALLMODE=vomus``); the provisioner never
downgrades.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from provisioner.errors import ProvisionerError
from provisioner.plan.model import Change
from provisioner.remote.contract import Operation, PackageFacts, PackageInstall
from provisioner.resources.base import HostContext, KindSpec, Resource

KIND = "package"
SPECS = (KindSpec(KIND, phase=10),)  # first: the TSP the instances copy comes with it


def version_key(text: str) -> tuple[int, ...]:
    """``"1.10.0"`` → ``(1, 10)``: numbers, trailing zeros dropped; ``()`` for no number."""
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    numbers = [int(part) for part in match[1].split(".")] if match else []
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def canonical_version(text: str) -> str:
    """One spelling per version, three numbers at least: ``1.0`` → ``1.0.0``, ``01.2`` → ``1.2.0``.

    Text that holds no version (not written by Windows Installer) is compared as it is.
    """
    key = version_key(text)
    if not key and not re.match(r"\s*0", text):
        return text.strip()
    return ".".join(str(number) for number in key + (0,) * (3 - len(key)))


def _address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{KIND}"


def installed(ctx: HostContext) -> PackageFacts | None:
    """Of the installed products with the package's name, the one with the manifest's
    ProductCode, else the newest."""
    if ctx.facts is None or ctx.server is None or ctx.server.package is None:
        return None
    code = (ctx.server.package.product_code or "").upper()
    name = ctx.profile.package_name.lower()
    found = [p for p in ctx.facts.packages if p.name.lower() == name]
    same = [p for p in found if p.product_code.upper() == code]
    return max(same or found, key=lambda p: version_key(p.version), default=None)


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is None or ctx.server.package is None:
        return []
    wanted = ctx.server.package.version
    have = installed(ctx)
    if have is not None and version_key(have.version) > version_key(wanted):
        raise ProvisionerError(
            f"{ctx.name} has {have.name} {have.version}, newer than package.version {wanted}: "
            "the provisioner does not downgrade; raise package.version or uninstall it by hand"
        )
    return [Resource(_address(ctx), KIND, ctx.name, {"version": canonical_version(wanted)})]


def live(ctx: HostContext) -> list[Resource]:
    have = installed(ctx)  # an unmanaged package is not ours to remove
    if have is None:
        return []
    return [Resource(_address(ctx), KIND, ctx.name, {"version": canonical_version(have.version)})]


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    assert ctx.server is not None and ctx.server.package is not None
    package = ctx.server.package
    fetch = package.fetch
    assert fetch != "other", "the manifest rules refuse other URL schemes"
    have = installed(ctx)
    same_product = (
        have is not None
        and package.product_code is not None
        and have.product_code.upper() == package.product_code.upper()
    )
    return [
        PackageInstall(
            fetch=fetch,
            source=Path(package.source).name if fetch == "upload" else package.source,
            sha256=package.sha256.lower(),
            version=package.version,
            properties=ctx.profile.msi_property_map(),
            reinstall=same_product,
            installed_product_code=have.product_code if have else None,
        )
    ]


def uploads(ctx: HostContext, operations: Iterable[Operation]) -> list[tuple[Path, str]]:
    """``(local file, sha256)`` of each workstation package these operations install that the
    host does not hold yet: what the upload script must send before the batch."""
    if ctx.server is None or ctx.server.package is None:
        return []
    held = set(ctx.facts.package_cache) if ctx.facts else set()
    manifest_file = ctx.estate.origin[("TapiServer", ctx.name)].file
    return [
        (ctx.server.package.local_path(manifest_file), op.sha256)
        for op in operations
        if isinstance(op, PackageInstall) and op.fetch == "upload" and op.sha256 not in held
    ]
