"""The NFON CTI API inside the plan: which lines exist per tenant, and whether its login works.

The multi-tenant example (three tenants, K6732, K7001 and K8450, on one CRM server) runs against
the lab, whose simulated CTI API gives each tenant a PBX with the lines the manifests assign plus
one spare. Tests change a PBX behind the provisioner's back, as an NFON admin would::

    estate = lab_for(EXAMPLES / "multi-tenant")
    estate.lab.cti.pbx("K8450").remove_extension("311")
    estate.lab.cti.set_password("K7001", "changed at NFON")
    estate.lab.cti.outage("K6732")                # every request of that tenant fails

A problem with one tenant's PBX holds back that tenant alone; the others plan and apply.
"""

from __future__ import annotations

import secrets

import pytest

from provisioner.lab.cti_api import CTIAPISimulator
from provisioner.lab.tamper import tamper
from tests.support.lab import EXAMPLES, CliResult, LabEstate, LabFor, secret_hits

MULTI_TENANT = EXAMPLES / "multi-tenant"
TENANTS = {"k6732": "K6732", "k7001": "K7001", "k8450": "K8450"}
LOGIN, LISTING = "/login", "/extensions/phone/data"


def problems(result: CliResult) -> list[str]:
    """The problem lines a plan (or apply) printed under "Problems:"."""
    lines = result.out.splitlines()
    if "Problems:" not in lines:
        return []
    found = []
    for line in lines[lines.index("Problems:") + 1 :]:
        if not line.startswith("  ! "):
            break
        found.append(line[4:])
    return found


def held_back(result: CliResult) -> list[str]:
    return [
        line.split("held back: ", 1)[1] for line in result.out.splitlines() if "held back:" in line
    ]


def health(result: CliResult) -> dict[str, str]:
    """``{"k6732": "on crm01: CTI engine running, CTI API login ok"}`` from apply's output."""
    found = {}
    for line in result.out.splitlines():
        if line.startswith("  health: tenant "):
            tenant, _, rest = line.removeprefix("  health: tenant ").partition(" ")
            found[tenant] = rest
    return found


def instances(estate: LabEstate) -> set[str]:
    """The K-accounts with a TSP instance on the CRM server."""
    return {record.k_account for record in estate.windows("crm01").state.tsp_settings.values()}


def calls(cti: CTIAPISimulator, k_account: str) -> tuple[int, int, int]:
    """(logins, listings, all requests) of one tenant since the counters were reset."""
    return (
        cti.count(k_account, path=LOGIN, method="POST"),
        cti.count(k_account, path=LISTING, method="GET"),
        cti.count(k_account),
    )


def assert_no_secret_in_output(estate: LabEstate, *extra: str) -> None:
    values = dict(estate.lab.values) | {f"extra-{n}": v for n, v in enumerate(extra)}
    hits = secret_hits(values, {"output": [r.output for r in estate.transcript]})
    assert not hits, hits


@pytest.fixture
def multi_tenant(lab_for: LabFor) -> LabEstate:
    estate = lab_for(MULTI_TENANT)
    assert estate.lab.cti is not None
    return estate


def cti_of(estate: LabEstate) -> CTIAPISimulator:
    assert estate.lab.cti is not None
    return estate.lab.cti


# --- how often the CTI API is asked ---------------------------------------------------------


@pytest.mark.parametrize("command", ["plan", "drift", "apply"])
def test_one_login_and_one_listing_per_tenant_per_plan(
    multi_tenant: LabEstate, command: str
) -> None:
    cti = cti_of(multi_tenant)
    multi_tenant.reset_counters()
    result = {"plan": multi_tenant.plan, "drift": multi_tenant.drift, "apply": multi_tenant.apply}[
        command
    ]()
    assert result.code in (0, 2), result.output
    assert {k: calls(cti, k) for k in TENANTS.values()} == dict.fromkeys(
        TENANTS.values(), (1, 1, 2)
    )
    assert len(cti.requests) == 6, [(r.method, r.path, r.tenant) for r in cti.requests]
    assert all(r.status == 200 for r in cti.requests)


# --- lines the PBX does not have ------------------------------------------------------------


def test_line_the_pbx_lacks_is_a_problem_for_its_tenant_alone(multi_tenant: LabEstate) -> None:
    manifest = multi_tenant.manifests / "k7001.yaml"
    text = manifest.read_text(encoding="utf-8")
    assert 'lines: ["200"]' in text
    manifest.write_text(text.replace('lines: ["200"]', 'lines: ["200", "4999"]'), encoding="utf-8")

    plan = multi_tenant.plan()
    assert plan.code == 1, plan.output
    assert problems(plan) == [
        "tenant k7001: line 4999 of NFON\\k7001-ben is not an extension of PBX K7001"
    ]

    applied = multi_tenant.apply()
    assert applied.code == 1, applied.output
    held = held_back(applied)
    assert held and all(line.startswith("tenant/k7001/") for line in held), held
    assert instances(multi_tenant) == {"K6732", "K8450"}
    assert "✓ tenant/k6732/line_assignment/NFON\\K6732-ANNA ok" in applied.out


