"""The smallest tsecimp change: explicit adds and removes, NoMerge only where it is safe."""

from __future__ import annotations

from pathlib import Path

from provisioner.manifest import load_estate
from provisioner.plan.model import Action, Change
from provisioner.planner import Host, PlanInputs, context
from provisioner.remote.contract import HostFacts, SealKey
from provisioner.remote.tsecimp import ListedLine, ListedProvider, XmlLine, format_listing
from provisioner.resources import line_assignment

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "multi-tenant"
USER = "NFON\\CRM-SERVICE"


def listing(assigned: dict[str, list[str]]) -> str:
    """Providers K6732 and K7001, each with lines 100-102; ``assigned``: K-account → lines."""
    providers = []
    for number, k_account in enumerate(("K6732", "K7001")):
        lines = [
            ListedLine(
                name=f"{k_account} {ext}",
                permanent_id=str(1000 * (number + 1) + int(ext)),
                addresses=[ext],
                users=[USER] if ext in assigned.get(k_account, []) else [],
            )
            for ext in ("100", "101", "102")
        ]
        providers.append(ListedProvider(f"NFON Third Party TAPI {k_account}", lines))
    return format_listing(providers)


def host_context(assigned: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    estate, errors = load_estate([EXAMPLE])
    assert errors == []
    facts = HostFacts(
        computer_name="CRM01",
        role="server",
        seal_key=SealKey(modulus="AQAB", exponent="AQAB"),
        tsecimp_listing=listing(assigned),
    )
    return context(
        estate, Host("server/crm01", "crm01", "server"), PlanInputs(facts={"server/crm01": facts})
    )


def line_change(tenant: str, before: list[str] | None, after: list[str]) -> Change:
    return Change(
        address=line_assignment.address(tenant, USER),
        action=Action.UPDATE if before else Action.CREATE,
        kind=line_assignment.KIND,
        host="crm01",
        tenant=tenant,
        before={"lines": before} if before else None,
        after={"lines": after},
    )


def test_a_whole_set_replaced_uses_no_merge_by_permanent_id() -> None:
    ctx = host_context({"K6732": ["100", "101"]})
    [user] = line_assignment.xml_users([line_change("k6732", ["100", "101"], ["102"])], ctx, {})
    assert user.no_merge is True
    assert user.lines == [XmlLine(permanent_id="1102")]


def test_a_partial_change_adds_and_removes_explicitly() -> None:
    ctx = host_context({"K6732": ["100", "101"]})
    [user] = line_assignment.xml_users(
        [line_change("k6732", ["100", "101"], ["101", "102"])], ctx, {}
    )
    assert user.no_merge is False
    assert user.lines == [XmlLine(permanent_id="1102"), XmlLine(permanent_id="1100", remove=True)]


def test_no_merge_never_wipes_another_tenants_lines_of_the_same_import() -> None:
    """The user gains K7001's line 100 and swaps K6732's whole set in ONE import: NoMerge on
    the second entry would drop the line the first entry just added."""
    ctx = host_context({"K6732": ["100", "101"]})
    changes = [
        line_change("k7001", None, ["100"]),
        line_change("k6732", ["100", "101"], ["102"]),
    ]
    users = line_assignment.xml_users(changes, ctx, {})
    assert [u.no_merge for u in users] == [False, False]
    assert users[0].lines == [XmlLine(permanent_id="2100")]
    assert users[1].lines == [
        XmlLine(permanent_id="1102"),
        XmlLine(permanent_id="1100", remove=True),
        XmlLine(permanent_id="1101", remove=True),
    ]


def test_lines_elsewhere_forbid_no_merge() -> None:
    ctx = host_context({"K6732": ["100"], "K7001": ["101"]})
    [user] = line_assignment.xml_users([line_change("k6732", ["100"], ["102"])], ctx, {})
    assert user.no_merge is False
