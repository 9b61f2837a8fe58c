"""The plan's own rules: which changes a problem holds back."""

from __future__ import annotations

from provisioner.plan.model import Action, Change, Plan, PlanProblem


def test_a_problem_holds_back_its_tenant_its_host_or_everything() -> None:
    plan = Plan(
        changes=[
            Change("tenant/t1/tsp_instance", Action.UPDATE, "tsp_instance", "h", tenant="t1"),
            Change("server/h2/package", Action.UPDATE, "package", "h2"),
            Change("server/h3/package", Action.NOOP, "package", "h3"),
        ]
    )
    for problems, held in [
        ([PlanProblem("x", tenant="t1")], [True, False, False]),
        ([PlanProblem("x", host="h2")], [False, True, False]),
        ([PlanProblem("directory unreadable")], [True, True, False]),
        ([], [False, False, False]),
    ]:
        plan.problems = problems
        assert [plan.holds_back(c) for c in plan.changes] == held


def test_a_problem_with_a_kind_holds_back_only_that_kind_there() -> None:
    lines = Change("tenant/t1/line_assignment/NFON\\A", Action.UPDATE, "line_assignment", "h")
    instance = Change("tenant/t1/tsp_instance", Action.UPDATE, "tsp_instance", "h", tenant="t1")
    plan = Plan(problems=[PlanProblem("listing unreadable", host="h", kind="line_assignment")])
    assert plan.holds_back(lines) and not plan.holds_back(instance)
