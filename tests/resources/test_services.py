"""TapiSrv's and the CTI engine's accounts: left alone unless named, built-in accounts in any
spelling, and the 'Log on as a service' right a named account needs (planned and applied
in-process against the lab's Windows model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.plan.model import Action, Plan
from provisioner.remote.contract import LogonRightGrant, ServiceConfigure
from provisioner.resources.services import builtin_sid, canonical_account
from tests.manifest.estate import SITE
from tests.support.host_model import ModelEstate

SERVER = """\
kind: TapiServer
name: tapi01
address: 10.0.1.20
cti_engine: null
telephony:
  server_mode: true
"""


def server_with(telephony: str) -> str:
    return SERVER.replace("  server_mode: true\n", f"  server_mode: true\n{telephony}")


def model(tmp_path: Path, server: str = SERVER) -> ModelEstate:
    return ModelEstate.of(tmp_path, {"site.yaml": SITE, "tapi01.yaml": server})


def telephony_change(plan: Plan):
    return next(c for c in plan.changes if c.address == "server/tapi01/telephony")


def operations(estate: ModelEstate) -> list:
    from provisioner.runner import build_steps

    _, host_plans = estate.build()
    host_plan = host_plans["server/tapi01"]
    change = next(c for c in host_plan.changes if c.address == "server/tapi01/telephony")
    steps, _ = build_steps(host_plan, [change])
    return [step.operation for step in steps]


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("NT AUTHORITY\\Network Service", "NT AUTHORITY\\NetworkService"),
        ("nt authority\\networkservice", "NT AUTHORITY\\NetworkService"),
        ("NT Authority\\LocalService", "NT AUTHORITY\\LocalService"),
        (".\\LocalSystem", "LocalSystem"),
        ("", "LocalSystem"),
        ("nfon\\svc-tapi", "NFON\\SVC-TAPI"),
    ],
)
def test_each_built_in_account_has_one_name(spelling: str, canonical: str) -> None:
    assert canonical_account(spelling) == canonical
    assert (builtin_sid(spelling) is None) == (canonical == "NFON\\SVC-TAPI")


def test_without_a_service_account_tapisrv_keeps_its_own(tmp_path: Path) -> None:
    estate = model(tmp_path)
    change = telephony_change(estate.plan())
    assert "account" not in (change.after or {}) and "account" not in (change.before or {})
    assert all(getattr(op, "account", None) is None for op in operations(estate))
    assert estate.apply()["server/tapi01"].status == "ok"
    service = estate.windows("tapi01").state.services["tapisrv"]
    assert (service.account, service.state) == ("NT AUTHORITY\\NetworkService", "running")
    assert not estate.plan().actionable


def test_a_built_in_account_in_another_spelling_is_no_change(tmp_path: Path) -> None:
    estate = model(tmp_path, server_with("  service_account: NT AUTHORITY\\Network Service\n"))
    estate.apply()
    assert not estate.plan().actionable


def test_a_domain_account_is_set_with_its_password_and_its_logon_right(tmp_path: Path) -> None:
    server = server_with(
        "  service_account: NFON\\svc-tapi\n  service_password: {env: TAPI_SERVICE_PASSWORD}\n"
    )
    estate = model(tmp_path, server)
    change = telephony_change(estate.plan())
    assert (change.after or {})["logon_right"] is True
    (configure,) = [op for op in operations(estate) if isinstance(op, ServiceConfigure)]
    assert configure.account == "NFON\\SVC-TAPI" and configure.password is not None
    assert estate.apply()["server/tapi01"].status == "ok"
    facts = estate.facts()["server/tapi01"]
    assert facts.telephony is not None
    assert (facts.telephony.service.state, facts.telephony.service.logon_right) == ("running", True)
    assert not estate.plan().actionable
    # back to a built-in account: Win32_Service.Change needs StartPassword "", which it gets
    back = model(tmp_path / "back", server_with("  service_account: LocalSystem\n"))
    back.windows_hosts = estate.windows_hosts
    assert back.apply()["server/tapi01"].status == "ok"
    assert estate.windows("tapi01").state.services["tapisrv"].account == "LocalSystem"


def test_a_missing_logon_right_is_drift_and_is_granted(tmp_path: Path) -> None:
    server = server_with(
        "  service_account: NFON\\svc-tapi\n  service_password: {env: TAPI_SERVICE_PASSWORD}\n"
    )
    estate = model(tmp_path, server)
    estate.apply()
    estate.windows("tapi01").state.logon_rights.clear()  # a GPO took it away
    change = telephony_change(estate.plan())
    assert change.action is Action.UPDATE and change.reason == "logon_right differs"
    assert operations(estate) == [LogonRightGrant(account="NFON\\SVC-TAPI")]
    assert estate.apply()["server/tapi01"].status == "ok"
    assert not estate.plan().actionable


def test_an_account_the_domain_does_not_know_stops_with_the_code_named(tmp_path: Path) -> None:
    server = server_with(
        "  service_account: NFON\\svc-tapi\n  service_password: {env: TAPI_SERVICE_PASSWORD}\n"
    )
    estate = ModelEstate.of(tmp_path, {"site.yaml": SITE, "tapi01.yaml": server}, prepared=False)
    response = estate.apply()["server/tapi01"]
    failed = next(r for r in response.results if r.status == "failed")
    assert "NFON\\SVC-TAPI' does not exist here" in failed.message
