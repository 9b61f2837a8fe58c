"""The plan as a pull-request comment: problems first, summary table, details; one comment.

A plan built by hand checks the order, the marks and the escaping; an 80-tenant estate in the
lab checks that a real plan with problems fits GitHub's 65,536 characters, problems first.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.generated_estate import EstateShape, write_estate
from provisioner.lab.tamper import tamper
from provisioner.plan.model import Action, Change, Plan, PlanProblem, Unmanaged
from provisioner.render.markdown import COMMENT_LIMIT, render_plan
from tests.support.lab import running_lab

HOSTILE = "evil](https://attacker.example) <img src=x> | `x`"


def hand_made_plan() -> Plan:
    plan = Plan(
        changes=[
            Change(
                "server/tapi01/firewall_rule/nfon-tapi-in-smb",
                Action.UPDATE,
                "firewall_rule",
                "tapi01",
                before={"local_ports": ["9999"]},
                after={"local_ports": ["445"]},
                reason="local_ports differs",
            ),
            Change(
                "tenant/k7001/tsp_instance",
                Action.CREATE,
                "tsp_instance",
                "tapi01",
                tenant="k7001",
                after={"k_account": "K7001", "cti_password": "(sensitive)"},
                reason="does not exist",
                sensitive_changed=["cti_password"],
            ),
            Change(
                "server/tapi01/restart/TapiSrv",
                Action.RESTART,
                "restart",
                "tapi01",
                after={"service": "TapiSrv", "interrupts": ["k6732", "k7001"]},
                reason="TAPI providers load at start",
            ),
            Change(
                "client/ws-0101/firewall_rule/```rogue",
                Action.DELETE,
                "firewall_rule",
                "ws-0101",
                before={"local_ports": ["1"]},
                reason="not in the manifests (prune is on)",
            ),
        ],
        problems=[PlanProblem(f"tenant k7001: NFON CTI API: {HOSTILE}", tenant="k7001")],
        unmanaged=[
            Unmanaged("server/tapi01/firewall_rule/x", "firewall_rule", "tapi01", None, HOSTILE)
        ],
        notes=["tenant k6732: extensions no one is assigned: 1257"],
        held_back=["tenant/k7001/tsp_instance"],
    )
    return plan


def test_problems_come_first_then_the_summary_table_then_details() -> None:
    comment = render_plan(hand_made_plan())
    problems = comment.index("> [!CAUTION]")
    summary = comment.index("**Plan: 1 to create")
    table = comment.index("| host | create | update | replace | delete | restart | held back |")
    details = comment.index("<details><summary>tapi01")
    assert problems < summary < table < details
    assert "1 held back by the problems above" in comment
    assert "| `tapi01` | 1 | 1 | 0 | 0 | 1 | 1 |" in comment
    assert "| `ws-0101` | 0 | 0 | 0 | 1 | 0 | 0 |" in comment


def test_held_back_changes_are_marked_and_restarts_name_the_tenants_they_interrupt() -> None:
    comment = render_plan(hand_made_plan())
    assert "# held back: create             tenant/k7001/tsp_instance" in comment
    assert "+ create" not in comment  # the only create is held back
    assert "<details><summary>tapi01: 3 changes, 1 held back</summary>" in comment
    assert "- `tapi01`: `TapiSrv`; interrupts 2 tenants: `k6732`, `k7001`" in comment
    assert "#     interrupts: k6732, k7001" in comment
    assert "#     cti_password: (sensitive)" in comment


def test_values_from_hosts_never_become_markup() -> None:
    comment = render_plan(hand_made_plan())
    assert "<img" not in comment.split("```diff")[0]  # before the first fence: no HTML
    assert not re.search(r"(?<!\\)\]\(https://attacker", comment)  # no unescaped ] of a link
    problem = next(line for line in comment.splitlines() if "NFON CTI API" in line)
    assert problem == (
        r"- :x: tenant k7001: NFON CTI API: evil\](https://attacker.example) &lt;img src=x&gt; "
        r"\| \`x\`"
    )
    # a rule name with backticks cannot close the details' fence early
    [fence] = re.findall(r"^(`{3,})diff$", comment.split("<summary>ws-0101")[1], re.MULTILINE)
    assert len(fence) > 3


def test_details_are_cut_to_fit_but_never_the_problems() -> None:
    plan = hand_made_plan()
    plan.problems = [PlanProblem(f"tenant t{n}: problem {n}", tenant=f"t{n}") for n in range(30)]
    plan.changes = [
        Change(f"server/s{n // 50}/firewall_rule/r{n}", Action.CREATE, "firewall_rule",
               f"s{n // 50}", after={"description": "x" * 80}, reason="does not exist")
        for n in range(400)
    ]  # fmt: skip
    comment = render_plan(plan, limit=20_000)
    assert len(comment) <= 20_000
    assert all(f"tenant t{n}: problem {n}" in comment for n in range(30))
    shown = len(re.findall(r"^\+ create", comment, re.MULTILINE))
    assert 0 < shown < 400
    assert (
        f"_{400 - shown} of 400 changes (and the unmanaged objects and notes) are not shown"
        in comment
    )
    assert "saved-plan artifact" in comment
    assert comment.count("<details>") == comment.count("</details>")
    assert comment.count("```diff") == comment.count("\n```\n")  # every fence closed


def test_problems_that_alone_overflow_the_comment_leave_the_table_in_place() -> None:
    plan = hand_made_plan()
    plan.problems = [PlanProblem(f"tenant t{n}: {'x' * 200}", tenant=f"t{n}") for n in range(500)]
    comment = render_plan(plan)
    assert len(comment) <= COMMENT_LIMIT
    shown = comment.count("- :x: tenant t")
    assert 200 < shown < 500
    assert f"- _{500 - shown} more problems do not fit one comment" in comment
    assert "| `tapi01` | 1 | 1 | 0 | 0 | 1 | 1 |" in comment
    assert comment.index("more problems") < comment.index("**Plan:")


def test_a_restart_names_a_dozen_tenants_and_counts_the_rest() -> None:
    tenants = [f"t{n:03d}" for n in range(200)]
    plan = Plan(
        changes=[
            Change(f"server/s1/restart/{service}", Action.RESTART, "restart", "s1",
                   after={"service": service, "interrupts": tenants}, reason="r")
            for service in ("TapiSrv", "NFONCTIEngine")
        ]
    )  # fmt: skip
    line = next(x for x in render_plan(plan).splitlines() if x.startswith("- `s1`"))
    assert line.startswith("- `s1`: `TapiSrv`, `NFONCTIEngine`; interrupts 200 tenants: `t000`")
    assert line.endswith("`t011` and 188 more")


def test_a_plan_that_fits_is_whole() -> None:
    comment = render_plan(hand_made_plan())
    assert "not shown here" not in comment
    assert "1 unmanaged" in comment and "**Notes**" in comment


def test_an_80_tenant_plan_fits_one_comment_problems_first(tmp_path: Path) -> None:
    manifests = write_estate(
        tmp_path / "generated", EstateShape(servers=2, tenants=80, users_per_tenant=12)
    )
    with running_lab(tmp_path / "estate", manifests) as estate:
        assert estate.lab.cti is not None
        estate.lab.cti.set_password("K10007", "changed-at-nfon-only")  # tenant t00007
        tamper(estate.lab, "", "remove-extension", "K10042/1003")  # a line of tenant t00042
        result = estate.cli("plan", estate.manifests, "--format", "markdown")
    assert result.code == 1, result.err
    comment = result.out
    assert len(comment) <= COMMENT_LIMIT
    lines = comment.splitlines()
    caution = lines.index("> [!CAUTION]")
    summary = next(n for n, line in enumerate(lines) if line.startswith("**Plan:"))
    problems = [line for line in lines[caution:summary] if line.startswith("- :x: ")]
    assert len(problems) == 2
    assert "t00007" in problems[0] + problems[1] and "t00042" in problems[0] + problems[1]
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| `srv")}
    # each server: one held-back tenant, its TSP instance and its 12 users' lines
    assert [row.split("|")[-2].strip() for row in rows.values()] == ["13", "13"]
    assert re.search(r"_\d+ of \d+ changes .* are not shown here, to fit one comment", comment)
