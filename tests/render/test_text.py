"""The plan as text: every change of a small plan, one line per tenant of a large one, streamed."""

from __future__ import annotations

from provisioner.commands import Options, write_plan
from provisioner.plan.model import Action, Change, Plan
from provisioner.render import text


def line_change(tenant: str, user: int, action: Action = Action.CREATE) -> Change:
    return Change(
        address=f"tenant/{tenant}/line_assignment/NFON\\U{user}",
        action=action,
        kind="line_assignment",
        host="tapi01",
        tenant=tenant,
        before={"lines": ["1"]} if action is not Action.CREATE else None,
        after={"lines": [str(1000 + user)]},
        reason="does not exist" if action is Action.CREATE else "lines differs",
    )


def large_plan(tenants: int = 3, users: int = 1_000) -> Plan:
    rule = Change(
        address="server/tapi01/firewall_rule/nfon-tapi-in-smb",
        action=Action.UPDATE,
        kind="firewall_rule",
        host="tapi01",
        before={"remote_addresses": ["10.0.2.0/24"]},
        after={"remote_addresses": ["10.0.3.0/24"]},
        reason="remote_addresses differs",
    )
    changes = [rule]
    for t in range(tenants):
        changes.append(line_change(f"t{t}", 0, Action.UPDATE))
        changes += [line_change(f"t{t}", u) for u in range(1, users)]
    changes.append(line_change("t0", 9999, Action.NOOP))
    return Plan(changes=changes)


def test_a_small_plan_lists_every_change() -> None:
    plan = large_plan(tenants=1, users=3)
    output = text.render_plan(plan, verbose=False)
    assert "tenant/t0/line_assignment/NFON\\U2" in output
    assert 'lines: ["1"] → ["1000"]' in output
    assert "--verbose" not in output


def test_a_large_plan_sums_up_each_tenant_in_one_line() -> None:
    plan = large_plan()
    lines = text.render_plan(plan, verbose=False).splitlines()
    assert lines[0] == "server tapi01"
    assert lines[1].startswith("  ~ server/tapi01/firewall_rule/nfon-tapi-in-smb")
    assert '        remote_addresses: ["10.0.2.0/24"] → ["10.0.3.0/24"]' in lines
    summaries = [line for line in lines if line.startswith("  ~ tenant ")]
    assert summaries == [
        f"  ~ tenant t{t}   999 to create (line_assignment 999), 1 to update (line_assignment 1)"
        for t in range(3)
    ]
    assert not any("line_assignment/NFON" in line for line in lines)
    assert (
        "3,001 changes: each tenant's are summed up in one line; --verbose lists every change."
        in lines
    )
    assert lines[-1] == "Plan: 2997 to create, 4 to update, 0 to delete."


def test_verbose_lists_every_change_of_a_large_plan() -> None:
    plan = large_plan()
    output = text.render_plan(plan, verbose=True)
    assert output.count("line_assignment/NFON") == 3_000
    assert "--verbose" not in output


def test_the_text_is_written_in_chunks_that_add_up_to_the_whole() -> None:
    plan = large_plan(tenants=10, users=1_000)
    written: list[str] = []
    write_plan(plan, "text", Options(echo=written.append, verbose=True))
    assert len(written) > 1
    assert max(chunk.count("\n") for chunk in written) < text.CHUNK_LINES
    assert "\n".join(written) + "\n" == text.render_plan(plan, verbose=True)
