"""Per-tenant TSP instances: the renamed TSP copy, its provider registration and its settings.

Address ``tenant/k6732/tsp_instance``, applied on the tenant's server. Canonical attributes::

    {"file": "NFONTSP_K6732.TSP", "registered": True, "k_account": "K6732",
     "number_format": "international", "line_name_format": "{extension} {name}",
     "debug_level": 0}      + secret "cti_password", compared by fingerprint only
"""

from __future__ import annotations

from provisioner.plan.model import Action, Change
from provisioner.remote.contract import (
    Operation,
    TspInstanceConfigure,
    TspInstanceCreate,
    TspInstanceRemove,
)
from provisioner.resources.base import HostContext, KindSpec, Resource
from provisioner.resources.services import restart_cti_engine, restart_telephony

KIND = "tsp_instance"
# TapiSrv loads providers at start; the CTI engine reads the instances' settings at start
SPECS = (KindSpec(KIND, phase=50, restarts=(restart_telephony, restart_cti_engine)),)
SETTINGS = ("k_account", "number_format", "line_name_format", "debug_level")


def line_name(line_format: str, extension: str, name: str, k_account: str) -> str:
    """How the TSP names a line: the instance's line-name format filled in (GUESS: the NFON
    manual names the setting, not its syntax; the manifest's placeholders are ours). Plain
    replacement: a format from a manifest never reaches ``str.format``."""
    return (
        line_format.replace("{extension}", extension)
        .replace("{name}", name)
        .replace("{k_account}", k_account)
    )


def address(tenant: str) -> str:
    return f"tenant/{tenant}/{KIND}"


def desired(ctx: HostContext) -> list[Resource]:
    resources = []
    for tenant in ctx.tenants:
        resources.append(
            Resource(
                address(tenant.name),
                KIND,
                ctx.name,
                {
                    "file": ctx.profile.instance_file(tenant.k_account).upper(),
                    "registered": True,
                    "k_account": tenant.k_account.upper(),
                    "number_format": tenant.number_format.value,
                    "line_name_format": tenant.line_name_format,
                    "debug_level": tenant.debug_level,
                },
                tenant=tenant.name,
                secrets={"cti_password": ctx.secret(tenant.cti_password)},
            )
        )
    return resources


def live(ctx: HostContext) -> list[Resource]:
    """Instances on the host; those of no managed tenant come back keyed by K-account."""
    if ctx.facts is None:
        return []
    by_account = {t.k_account.upper(): t.name for t in ctx.tenants}
    registered = {p.file.upper() for p in ctx.facts.providers}
    resources = []
    for instance in ctx.facts.tsp_instances:
        tenant = by_account.get(instance.instance.upper())
        settings = instance.settings
        attributes: dict[str, object] = {
            "file": instance.file.upper() if instance.file_present else None,
            "registered": instance.file.upper() in registered,
        }
        if settings is not None:
            attributes |= {
                "k_account": settings.k_account.upper(),
                "number_format": settings.number_format,
                "line_name_format": settings.line_name_format,
                "debug_level": settings.debug_level,
            }
        resources.append(
            Resource(
                address(tenant or instance.instance.lower()),
                KIND,
                ctx.name,
                attributes,
                tenant=tenant,
                fingerprints={"cti_password": settings.password if settings else None},
                detail=f"TSP instance {instance.instance} ({instance.file})",
            )
        )
    return resources


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    before, after = change.before or {}, change.after or {}
    instance = str((after or before).get("k_account") or change.address.split("/")[1]).upper()
    if change.action is Action.DELETE:
        return [
            TspInstanceRemove(
                instance=instance,
                file=ctx.profile.instance_file(instance),
                settings_key=ctx.profile.settings_key(instance),
            )
        ]
    assert resource is not None
    ops: list[Operation] = []
    if not before.get("file") or not before.get("registered"):
        ops.append(
            TspInstanceCreate(
                instance=instance,
                file=ctx.profile.instance_file(instance),
                provider_name=ctx.profile.provider_name(instance),
                tsp_file=ctx.profile.tsp_file,
            )
        )
    settings_differ = any(before.get(k) != after.get(k) for k in SETTINGS)
    if settings_differ or change.sensitive_changed:
        password = None
        if "cti_password" in change.sensitive_changed:
            password = ctx.seal(resource.secrets["cti_password"])
        ops.append(
            TspInstanceConfigure(
                instance=instance,
                settings_key=ctx.profile.settings_key(instance),
                k_account=str(after["k_account"]),
                number_format=str(after["number_format"]),
                line_name_format=str(after["line_name_format"]),
                debug_level=int(after["debug_level"]),
                password=password,
            )
        )
    return ops
