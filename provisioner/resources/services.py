"""Windows services the provisioner manages: the Telephony server and the CTI engine.

``telephony`` (TapiSrv in server mode)::

    {"server_mode": True, "administrators": ["NFON\\\\TAPI-ADMINS"], "start_mode": "auto",
     "account": "NFON\\\\SVC-TAPI", "logon_right": True}   + secret "service_password"

``account`` is compared only when the manifest names one (``telephony.service_account``):
otherwise TapiSrv keeps the account it has (NT AUTHORITY\\NetworkService by default).
``logon_right`` appears for an account that is not built in: it must hold 'Log on as a
service', or the service does not start (error 1069).

``cti_engine`` (the NFON service that holds the CTI API connection)::

    {"start_mode": "auto", "state": "running", "account": "LocalSystem"}

Account names compare without regard to case, and the many spellings of each built-in account
are one.
"""

from __future__ import annotations

from typing import cast

from provisioner.manifest.models import TapiServer
from provisioner.plan.model import Action, Change
from provisioner.platform import Profile
from provisioner.remote.contract import (
    LogonRightGrant,
    Operation,
    ServiceConfigure,
    ServiceControl,
    ServiceFacts,
    StartMode,
    TelephonyConfigure,
)
from provisioner.resources.base import HostContext, KindSpec, Resource, Restart

TELEPHONY = "telephony"
CTI_ENGINE = "cti_engine"

# Each built-in account under the name Win32_Service.Change takes, with its other spellings and
# its well-known SID.
BUILTIN_ACCOUNTS: dict[str, tuple[str, frozenset[str]]] = {
    "LocalSystem": (
        "S-1-5-18",
        frozenset(
            {"localsystem", "local system", "nt authority\\system", ".\\localsystem", "system"}
        ),
    ),
    "NT AUTHORITY\\NetworkService": (
        "S-1-5-20",
        frozenset({"nt authority\\networkservice", "nt authority\\network service"}),
    ),
    "NT AUTHORITY\\LocalService": (
        "S-1-5-19",
        frozenset({"nt authority\\localservice", "nt authority\\local service"}),
    ),
}
DEFAULT_TELEPHONY_ACCOUNT = "NT AUTHORITY\\NetworkService"  # TapiSrv's, when it reports none


def cti_engine_name(server: TapiServer, profile: Profile) -> str | None:
    """The CTI engine's service name (the manifest's, else the profile's); None if unmanaged."""
    engine = server.cti_engine
    return None if engine is None else engine.name or profile.cti_engine_service


def restart_telephony(ctx: HostContext) -> Restart:
    return Restart(
        ctx.profile.telephony_service, "TAPI providers and server settings load at start"
    )


def restart_cti_engine(ctx: HostContext) -> Restart | None:
    """The CTI engine, when the manifest keeps it running (a stopped one stays stopped)."""
    server = ctx.server
    engine = server.cti_engine if server else None
    if server is None or engine is None or engine.state.value != "running":
        return None
    return Restart(cti_engine_name(server, ctx.profile) or "", "TSP instance settings changed")


SPECS = (
    KindSpec(TELEPHONY, phase=30, restarts=(restart_telephony,)),
    KindSpec(CTI_ENGINE, phase=30),
)


def canonical_account(name: str) -> str:
    """A built-in account's one name, else the account in upper case (an empty name, as the
    service database may hold for LocalSystem, is LocalSystem)."""
    lowered = name.strip().lower()
    if not lowered:
        return "LocalSystem"
    for canonical, (_, spellings) in BUILTIN_ACCOUNTS.items():
        if lowered in spellings:
            return canonical
    return name.strip().upper()


def builtin_sid(account: str) -> str | None:
    """The SID of a built-in account (any spelling), None for any other account."""
    found = BUILTIN_ACCOUNTS.get(canonical_account(account))
    return found[0] if found else None


def _account_attributes(account: str) -> dict[str, object]:
    """``account``, and ``logon_right`` for an account that needs the right granted."""
    canonical = canonical_account(account)
    if canonical in BUILTIN_ACCOUNTS:
        return {"account": canonical}
    return {"account": canonical, "logon_right": True}


def _live_account_attributes(wanted: str, facts: ServiceFacts) -> dict[str, object]:
    """The live side of :func:`_account_attributes`: the right is known only for the account
    the service has, so it is None while the service runs as another one."""
    have = canonical_account(facts.account)
    attributes: dict[str, object] = {"account": have}
    if canonical_account(wanted) not in BUILTIN_ACCOUNTS:
        attributes["logon_right"] = facts.logon_right if have == canonical_account(wanted) else None
    return attributes


