"""TSP instances: a settings key readable only by SYSTEM, Administrators and TapiSrv's account,
and no instance planned on a host without verpatch.exe (in-process, against the lab's model)."""

from __future__ import annotations

from pathlib import Path

from provisioner.lab.windows_host import inherited_software_acl
from provisioner.plan.model import Action, Plan
from provisioner.remote.contract import AceFacts, KeyAclFacts
from provisioner.resources.tsp_instance import readers
from tests.manifest.estate import SITE
from tests.resources.test_package import server as server_with_package
from tests.support.host_model import ModelEstate

SERVER = server_with_package("1.0.0") + "telephony:\n  server_mode: true\n"

TENANT = """\
kind: Tenant
name: k6732
k_account: K6732
server: tapi01
cti_password: {env: K6732_CTI_PASSWORD}
"""
ADMINS, SYSTEM = "BUILTIN\\ADMINISTRATORS", "NT AUTHORITY\\SYSTEM"


def model(tmp_path: Path, server: str = SERVER, *, prepared: bool = True) -> ModelEstate:
    files = {"site.yaml": SITE, "tapi01.yaml": server, "k6732.yaml": TENANT}
    return ModelEstate.of(tmp_path, files, prepared=prepared)


def instance_change(plan: Plan):
    return next(c for c in plan.changes if c.address == "tenant/k6732/tsp_instance")


def test_readers_are_who_may_read_the_values() -> None:
    acl = KeyAclFacts(
        protected=False,
        entries=[
            AceFacts(sid="S-1-5-32-545", name="VORDEFINIERT\\Benutzer", rights=0x20019),
            AceFacts(sid="S-1-5-18", name="NT-AUTORITÄT\\SYSTEM", rights=0xF003F),
            AceFacts(sid="S-1-5-21-1-2-3-1001", name="NFON\\svc-tapi", rights=0x80000000),
            AceFacts(sid="S-1-5-21-1-2-3-1002", name="NFON\\writer", rights=0x20006),
            AceFacts(sid="S-1-5-21-1-2-3-1003", name="NFON\\denied", rights=0x20019),
            AceFacts(sid="S-1-5-21-1-2-3-1003", name="NFON\\denied", rights=0x1, allow=False),
        ],
    )
    assert readers(acl) == ["BUILTIN\\USERS", "NFON\\SVC-TAPI", SYSTEM]


def test_a_key_every_user_can_read_is_drift_and_is_closed(tmp_path: Path) -> None:
    estate = model(tmp_path)
    assert estate.apply()["server/tapi01"].status == "ok"
    assert not estate.plan().actionable
    record = next(iter(estate.windows("tapi01").state.tsp_settings.values()))
    record.acl = inherited_software_acl()  # reset by hand, or by the vendor's tool
    change = instance_change(estate.plan())
    assert change.action is Action.UPDATE
    assert change.reason == "acl_inherited, readers differ"
    assert "BUILTIN\\USERS" in (change.before or {})["readers"]
    assert (change.after or {})["readers"] == [ADMINS, "NT AUTHORITY\\NETWORK SERVICE", SYSTEM]
    assert estate.apply()["server/tapi01"].status == "ok"
    assert not estate.plan().actionable
    assert estate.windows("tapi01").instance_password("K6732") is not None  # kept


def test_the_key_follows_tapisrv_to_its_new_account(tmp_path: Path) -> None:
    server = SERVER.replace(
        "  server_mode: true\n",
        "  server_mode: true\n  service_account: NFON\\svc-tapi\n"
        "  service_password: {env: TAPI_SERVICE_PASSWORD}\n",
    )
    estate = model(tmp_path, server)
    assert estate.apply()["server/tapi01"].status == "ok"
    change = instance_change(estate.plan())
    assert change.action is Action.NOOP
    acl = estate.facts()["server/tapi01"].tsp_instances[0].settings_acl
    assert acl is not None and readers(acl) == [ADMINS, "NFON\\SVC-TAPI", SYSTEM]


def test_no_instance_is_planned_without_verpatch(tmp_path: Path) -> None:
    estate = model(tmp_path, prepared=False)
    plan = estate.plan()
    (problem,) = plan.problems
    assert problem.host == "tapi01"
    assert problem.message.startswith(
        "tapi01: verpatch.exe is not at C:\\ProgramData\\NFON-Provisioner\\Tools\\verpatch.exe,"
    )
    assert "k6732" in problem.message and "platform.verpatch_path" in problem.message
    assert not [c for c in plan.changes if c.kind == "tsp_instance"]
