"""``--target``: only the matching changes, and a selector that matches nothing is an error
(hashicorp/terraform issue 30434: a target that matches nothing silently reports "No changes")."""

from __future__ import annotations

from provisioner.lab.tamper import tamper
from provisioner.resources import line_assignment
from tests.support.lab import EXAMPLES, LabEstate, LabFor


def full_plan(estate: LabEstate) -> list[dict[str, object]]:
    changes: list[dict[str, object]] = estate.plan_json()["resource_changes"]
    return changes


def test_address_pattern_selects_those_changes_and_apply_does_only_them(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    everything = full_plan(estate)
    rules = {
        str(c["address"])
        for c in everything
        if str(c["address"]).startswith("server/tapi01/firewall_rule/")
    }
    assert len(rules) == 10

    document = estate.plan_json("--target", "server/tapi01/firewall_rule/*")
    assert {c["address"] for c in document["resource_changes"]} == rules
    assert document["targets"] == ["server/tapi01/firewall_rule/*"]

    estate.reset_counters()
    assert estate.apply("--target", "server/tapi01/firewall_rule/*").code == 0
    # tapi01: gather, batch, verify; the others: their gather, then their lock given back
    assert estate.commands() == {"tapi01": 3, "ws-0101": 2, "ws-0102": 2, "ws-0103": 2}
    assert estate.batches() == {"tapi01": 1, "ws-0101": 0, "ws-0102": 0, "ws-0103": 0}
    assert estate.windows("tapi01").state.products == []  # the package was not targeted
    assert estate.planned_addresses() == {str(c["address"]) for c in everything} - rules


def test_server_selector_selects_the_server_and_its_tenants(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    everything = full_plan(estate)
    selected = {
        c["address"] for c in estate.plan_json("--target", "server=tapi01")["resource_changes"]
    }
    assert selected == {c["address"] for c in everything if c["host"] == "tapi01"}
    assert "tenant/k6732/tsp_instance" in selected
    assert not any(str(a).startswith("client/") for a in selected)


def own_user(estate: LabEstate, tenant: str) -> str:
    """A user of ``tenant`` that no other tenant names."""
    model = estate.model()
    others = {
        a.user.upper() for t in model.tenants.values() if t.name != tenant for a in t.assignments
    }
    return next(a.user for a in model.tenants[tenant].assignments if a.user.upper() not in others)


def test_tenant_selector_selects_that_tenant_only(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    k7001_user, k8450_user = own_user(estate, "k7001"), own_user(estate, "k8450")
    tamper(estate.lab, "crm01", "unassign-user", k7001_user)
    tamper(estate.lab, "crm01", "unassign-user", k8450_user)
    tamper(estate.lab, "crm01", "remove-firewall-rule", "nfon-tapi-in-smb")

    selected = estate.planned_addresses("--target", "tenant=k7001")
    assert selected == {line_assignment.address("k7001", k7001_user)}
    assert estate.apply("--target", "tenant=k7001").code == 0
    assert estate.planned_addresses() == {
        line_assignment.address("k8450", k8450_user),
        "server/crm01/firewall_rule/nfon-tapi-in-smb",
    }


def test_a_tenant_target_keeps_the_restarts_its_changes_need(lab_for: LabFor) -> None:
    """Fails today: the handlers a selected change triggers are dropped with the rest, so a
    targeted apply changes the TSP instance's settings and never restarts the services that
    load them; and no later plan restarts them either."""
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    with estate.windows("tapi01").lock:
        for record in estate.windows("tapi01").state.tsp_settings.values():
            record.debug_level = 5
    full = estate.planned_addresses()
    assert full == {
        "tenant/k6732/tsp_instance",
        "server/tapi01/restart/TapiSrv",
        "server/tapi01/restart/NFONCTIEngine",
    }
    assert estate.planned_addresses("--target", "tenant=k6732") == full


def test_a_selector_matching_nothing_is_a_one_line_error(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    for selector in ("server/nope/*", "tenant=nope", "server=ws-0101", "host=nope"):
        for command in (estate.plan("--target", selector), estate.apply("--target", selector)):
            assert command.code == 1, command.output
            assert "No changes" not in command.output
            lines = command.err.strip().splitlines()
            assert len(lines) == 1 and selector in lines[0] and "matches nothing" in lines[0]
    assert set(estate.batches().values()) == {0}  # no batch went anywhere


def test_the_error_quotes_a_selector_as_it_was_typed(lab_for: LabFor) -> None:
    """Fails today: the selector is quoted with repr(), which doubles the backslash of every
    DOMAIN\\user address, so the message shows something the user did not type."""
    estate = lab_for(EXAMPLES / "client-tapi")
    selector = "tenant/k6732/line_assignment/NFON\\NOBODY"
    result = estate.plan("--target", selector)
    assert result.code == 1
    assert f"'{selector}' matches nothing" in result.err


def test_a_selector_naming_things_with_nothing_to_do_says_no_changes(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    result = estate.plan("--target", "server=tapi01")
    assert result.code == 0, result.output
    assert "No changes" in result.out