def _telephony_address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{TELEPHONY}"


def _cti_address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{CTI_ENGINE}"


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is None:
        return []
    telephony = ctx.server.telephony
    attributes: dict[str, object] = {
        "server_mode": telephony.server_mode,
        "administrators": sorted({a.upper() for a in telephony.administrators}),
        "start_mode": "auto",
    }
    if telephony.service_account is not None:
        attributes |= _account_attributes(telephony.service_account)
    secrets = {}
    if telephony.service_password is not None:
        secrets["service_password"] = ctx.secret(telephony.service_password)
    resources = [
        Resource(_telephony_address(ctx), TELEPHONY, ctx.name, attributes, secrets=secrets)
    ]
    engine = ctx.server.cti_engine
    if engine is not None:
        resources.append(
            Resource(
                _cti_address(ctx),
                CTI_ENGINE,
                ctx.name,
                {
                    "start_mode": engine.start_mode.value,
                    "state": engine.state.value,
                    **_account_attributes(engine.account),
                },
            )
        )
    return resources


def live(ctx: HostContext) -> list[Resource]:
    if ctx.facts is None or ctx.server is None:
        return []
    resources = []
    telephony = ctx.facts.telephony
    if telephony is not None:
        attributes: dict[str, object] = {
            "server_mode": telephony.server_mode,
            "administrators": sorted({a.upper() for a in telephony.administrators}),
            "start_mode": telephony.service.start_mode,
        }
        wanted = ctx.server.telephony.service_account
        if wanted is not None:
            attributes |= _live_account_attributes(wanted, telephony.service)
        resources.append(
            Resource(
                _telephony_address(ctx),
                TELEPHONY,
                ctx.name,
                attributes,
                fingerprints={"service_password": telephony.account_password},
            )
        )
    engine = ctx.server.cti_engine
    if engine is not None:
        name = (cti_engine_name(ctx.server, ctx.profile) or "").lower()
        found = next((s for s in ctx.facts.services if s.name.lower() == name), None)
        if found is not None:
            attributes = {"start_mode": found.start_mode, "state": found.state}
            attributes |= _live_account_attributes(engine.account, found)
            resources.append(Resource(_cti_address(ctx), CTI_ENGINE, ctx.name, attributes))
    return resources


def telephony_account(ctx: HostContext) -> str:
    """The account TapiSrv runs as once the plan is applied: the manifest's, else its own."""
    if ctx.server is not None and ctx.server.telephony.service_account is not None:
        return canonical_account(ctx.server.telephony.service_account)
    if ctx.facts is not None and ctx.facts.telephony is not None:
        return canonical_account(ctx.facts.telephony.service.account)
    return DEFAULT_TELEPHONY_ACCOUNT


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    after = change.after or {}
    before = change.before or {}
    if change.kind == TELEPHONY:
        ops = _account_operations(ctx.profile.telephony_service, change, resource, ctx)
        if (before.get("server_mode"), before.get("administrators")) != (
            after["server_mode"],
            after["administrators"],
        ):
            ops.append(
                TelephonyConfigure(
                    server_mode=bool(after["server_mode"]),
                    administrators=list(after["administrators"]),
                )
            )
        return ops
    # the CTI engine (service names compare without case, so the name is not an attribute)
    assert ctx.server is not None and ctx.server.cti_engine is not None
    name = cti_engine_name(ctx.server, ctx.profile) or ""
    ops = _account_operations(name, change, resource, ctx)
    if before.get("state") != after["state"]:
        ops.append(
            ServiceControl(
                op="service.start" if after["state"] == "running" else "service.stop", name=name
            )
        )
    return ops


def _account_operations(
    service: str, change: Change, resource: Resource | None, ctx: HostContext
) -> list[Operation]:
    """Start mode, account and password in one Change; a missing logon right alone is granted.

    A new account always travels with its password: the service database needs the password of
    the account it is given.
    """
    after, before = change.after or {}, change.before or {}
    account = after.get("account")
    password_changed = "service_password" in change.sensitive_changed
    account_changed = account is not None and (
        change.action is Action.CREATE or before.get("account") != account or password_changed
    )
    if account_changed or before.get("start_mode") != after["start_mode"]:
        password = None
        if account_changed and resource is not None and "service_password" in resource.secrets:
            password = ctx.seal(resource.secrets["service_password"])
        return [
            ServiceConfigure(
                name=service,
                start_mode=cast(StartMode, after["start_mode"]),
                account=str(account) if account_changed else None,
                password=password,
            )
        ]
    if after.get("logon_right") and not before.get("logon_right"):
        return [LogonRightGrant(account=str(account))]
    return []
