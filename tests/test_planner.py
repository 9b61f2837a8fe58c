"""The planner on in-memory facts: phases, prune rules, handlers, targets; and it names no kind."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import provisioner.planner
from provisioner.manifest import load_estate
from provisioner.manifest.models import SecretRef
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Action, Change, Plan
from provisioner.planner import Host, HostPlan, PlanInputs, build_plan, context, handlers, plan_host
from provisioner.remote.contract import (
    FirewallRuleFacts,
    HostFacts,
    SealKey,
    ServiceFacts,
    TelephonyFacts,
)
from provisioner.remote.tsecimp import ListedLine, ListedProvider, format_listing
from provisioner.resources import SPECS, users_group
from provisioner.secrets import Secret
from tests.manifest.estate import SERVER, TENANT, write_estate

SERVER_HOST = Host("server/tapi01", "tapi01", "server")
GROUP = "NFON-TAPI-Provisioner"


def estate_of(tmp_path: Path, **replace: str) -> Estate:
    estate, errors = load_estate([write_estate(tmp_path, **replace)])
    assert errors == []
    return estate


def resolve(ref: SecretRef) -> Secret:
    return Secret(f"value of {ref.env}")


def server_facts(**fields: object) -> HostFacts:
    return HostFacts.model_validate(
        {
            "computer_name": "TAPI01",
            "role": "server",
            "seal_key": SealKey(modulus="AQAB", exponent="AQAB"),
            **fields,
        }
    )


def plan_server(estate: Estate, facts: HostFacts, **inputs: object) -> tuple[Plan, HostPlan]:
    plan, host_plans = build_plan(
        estate,
        PlanInputs(facts={SERVER_HOST.key: facts}, resolve=resolve, **inputs),  # type: ignore[arg-type]
    )
    return plan, host_plans[SERVER_HOST.key]


def rule(name: str, group: str = GROUP) -> FirewallRuleFacts:
    return FirewallRuleFacts(
        name=name,
        group=group,
        direction=1,
        action=1,
        protocol=6,
        local_ports="8080",
        profiles=0x7FFFFFFF,
        enabled=True,
    )


PBX = {"k6732": {ext: f"Desk {ext}" for ext in ("100", "101", "102")}}  # tenant → PBX names


def listing(users: dict[str, list[str]]) -> str:
    """K6732's provider with lines 100-102 as the PBX names them (line name format
    "{extension} {name}"); ``users``: extension → users assigned to it."""
    lines = [
        ListedLine(f"{ext} {name}", str(7000 + int(ext)), [ext], users.get(ext, []))
        for ext, name in PBX["k6732"].items()
    ]
    return format_listing([ListedProvider("NFON Third Party TAPI K6732", lines)])


def kinds_in_order(changes: list[Change]) -> list[str]:
    result: list[str] = []
    for change in changes:
        if not result or result[-1] != change.kind:
            result.append(change.kind)
    return result


# --- phases ---------------------------------------------------------------------------------


def test_a_bare_server_gets_every_kind_in_phase_order(tmp_path: Path) -> None:
    _, host_plan = plan_server(estate_of(tmp_path), server_facts())
    assert kinds_in_order(host_plan.changes) == [
        "firewall_rule",
        "telephony",
        "cti_engine",
        "tsp_instance",
        "restart",
        "line_assignment",
    ]
    assert all(c.action is not Action.NOOP for c in host_plan.changes)
    phases = [SPECS[c.kind].phase for c in host_plan.changes]
    assert phases == sorted(phases)


def test_restarts_come_after_the_instances_and_before_the_lines_they_bring(tmp_path: Path) -> None:
    _, host_plan = plan_server(estate_of(tmp_path), server_facts())
    addresses = [c.address for c in host_plan.changes]
    restarts = [a for a in addresses if "/restart/" in a]
    assert restarts == ["server/tapi01/restart/TapiSrv", "server/tapi01/restart/NFONCTIEngine"]
    assert addresses.index(restarts[0]) > addresses.index("tenant/k6732/tsp_instance")
    assert addresses.index(restarts[-1]) < addresses.index(
        "tenant/k6732/line_assignment/NFON\\ALICE"
    )


# --- handlers -------------------------------------------------------------------------------


def change(kind: str, action: Action = Action.UPDATE) -> Change:
    return Change(address=f"server/tapi01/{kind}", action=action, kind=kind, host="tapi01")


def restarted(estate: Estate, changes: list[Change]) -> list[str]:
    ctx = context(estate, SERVER_HOST, PlanInputs(facts={}))
    return [str((c.after or {})["service"]) for c in handlers(changes, ctx)]


@pytest.mark.parametrize(
    ("kinds", "services"),
    [
        (["telephony"], ["TapiSrv"]),
        (["tsp_instance"], ["TapiSrv", "NFONCTIEngine"]),
        (["telephony", "tsp_instance", "tsp_instance"], ["TapiSrv", "NFONCTIEngine"]),
        (["firewall_rule", "location", "package", "cti_engine", "line_assignment"], []),
    ],
)
def test_each_service_restarts_once_for_the_kinds_that_need_it(
    tmp_path: Path, kinds: list[str], services: list[str]
) -> None:
    assert restarted(estate_of(tmp_path), [change(k) for k in kinds]) == services


def test_no_restart_for_changes_that_change_nothing(tmp_path: Path) -> None:
    assert restarted(estate_of(tmp_path), [change("tsp_instance", Action.NOOP)]) == []


def test_a_stopped_cti_engine_stays_stopped(tmp_path: Path) -> None:
    stopped = SERVER + "cti_engine: {state: stopped}\n"
    estate = estate_of(tmp_path, tapi01_yaml=stopped)
    assert restarted(estate, [change("tsp_instance")]) == ["TapiSrv"]


def test_restarts_name_the_services_the_platform_profile_names(tmp_path: Path) -> None:
    renamed = SERVER + "platform: {telephony_service: TapiSrv2, cti_engine_service: Engine}\n"
    estate = estate_of(tmp_path, tapi01_yaml=renamed)
    assert restarted(estate, [change("tsp_instance")]) == ["TapiSrv2", "Engine"]


def test_a_target_keeps_the_restarts_its_changes_need(tmp_path: Path) -> None:
    plan, _ = build_plan(
        estate_of(tmp_path),
        PlanInputs(facts={SERVER_HOST.key: server_facts()}, resolve=resolve),
        targets=["tenant/k6732/tsp_instance"],
    )
    assert [c.address for c in plan.changes] == [
        "tenant/k6732/tsp_instance",
        "server/tapi01/restart/TapiSrv",
        "server/tapi01/restart/NFONCTIEngine",
    ]


# --- prune rules ----------------------------------------------------------------------------


def test_a_stray_rule_of_the_managed_group_is_listed_unless_prune_is_on(tmp_path: Path) -> None:
    facts = server_facts(firewall_rules=[rule("stray"), rule("theirs", group="Other")])
    plan, host_plan = plan_server(estate_of(tmp_path), facts)
    assert [u.address for u in plan.unmanaged] == ["server/tapi01/firewall_rule/stray"]
    assert not [c for c in host_plan.changes if c.action is Action.DELETE]

    pruning = SERVER + "  prune: true\n"
    plan, host_plan = plan_server(estate_of(tmp_path, tapi01_yaml=pruning), facts)
    [deleted] = [c for c in host_plan.changes if c.action is Action.DELETE]
    assert (deleted.address, deleted.reason) == (
        "server/tapi01/firewall_rule/stray",
        "not in the manifests (prune is on)",
    )
    assert plan.unmanaged == []


def test_a_user_no_manifest_names_keeps_the_lines_unless_the_tenant_prunes(
    tmp_path: Path,
) -> None:
    facts = server_facts(tsecimp_listing=listing({"100": ["NFON\\carol"]}))
    carol = "tenant/k6732/line_assignment/NFON\\CAROL"
    plan, host_plan = plan_server(estate_of(tmp_path), facts, extensions=PBX)
    assert [u.address for u in plan.unmanaged] == [carol]

    pruning = TENANT + "prune: true\n"
    _, host_plan = plan_server(estate_of(tmp_path, k6732_yaml=pruning), facts, extensions=PBX)
    [deleted] = [c for c in host_plan.changes if c.action is Action.DELETE]
    assert (deleted.address, deleted.before) == (carol, {"lines": ["100"]})


def test_the_ad_policy_removes_a_missing_users_lines_whatever_prune_says(tmp_path: Path) -> None:
    estate = estate_of(tmp_path)
    facts = server_facts(tsecimp_listing=listing({"100": ["NFON\\alice"]}))
    inputs = PlanInputs(facts={SERVER_HOST.key: facts}, resolve=resolve, extensions=PBX)
    ctx = context(estate, SERVER_HOST, inputs)
    ctx.removed_users = ctx.skipped_users = {"k6732": frozenset({"NFON\\ALICE"})}
    host_plan = plan_host(ctx, SERVER_HOST, Plan())
    [deleted] = [c for c in host_plan.changes if c.action is Action.DELETE]
    assert deleted.address == "tenant/k6732/line_assignment/NFON\\ALICE"
    assert deleted.reason == "the user is missing or disabled in AD (on_missing_user: remove_lines)"


def test_a_live_telephony_that_matches_is_a_no_op(tmp_path: Path) -> None:
    service = ServiceFacts(name="TapiSrv", state="running", start_mode="auto", account="system")
    telephony = TelephonyFacts(service=service, server_mode=True, administrators=[])
    _, host_plan = plan_server(estate_of(tmp_path), server_facts(telephony=telephony))
    [found] = [c for c in host_plan.changes if c.kind == "telephony"]
    assert found.action is Action.NOOP


def test_a_secret_that_cannot_be_resolved_is_the_hosts_problem(tmp_path: Path) -> None:
    def missing(ref: SecretRef) -> Secret:
        from provisioner.secrets import SecretError

        raise SecretError(f"environment variable {ref.env} is not set")

    plan, host_plan = build_plan(
        estate_of(tmp_path), PlanInputs(facts={SERVER_HOST.key: server_facts()}, resolve=missing)
    )
    assert [p.message for p in plan.problems] == ["environment variable K6732_PW is not set"]
    assert "tsp_instance" not in {c.kind for c in host_plan[SERVER_HOST.key].changes}


# --- the planner is generic -----------------------------------------------------------------


def test_the_planner_names_no_kind() -> None:
    """Kinds describe themselves (KindSpec): no kind's name is written in the planner."""
    source = Path(provisioner.planner.__file__).read_text(encoding="utf-8")
    kinds = set(SPECS) | {users_group.KIND}
    named = [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and any(kind in node.value.split("/") or node.value == kind for kind in kinds)
    ]
    assert named == []
    attributes = {
        node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)
    }
    assert not attributes & {"KIND", "TELEPHONY", "CTI_ENGINE"}
