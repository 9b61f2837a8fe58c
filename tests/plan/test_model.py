"""The plan's own rules: which changes a problem holds back, and the summary line."""

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


def change(action: Action, number: int) -> Change:
    return Change(address=f"server/h/x/{number}", action=action, kind="x", host="h")


def test_the_summary_counts_each_action_and_names_no_replace_that_cannot_happen() -> None:
    plan = Plan(
        changes=[
            change(Action.CREATE, 1),
            change(Action.CREATE, 2),
            change(Action.UPDATE, 3),
            change(Action.DELETE, 4),
            change(Action.NOOP, 5),
        ]
    )
    assert plan.summary() == "Plan: 2 to create, 1 to update, 1 to delete."
    plan.changes.append(change(Action.RESTART, 6))
    assert plan.summary() == "Plan: 2 to create, 1 to update, 1 to delete, 1 to restart."


def test_a_replace_is_named_when_a_plan_holds_one() -> None:
    plan = Plan(changes=[change(Action.REPLACE, 1)])
    assert plan.summary() == "Plan: 0 to create, 0 to update, 1 to replace, 0 to delete."


def test_nothing_to_do_and_problems_say_so() -> None:
    assert Plan().summary() == "No changes. The estate matches the manifests."
