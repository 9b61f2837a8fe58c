"""The drift report's content in text, Markdown and JSON, from a plan built by hand.

The plan holds one of everything a drift can show: a changed firewall rule, a TSP instance whose
password (sensitive) and debug level changed, a missing line assignment, a rule the plan would
prune, an unmanaged rule with a hostile name, and the things a drift report must leave out (a
handler restart, a no-op). A problem and a note travel with it.
"""

from __future__ import annotations

import json
import re

import pytest

from provisioner.plan.model import Action, Change, Plan, PlanProblem, Unmanaged
from provisioner.render.drift import (
    DriftReport,
    drift_report,
    render_html,
    render_json,
    render_markdown,
    render_text,
)

HOSTILE = "rogue | <b>x</b>"


def drift_plan() -> Plan:
    return Plan(
        changes=[
            Change(
                "server/tapi01/firewall_rule/nfon-tapi-in-smb",
                Action.UPDATE,
                "firewall_rule",
                "tapi01",
                before={"local_ports": ["9999"], "protocol": "tcp"},
                after={"local_ports": ["445"], "protocol": "tcp"},
                reason="local_ports differs",
            ),
            Change(
                "tenant/k6732/tsp_instance",
                Action.UPDATE,
                "tsp_instance",
                "tapi01",
                tenant="k6732",
                before={"cti_password": "(sensitive)", "debug_level": 3},
                after={"cti_password": "(sensitive)", "debug_level": 0},
                reason="debug_level differs; cti_password changed (sensitive)",
                sensitive_changed=["cti_password"],
            ),
            Change(
                "tenant/k6732/line_assignment/NFON\\RECEPTION2",
                Action.CREATE,
                "line_assignment",
                "tapi01",
                tenant="k6732",
                after={"lines": ["1200"]},
                reason="does not exist",
            ),
            Change(
                "server/tapi01/restart/TapiSrv",
                Action.RESTART,
                "restart",
                "tapi01",
                after={"service": "TapiSrv"},
                reason="TAPI providers load at start",
            ),
            Change(
                "client/ws-0101/tapi_client",
                Action.NOOP,
                "tapi_client",
                "ws-0101",
                before={"enabled": True},
                after={"enabled": True},
            ),
            Change(
                "client/ws-0102/firewall_rule/old-rule",
                Action.DELETE,
                "firewall_rule",
                "ws-0102",
                before={"local_ports": ["1"]},
                reason="not in the manifests (prune)",
            ),
        ],
        unmanaged=[
            Unmanaged(
                f"client/ws-0102/firewall_rule/{HOSTILE}",
                "firewall_rule",
                "ws-0102",
                None,
                f"{HOSTILE} (in)",
            )
        ],
        problems=[PlanProblem("ws-0103: WinRM connection refused: is the listener on?")],
        notes=["tenant k6732: extensions no one is assigned: 1257"],
    )


@pytest.fixture
def report() -> DriftReport:
    return drift_report(drift_plan())


SUMMARY = (
    "Drift: 2 changed, 1 missing, 2 unmanaged, on 2 hosts and 1 tenant. "
    "Also 1 problem, listed below."
)


# --- the report itself ----------------------------------------------------------------------


def test_only_differences_are_items(report: DriftReport) -> None:
    assert [(i.category, i.address) for i in report.items] == [
        ("changed", "server/tapi01/firewall_rule/nfon-tapi-in-smb"),
        ("missing", "tenant/k6732/line_assignment/NFON\\RECEPTION2"),
        ("changed", "tenant/k6732/tsp_instance"),
        ("unmanaged", "client/ws-0102/firewall_rule/old-rule"),
        ("unmanaged", f"client/ws-0102/firewall_rule/{HOSTILE}"),
    ]
    assert report.counts() == {"changed": 2, "missing": 1, "unmanaged": 2}
    assert report.summary() == SUMMARY


def test_summary_without_drift_never_claims_what_was_not_checked() -> None:
    clean = drift_report(Plan())
    assert clean.summary() == "No drift: the estate matches the manifests."
    assert not clean.has_drift
    unreachable = drift_report(Plan(problems=[PlanProblem("ws-0103: unreachable")]))
    assert (
        unreachable.summary() == "No drift found in what could be checked; 1 problem listed below."
    )
    assert "matches" not in unreachable.summary()


def test_lines_say_what_the_host_has_and_what_the_manifests_want(report: DriftReport) -> None:
    lines = {i.address: i.lines for i in report.items}
    assert lines["server/tapi01/firewall_rule/nfon-tapi-in-smb"] == [
        'local_ports: host has ["9999"], manifests want ["445"]'
    ]  # protocol is equal on both sides: not shown
    assert lines["tenant/k6732/tsp_instance"] == [
        "cti_password: (sensitive) differs",
        "debug_level: host has 3, manifests want 0",
    ]
    assert lines["tenant/k6732/line_assignment/NFON\\RECEPTION2"] == [
        'lines: manifests want ["1200"]'
    ]


# --- text -----------------------------------------------------------------------------------


