"""Per-tenant TSP instances: the renamed TSP copy, its provider registration and its settings.

Address ``tenant/k6732/tsp_instance``, applied on the tenant's server. Canonical attributes::

    {"file": "NFONTSP_K6732.TSP", "registered": True, "k_account": "K6732",
     "number_format": "international", "line_name_format": "{extension} {name}",
     "debug_level": 0, "acl_inherited": False,
     "readers": ["BUILTIN\\\\ADMINISTRATORS", "NT AUTHORITY\\\\NETWORK SERVICE",
                 "NT AUTHORITY\\\\SYSTEM"]}   + secret "cti_password", by fingerprint only

The settings key holds the tenant's CTI API password, so it must not inherit HKLM\\SOFTWARE's
permissions (every local user may read those): its ACL is protected, and only SYSTEM,
Administrators and the account TapiSrv runs as (which loads the TSP) may read it. ``readers``
lists who may read it, well-known principals by their English names (hosts print them
localised, so they are matched by SID).

Creating an instance needs verpatch.exe, which the package does not ship: a plan that must create
one on a host without it is a problem naming the path it looked at.
"""

from __future__ import annotations

from provisioner.errors import ProvisionerError
from provisioner.plan.model import Action, Change
from provisioner.remote.contract import (
    KeyAclFacts,
    Operation,
    TspInstanceConfigure,
    TspInstanceCreate,
    TspInstanceRemove,
)
from provisioner.resources.base import HostContext, KindSpec, Resource
from provisioner.resources.services import (
    builtin_sid,
    restart_cti_engine,
    restart_telephony,
    telephony_account,
)

KIND = "tsp_instance"
# TapiSrv loads providers at start; the CTI engine reads the instances' settings at start
SPECS = (KindSpec(KIND, phase=50, restarts=(restart_telephony, restart_cti_engine)),)
SETTINGS = (
    "k_account",
    "number_format",
    "line_name_format",
    "debug_level",
    "acl_inherited",
    "readers",
)
# KEY_QUERY_VALUE, GENERIC_ALL, GENERIC_READ: any of them lets a principal read the values.
_READ_RIGHTS = 0x1 | 0x10000000 | 0x80000000
WELL_KNOWN_PRINCIPALS = {
    "S-1-1-0": "EVERYONE",
    "S-1-3-0": "CREATOR OWNER",
    "S-1-5-11": "NT AUTHORITY\\AUTHENTICATED USERS",
    "S-1-5-18": "NT AUTHORITY\\SYSTEM",
    "S-1-5-19": "NT AUTHORITY\\LOCAL SERVICE",
    "S-1-5-20": "NT AUTHORITY\\NETWORK SERVICE",
    "S-1-5-32-544": "BUILTIN\\ADMINISTRATORS",
    "S-1-5-32-545": "BUILTIN\\USERS",
    "S-1-15-2-1": "APPLICATION PACKAGE AUTHORITY\\ALL APPLICATION PACKAGES",
}
_ALWAYS_READERS = ("S-1-5-18", "S-1-5-32-544")  # SYSTEM, Administrators


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


def principal(sid: str, name: str = "") -> str:
    """How the plan names a principal: well-known ones in English, others as the host does."""
    return WELL_KNOWN_PRINCIPALS.get(sid) or name.upper() or sid


def readers(acl: KeyAclFacts) -> list[str]:
    """Who may read the key's values: an allowing rule with a read right and no denying one."""
    allowed = {principal(e.sid, e.name) for e in acl.entries if e.allow and e.rights & _READ_RIGHTS}
    denied = {
        principal(e.sid, e.name) for e in acl.entries if not e.allow and e.rights & _READ_RIGHTS
    }
    return sorted(allowed - denied)


def _reader(ctx: HostContext) -> str:
    """TapiSrv's account as the apply script takes it: a built-in one by its SID."""
    account = telephony_account(ctx)
    return builtin_sid(account) or account


def _wanted_readers(ctx: HostContext) -> list[str]:
    reader = _reader(ctx)
    return sorted({principal(sid) for sid in _ALWAYS_READERS} | {principal(reader, reader)})


def _created(ctx: HostContext) -> set[str]:
    """The instances (upper-case) whose TSP copy exists and is registered as a provider."""
    if ctx.facts is None:
        return set()
    registered = {p.file.upper() for p in ctx.facts.providers}
    return {
        i.instance.upper()
        for i in ctx.facts.tsp_instances
        if i.file_present and i.file.upper() in registered
    }


def _check_verpatch(ctx: HostContext) -> None:
    tools = ctx.facts.tools if ctx.facts else None
    if tools is None or tools.verpatch:
        return
    created = _created(ctx)
    waiting = [t.name for t in ctx.tenants if t.k_account.upper() not in created]
    if waiting:
        raise ProvisionerError(
            f"{ctx.name}: verpatch.exe is not at {ctx.profile.verpatch_path}, and the TSP "
            f"instance of {', '.join(waiting)} needs it: download verpatch (the NFON manual's "
            "section on TSP instances) and copy it there, or set platform.verpatch_path"
        )


def desired(ctx: HostContext) -> list[Resource]:
    _check_verpatch(ctx)
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
                    "acl_inherited": False,
                    "readers": _wanted_readers(ctx),
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
        if instance.settings_acl is not None:
            attributes |= {
                "acl_inherited": not instance.settings_acl.protected,
                "readers": readers(instance.settings_acl),
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
                verpatch_path=ctx.profile.verpatch_path,
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
                reader=_reader(ctx),
            )
        )
    return ops
