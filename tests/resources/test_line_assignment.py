"""The smallest tsecimp change: explicit adds and removes, NoMerge only where it is safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.directory.model import ADUser, DirectoryFacts
from provisioner.manifest import load_estate
from provisioner.plan.model import Action, Change, Plan
from provisioner.planner import Host, PlanInputs, context, plan_host
from provisioner.remote.contract import HostFacts, SealKey, TspInstanceFacts, TspSettingsFacts
from provisioner.remote.tsecimp import ListedLine, ListedProvider, XmlLine, format_listing
from provisioner.resources import line_assignment
from provisioner.resources.base import KindProblem
from provisioner.resources.tsp_instance import line_name

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "multi-tenant"
USER = "NFON\\CRM-SERVICE"


EXTENSIONS = ("100", "101", "102")
PBX = {tenant: {ext: f"Line {ext}" for ext in EXTENSIONS} for tenant in ("k6732", "k7001")}


def providers(assigned: dict[str, list[str]]) -> list[ListedProvider]:
    """Providers K6732 and K7001, each with lines 100-102; ``assigned``: K-account → lines."""
    found = []
    for number, k_account in enumerate(("K6732", "K7001")):
        lines = [
            ListedLine(
                name=line_name("{k_account} {extension} {name}", ext, f"Line {ext}", k_account),
                permanent_id=str(1000 * (number + 1) + int(ext)),
                addresses=[ext],
                users=[USER] if ext in assigned.get(k_account, []) else [],
            )
            for ext in EXTENSIONS
        ]
        found.append(ListedProvider(f"NFON Third Party TAPI {k_account}", lines))
    return found


def host_context(  # type: ignore[no-untyped-def]
    assigned: dict[str, list[str]], text: str | None = None, pbx=PBX
):
    """crm01 of the multi-tenant example with a listing (Microsoft's layout unless ``text``)."""
    estate, errors = load_estate([EXAMPLE])
    assert errors == []
    facts = HostFacts(
        computer_name="CRM01",
        role="server",
        seal_key=SealKey(modulus="AQAB", exponent="AQAB"),
        tsecimp_listing=format_listing(providers(assigned)) if text is None else text,
    )
    inputs = PlanInputs(facts={"server/crm01": facts}, extensions=pbx)
    return context(estate, Host("server/crm01", "crm01", "server"), inputs)


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


# --- reading the listing: untrusted text -------------------------------------------------------


def test_every_line_of_a_provider_counts_though_each_has_its_own_header() -> None:
    """Microsoft's layout prints the provider above each line: all three lines keep their IDs."""
    ctx = host_context({"K6732": ["101"]})
    assert line_assignment.provider_lines(ctx, "K6732") == {
        "100": "1100",
        "101": "1101",
        "102": "1102",
    }
    [live] = [r for r in line_assignment.live(ctx) if r.tenant == "k6732"]
    assert (live.address, live.attributes) == (
        line_assignment.address("k6732", USER),
        {"lines": ["101"]},
    )


def forged_listing() -> str:
    """K7001's PBX names its line 100 with a line break and a header: in a one-block-per-provider
    layout, K7001's next lines then read as K6732's, with K7001's permanent IDs."""
    found = providers({"K7001": ["101"]})
    found[1].lines[0].name += "\r\nNFON Third Party TAPI K6732"
    found[0].lines = found[0].lines[:1]
    return format_listing(found, layout="blocks")


def test_a_forged_provider_header_holds_back_the_host_s_line_assignments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for tenant in ("K6732", "K7001", "K8450"):
        monkeypatch.setenv(f"{tenant}_CTI_PASSWORD", "pw")
    ctx = host_context({}, forged_listing())
    with pytest.raises(KindProblem) as caught:
        line_assignment.live(ctx)
    assert caught.value.kind == line_assignment.KIND
    assert "does not read one way only" in str(caught.value)

    plan = Plan()
    host_plan = plan_host(ctx, Host("server/crm01", "crm01", "server"), plan)
    assert [p.kind for p in plan.problems] == [line_assignment.KIND]
    assert not [c for c in host_plan.changes if c.kind == line_assignment.KIND]
    assert [c for c in host_plan.changes if c.kind != line_assignment.KIND]  # the rest plans on


def test_a_line_the_pbx_does_not_have_is_not_read_as_the_tenant_s() -> None:
    found = providers({})
    found[0].lines.append(ListedLine("K6732 999 ghost", "77", ["999"], [USER]))
    ctx = host_context({}, format_listing(found))
    with pytest.raises(KindProblem, match="999 is not an extension of PBX K6732"):
        line_assignment.live(ctx)


def test_a_user_glued_onto_another_vendor_s_line_forbids_no_merge() -> None:
    found = providers({"K6732": ["100", "101"]})
    found.append(ListedProvider("Other TSP", [ListedLine("LPT1NFON\\CRM-SERVICE", "5")]))
    ctx = host_context({}, format_listing(found))
    [user] = line_assignment.xml_users([line_change("k6732", ["100", "101"], ["102"])], ctx, {})
    assert user.no_merge is False


def test_a_pbx_name_with_a_line_break_makes_the_listing_untrusted() -> None:
    """The root of the forgery: the line's name comes from the PBX, which the plan reads."""
    hostile = {**PBX, "k7001": {**PBX["k7001"], "100": "x\u2028NFON Third Party TAPI K6732"}}
    ctx = host_context({"K6732": ["100"]}, pbx=hostile)
    with pytest.raises(KindProblem, match=r"PBX K7001 names extension 100 .*a line break"):
        line_assignment.live(ctx)


def test_users_are_read_off_names_in_the_format_the_instance_still_has() -> None:
    """The manifest changed the line-name format; until the Telephony service restarts, the
    lines keep names in the instance's current format, and the users glued onto them read the
    same way."""
    found = providers({"K6732": ["100"]})
    for line in found[0].lines:
        line.name = line.addresses[0]  # named with "{extension}", the format the host still has
    ctx = host_context({}, format_listing(found))
    assert ctx.facts is not None
    instance = TspInstanceFacts(
        instance="K6732",
        file="NFONTSP_K6732.TSP",
        file_present=True,
        settings=TspSettingsFacts(
            k_account="K6732",
            number_format="international",
            line_name_format="{extension}",
            debug_level=0,
        ),
    )
    ctx.facts = ctx.facts.model_copy(update={"tsp_instances": [instance]})
    [live] = [r for r in line_assignment.live(ctx) if r.tenant == "k6732"]
    assert live.attributes == {"lines": ["100"]}


def test_a_tenant_whose_pbx_was_not_read_plans_no_line_assignments() -> None:
    """Without its PBX's names, K7001's users cannot be told from its lines' names: neither
    side is planned (its PBX problem says why), rather than drift that is not there."""
    ctx = host_context({"K6732": ["100"], "K7001": ["101"]}, pbx={"k6732": PBX["k6732"]})
    assert {r.tenant for r in line_assignment.live(ctx)} == {"k6732"}
    assert "k7001" not in {r.tenant for r in line_assignment.desired(ctx)}
    assert {r.tenant for r in line_assignment.desired(ctx)} >= {"k6732"}


def test_the_listing_of_a_tenant_whose_pbx_was_not_read_must_still_read_one_way_only() -> None:
    """Its users wait for its PBX, but a line without an address (what a line name holding a
    line break prints) is a problem of the listing itself, which doctor reads without the PBX."""
    forged = (
        "NFON Third Party TAPI K7001\r\n"
        "  Line: K7001 102 CarlNFON\\k7001-carl\r\n"
        "    Permanent ID: 9\r\n"
        "    Addresses:\r\n"
        "      102\r\n"
        "\r\n"
        "NFON Third Party TAPI K7001\r\n"
        "  Line: K7001 101 Anna\r\n"
        "  Line: K7001 100 Ben\r\n"
        "    Addresses:\r\n"
        "      100NFON\\k7001-ben\r\n"
        "    Permanent ID: 7\r\n"
        "    Addresses:\r\n"
        "      101\r\n"
    )
    read = line_assignment.listing(host_context({}, forged, pbx={}))
    assert read.unread == {"k7001"}
    assert read.problems == ["'NFON Third Party TAPI K7001' line 'K7001 101 Anna' lists no address"]


# -- account names are written as spelled, never case-mapped ------------------------------------


def test_names_are_written_as_the_manifest_spells_them_without_a_directory() -> None:
    ctx = host_context({})
    [user] = line_assignment.xml_users([line_change("k6732", None, ["100"])], ctx, {})
    assert user.domain_user == "NFON\\crm-service"  # not the key NFON\CRM-SERVICE


def test_names_are_written_as_the_directory_spells_them() -> None:
    ctx = host_context({})
    ctx.directory = DirectoryFacts(
        users={
            USER: ADUser(
                sam="Crm-Service",
                domain="NFON",
                display_name=None,
                disabled=False,
                dn="CN=Crm-Service,DC=nfon,DC=test",
                dn_key="cn=crm-service,dc=nfon,dc=test",
            )
        }
    )
    [user] = line_assignment.xml_users([line_change("k6732", None, ["100"])], ctx, {})
    assert user.domain_user == "NFON\\Crm-Service"


def test_a_user_only_the_host_lists_is_written_as_listed() -> None:
    listed = "NFON\\Straße"
    name = line_name("{k_account} {extension} {name}", "100", "Line 100", "K6732")
    line = ListedLine(name=name, permanent_id="1100", addresses=["100"], users=[listed])
    ctx = host_context({}, format_listing([ListedProvider("NFON Third Party TAPI K6732", [line])]))
    change = Change(
        address=line_assignment.address("k6732", listed),
        action=Action.DELETE,
        kind=line_assignment.KIND,
        host="crm01",
        tenant="k6732",
        before={"lines": ["100"]},
    )
    assert change.address.endswith("NFON\\STRAßE")  # the key keeps ß: Windows maps no ß to SS
    [user] = line_assignment.xml_users([change], ctx, {})
    assert user.domain_user == listed