def test_text_groups_by_host_then_tenant(report: DriftReport) -> None:
    text = render_text(report)
    assert text.splitlines()[0] == SUMMARY
    groups = [line for line in text.splitlines() if line and not line.startswith(" ")]
    assert groups == [SUMMARY, "tapi01", "tapi01 / tenant k6732", "ws-0102", "Problems:", "Notes:"]
    assert (
        "  changed   server/tapi01/firewall_rule/nfon-tapi-in-smb   local_ports differs\n"
        '              local_ports: host has ["9999"], manifests want ["445"]\n'
    ) in text
    assert "  ! ws-0103: WinRM connection refused: is the listener on?" in text
    assert "  - tenant k6732: extensions no one is assigned: 1257" in text
    assert "restart" not in text and "ws-0101" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_text_of_no_drift_is_one_line() -> None:
    assert render_text(drift_report(Plan())) == "No drift: the estate matches the manifests.\n"


# --- Markdown -------------------------------------------------------------------------------


def cells(row: str) -> list[str]:
    """A Markdown table row split on its unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_markdown_is_one_table_row_per_item_with_host_and_tenant(report: DriftReport) -> None:
    markdown = render_markdown(report)
    lines = markdown.splitlines()
    assert lines[:3] == ["### provisioner drift", "", f"**{SUMMARY}**"]
    rows = [line for line in lines if line.startswith("|")]
    assert cells(rows[0]) == ["host", "tenant", "category", "address", "detail"]
    body = [cells(row) for row in rows[2:]]
    assert all(len(row) == 5 for row in body), "a value broke out of its cell"
    assert [row[:3] for row in body] == [
        ["tapi01", "", "changed"],
        ["tapi01", "k6732", "missing"],
        ["tapi01", "k6732", "changed"],
        ["ws-0102", "", "unmanaged"],
        ["ws-0102", "", "unmanaged"],
    ]
    assert body[0][3] == "`server/tapi01/firewall_rule/nfon-tapi-in-smb`"
    assert (
        body[0][4]
        == r'local_ports differs<br>local_ports: host has \["9999"\], manifests want \["445"\]'
    )
    assert body[2][4].split("<br>")[1:] == [
        "cti_password: (sensitive) differs",
        "debug_level: host has 3, manifests want 0",
    ]


def test_markdown_keeps_host_values_from_becoming_markup(report: DriftReport) -> None:
    markdown = render_markdown(report)
    outside_code = re.sub(r"`[^`]*`", "", markdown)  # inside a code span, <b> is inert text
    assert "<b>" not in outside_code
    hostile_row = next(line for line in markdown.splitlines() if "(in)" in line)
    assert cells(hostile_row)[4] == "rogue \\| &lt;b&gt;x&lt;/b&gt; (in)"
    assert "**Problems**" in markdown and "- ws-0103: WinRM connection refused" in markdown
    assert "**Notes**" in markdown


def test_markdown_code_span_survives_a_backtick() -> None:
    plan = Plan(
        unmanaged=[
            Unmanaged("tenant/t/line_assignment/NFON\\a`b", "line_assignment", "h", "t", "x")
        ]
    )
    row = next(line for line in render_markdown(drift_report(plan)).splitlines() if "a`b" in line)
    assert cells(row)[3] == "`` tenant/t/line_assignment/NFON\\a`b ``"


# --- JSON -----------------------------------------------------------------------------------


def test_json_holds_everything_a_machine_needs(report: DriftReport) -> None:
    data = json.loads(render_json(report))
    assert data["format_version"] == "2"
    assert data["has_drift"] is True
    assert data["counts"] == {"changed": 2, "missing": 1, "unmanaged": 2}
    assert [item["address"] for item in data["items"]] == [i.address for i in report.items]
    assert data["items"][2] == {
        "category": "changed",
        "address": "tenant/k6732/tsp_instance",
        "kind": "tsp_instance",
        "host": "tapi01",
        "tenant": "k6732",
        "before": {"cti_password": "(sensitive)", "debug_level": 3},
        "after": {"cti_password": "(sensitive)", "debug_level": 0},
        "differs": ["cti_password", "debug_level"],
        "sensitive": ["cti_password"],
        "detail": None,
    }
    missing = data["items"][1]
    assert (missing["before"], missing["after"], missing["differs"]) == (
        None,
        {"lines": ["1200"]},
        ["lines"],
    )
    pruned = data["items"][3]
    assert (pruned["before"], pruned["after"], pruned["differs"]) == (
        {"local_ports": ["1"]},
        None,
        [],
    )
    assert data["problems"] == [
        {
            "message": "ws-0103: WinRM connection refused: is the listener on?",
            "tenant": None,
            "host": None,
            "address": None,
            "found": False,
        }
    ]
    assert data["notes"] == ["tenant k6732: extensions no one is assigned: 1257"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["generated"])
    assert "summary" not in data and not any("lines" in item for item in data["items"])


def test_json_keeps_hostile_text_verbatim(report: DriftReport) -> None:
    data = json.loads(render_json(report))
    assert data["items"][-1]["detail"] == f"{HOSTILE} (in)"


# --- HTML (the browser test reads it as a reader would; this is the escaping alone) --------------


def test_html_escapes_host_values(report: DriftReport) -> None:
    html = render_html(report)
    assert "<b>x</b>" not in html
    assert "rogue | &lt;b&gt;x&lt;/b&gt; (in)" in html
    assert "ws-0103: WinRM connection refused" in html
