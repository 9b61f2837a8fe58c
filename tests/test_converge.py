"""The steps apply and rollouts share: what is held back, what a summary says, grouped notes."""

from __future__ import annotations

from provisioner.converge import (
    Outcome,
    Work,
    grouped_notes,
    held_lines,
)
from provisioner.plan.model import Action, Change, Plan, PlanProblem
from provisioner.planner import Host
from provisioner.runner import ChangeResult, HostResult
from tests.support.lab import EXAMPLES, LabFor

TAPI01 = Host("server/tapi01", "tapi01", "server")


def change(address: str, tenant: str | None, host: str = "h", kind: str = "tsp_instance") -> Change:
    return Change(address=address, action=Action.UPDATE, kind=kind, host=host, tenant=tenant)


def test_held_back_changes_are_named_and_past_a_few_counted_per_kind() -> None:
    lines = [change(f"tenant/k1/line_assignment/NFON\\U{n}", "k1", kind="line") for n in range(9)]
    held = [change("tenant/k1/tsp_instance", "k1"), *lines]
    assert held_lines(held, verbose=False) == [
        "held back: tenant/k1/tsp_instance (a problem above concerns tenant k1)",
        "held back: tenant/k1/line_assignment/* (9 changes; a problem above concerns tenant k1)",
    ]
    assert len(held_lines(held, verbose=True)) == 10
    assert held_lines(held[:2], verbose=False)[1].startswith(
        "held back: tenant/k1/line_assignment/NFON\\U0 ("
    )


def test_complete_never_stands_beside_exit_1_without_the_reason_next() -> None:
    done = change("server/tapi01/package", None, host="tapi01")
    held = change("tenant/k7001/tsp_instance", "k7001", host="tapi01")
    plan = Plan(changes=[done, held], problems=[PlanProblem("k7001: login", tenant="k7001")])
    outcome = Outcome(
        plan,
        Work([], {}, [held]),
        [HostResult(TAPI01, "ok", "", [ChangeResult(done, "ok")])],
    )
    assert outcome.exit_code == 1
    assert outcome.summary() == [
        "Apply complete: 1 of 1 changes done; 1 held back.",
        "Exit code 1: 1 problem listed above held back 1 change; fix them and apply again.",
    ]
    clean = Outcome(Plan(changes=[done]), Work([], {}, []), outcome.results)
    assert clean.exit_code == 0 and clean.summary() == ["Apply complete: 1 of 1 changes done."]


def test_notes_many_tenants_share_are_one_line_unless_verbose() -> None:
    notes = [f"tenant k{n:03d}: extensions no one is assigned: {100 + n}" for n in range(40)]
    notes += ["the directory is not read (the inventory turns it off): users are not checked"]
    assert grouped_notes(notes, verbose=False) == [
        "40 tenants: extensions no one is assigned (k000, k001, k002, ...; --verbose lists each)",
        notes[-1],
    ]
    assert grouped_notes(notes, verbose=True) == notes
    assert grouped_notes(notes[:3], verbose=False) == notes[:3]  # a few stay as they are


def test_a_restart_still_planned_only_for_a_held_back_tenant_says_so(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.lab.cti is not None
    estate.lab.cti.outage("K7001")
    applied = estate.apply()
    assert applied.code == 1, applied.output
    assert (
        "  note: server/crm01/restart/TapiSrv still differs only because the changes of tenant "
        "k7001 were held back; it runs again when they go ahead"
    ) in applied.out.splitlines()
    summary = [line for line in applied.out.splitlines() if line.startswith("Apply ")]
    assert summary and summary[0].startswith("Apply complete: ") and "held back" in summary[0]
    reason = applied.out.splitlines()[applied.out.splitlines().index(summary[0]) + 1]
    assert reason.startswith("Exit code 1: 1 problem listed above held back ")
    assert "did not verify" not in applied.out
