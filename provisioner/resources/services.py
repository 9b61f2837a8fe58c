"""Windows services the provisioner manages: the Telephony server and the CTI engine.

``telephony`` (TapiSrv in server mode)::

    {"server_mode": True, "administrators": ["NFON\\\\TAPI-ADMINS"], "account": "NFON\\\\SVC-TAPI",
     "start_mode": "auto"}   + secret "service_password"

``cti_engine`` (the NFON service that holds the CTI API connection)::

    {"start_mode": "auto", "state": "running", "account": "LocalSystem"}

Account names compare without regard to case, and the many spellings of the local system
account are one.
"""

from __future__ import annotations

from provisioner.manifest.models import TapiServer
from provisioner.plan.model import Action, Change
from provisioner.platform import Profile
from provisioner.remote.contract import (
    Operation,
    ServiceConfigure,
    ServiceControl,
    ServiceFacts,
    TelephonyConfigure,
)
from provisioner.resources.base import HostContext, KindSpec, Resource, Restart

TELEPHONY = "telephony"
CTI_ENGINE = "cti_engine"

_LOCAL_SYSTEM = {"localsystem", "local system", "nt authority\\system", ".\\localsystem", "system"}


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
    lowered = name.strip().lower()
    if lowered in _LOCAL_SYSTEM or not lowered:
        return "LocalSystem"
    return name.strip().upper()


def _telephony_address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{TELEPHONY}"


def _cti_address(ctx: HostContext) -> str:
    return f"server/{ctx.name}/{CTI_ENGINE}"


def desired(ctx: HostContext) -> list[Resource]:
    if ctx.server is None:
        return []
    telephony = ctx.server.telephony
    attributes = {
        "server_mode": telephony.server_mode,
        "administrators": sorted({a.upper() for a in telephony.administrators}),
        "account": canonical_account(telephony.service_account or "LocalSystem"),
        "start_mode": "auto",
    }
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
                    "account": canonical_account(engine.account),
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
        resources.append(
            Resource(
                _telephony_address(ctx),
                TELEPHONY,
                ctx.name,
                {
                    "server_mode": telephony.server_mode,
                    "administrators": sorted({a.upper() for a in telephony.administrators}),
                    "account": canonical_account(telephony.service.account),
                    "start_mode": telephony.service.start_mode,
                },
                fingerprints={"service_password": telephony.account_password},
            )
        )
    engine = ctx.server.cti_engine
    if engine is not None:
        name = (cti_engine_name(ctx.server, ctx.profile) or "").lower()
        found = next((s for s in ctx.facts.services if s.name.lower() == name), None)
        if found is not None:
            resources.append(Resource(_cti_address(ctx), CTI_ENGINE, ctx.name, _service(found)))
    return resources


def _service(facts: ServiceFacts) -> dict[str, object]:
    return {
        "start_mode": facts.start_mode,
        "state": facts.state,
        "account": canonical_account(facts.account),
    }


def operations(change: Change, resource: Resource | None, ctx: HostContext) -> list[Operation]:
    after = change.after or {}
    before = change.before or {}
    if change.kind == TELEPHONY:
        ops: list[Operation] = []
        service = ctx.profile.telephony_service
        account_changed = before.get("account") != after["account"] or change.sensitive_changed
        if account_changed or before.get("start_mode") != after["start_mode"]:
            password = None
            if "service_password" in change.sensitive_changed and resource is not None:
                password = ctx.seal(resource.secrets["service_password"])
            ops.append(
                ServiceConfigure(
                    name=service,
                    start_mode="auto",
                    account=str(after["account"]),
                    password=password,
                )
            )
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
    ops = []
    if change.action is Action.CREATE or any(
        before.get(k) != after[k] for k in ("start_mode", "account")
    ):
        ops.append(
            ServiceConfigure(
                name=name,
                start_mode=after["start_mode"],
                account=str(after["account"]),
            )
        )
    if before.get("state") != after["state"]:
        ops.append(
            ServiceControl(
                op="service.start" if after["state"] == "running" else "service.stop", name=name
            )
        )
    return ops