# --- one tenant's login or PBX failing ------------------------------------------------------


def test_wrong_cti_password_is_a_problem_for_its_tenant_alone(multi_tenant: LabEstate) -> None:
    changed = f"changed-at-nfon-{secrets.token_urlsafe(12)}"
    cti_of(multi_tenant).set_password("K7001", changed)

    plan = multi_tenant.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith("tenant k7001: NFON CTI API: "), problem
    assert "K7001" in problem

    applied = multi_tenant.apply()
    assert applied.code == 1, applied.output
    held = held_back(applied)
    assert held and all(line.startswith("tenant/k7001/") for line in held), held
    assert instances(multi_tenant) == {"K6732", "K8450"}
    lines = health(applied)
    assert lines["k7001"].endswith("CTI API login FAILED"), lines
    assert lines["k6732"].endswith("CTI API login ok"), lines
    for result in (plan, applied):
        assert "Traceback" not in result.output
    assert_no_secret_in_output(multi_tenant, changed)


@pytest.mark.parametrize("mode", ["error", "reset"])
def test_one_tenants_outage_does_not_block_the_others(multi_tenant: LabEstate, mode: str) -> None:
    cti = cti_of(multi_tenant)
    cti.outage("K6732", mode=mode)  # type: ignore[arg-type]

    plan = multi_tenant.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith("tenant k6732: NFON CTI API: "), problem

    applied = multi_tenant.apply()
    assert applied.code == 1, applied.output
    assert instances(multi_tenant) == {"K7001", "K8450"}
    held = held_back(applied)
    assert held and all(line.startswith("tenant/k6732/") for line in held), held

    cti.end_outage("K6732")
    assert multi_tenant.apply().code == 0
    assert multi_tenant.plan().code == 0
    assert_no_secret_in_output(multi_tenant)


# --- the PBX changing after apply -----------------------------------------------------------


def test_extension_deleted_in_the_pbx_shows_as_drift(multi_tenant: LabEstate) -> None:
    assert multi_tenant.apply().code == 0
    cti_of(multi_tenant).pbx("K8450").remove_extension("311")

    drift = multi_tenant.drift()
    assert drift.code == 2, drift.output
    assert "tenant/k8450/line_assignment/NFON\\K8450-CHLOE" in drift.out
    assert "line 311 of NFON\\k8450-chloe is not an extension of PBX K8450" in drift.out


def test_extensions_no_one_is_assigned_are_information(multi_tenant: LabEstate) -> None:
    # the lab gives each PBX one spare extension after the highest assigned one
    spare = {"k6732": "103", "k7001": "201", "k8450": "312"}
    plan = multi_tenant.plan()
    assert not problems(plan)
    for tenant, extension in spare.items():
        assert f"tenant {tenant}: extensions no one is assigned: {extension}" in plan.out

    assert multi_tenant.apply().code == 0
    drift = multi_tenant.drift()
    assert drift.code == 0, f"unassigned extensions are no drift:\n{drift.output}"
    for tenant, extension in spare.items():
        assert f"tenant {tenant}: extensions no one is assigned: {extension}" in drift.out, (
            "drift does not report the PBX's unassigned extensions"
        )


# --- health after apply ---------------------------------------------------------------------


def test_apply_reports_cti_engine_and_login_per_tenant(multi_tenant: LabEstate) -> None:
    applied = multi_tenant.apply()
    assert applied.code == 0, applied.output
    assert health(applied) == {
        tenant: "on crm01: CTI engine running, CTI API login ok" for tenant in TENANTS
    }


def test_a_pbx_line_name_that_could_forge_the_listing_holds_back_only_line_changes(
    multi_tenant: LabEstate,
) -> None:
    """K7001's PBX admin names a line with a line break and another tenant's provider header:
    the crm01 listing can no longer be read one way only, so no line assignment on crm01 is
    planned from it; the server's other changes still go ahead."""
    estate = multi_tenant
    assert estate.apply().code == 0
    cti_of(estate).pbx("K7001").extension("200")["name"] = (
        "Ben\r\nNFON Third Party TAPI K6732\r\n  Line: K6732 102 Anna"
    )
    tenant = estate.manifests / "k6732.yaml"
    tenant.write_text(tenant.read_text().replace('    lines: ["100"]', '    lines: ["100", "102"]'))
    tamper(estate.lab, "crm01", "remove-firewall-rule", "nfon-tapi-in-smb")

    applied = estate.apply()
    assert applied.code == 1, applied.output
    [problem] = problems(applied)
    assert "PBX K7001 names extension 200 'Ben\\r\\nNFON Third Party TAPI K6732" in problem
    assert "line assignments are held back" in problem
    journal = estate.last_apply()["crm01"]
    assert [c["address"] for c in journal["changes"] if c["status"] == "ok"] == [
        "server/crm01/firewall_rule/nfon-tapi-in-smb"
    ]
    anna = estate.windows("crm01").state.tsec_user("NFON\\k6732-anna")
    assert anna is not None and len(anna.lines) == 1  # still only line 100
