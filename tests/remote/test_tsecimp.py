"""tsecimp: the /d listing parser and the import XML writer/reader."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.remote.tsecimp import (
    ListedLine,
    ListedProvider,
    TsecimpError,
    XmlLine,
    XmlUser,
    format_listing,
    listing_problems,
    merge_providers,
    parse_listing,
    parse_xml,
    render_xml,
    split_glued_users,
)
from provisioner.resources import line_assignment
from tests.support.host_fixtures import FIXTURES, HostFixture, host_fixtures
from tests.support.reference import TAPI_MANUAL, reference_document

# Modelled on the sample output of "tsecimp /d" in Microsoft's tsecimp documentation.
MICROSOFT_SAMPLE = (FIXTURES / "microsoft-sample" / "listing.txt").read_text(encoding="utf-8")

MICROSOFT_PARSED = [
    ListedProvider(
        "NDIS Proxy TAPI Service Provider", [ListedLine("WAN Miniport (L2TP)", "12345678910")]
    ),
    ListedProvider(
        "NDIS Proxy TAPI Service Provider", [ListedLine("LPT1DOMAIN1\\User1", "12345678910")]
    ),
    ListedProvider(
        "Microsoft H.323 Telephony Service Provider",
        [ListedLine("H323 Line", "123456", addresses=["BLDG1-TAPI32"])],
    ),
]

LAB_PROVIDERS = [
    ListedProvider("TAPI Kernel-Mode Service Provider"),
    ListedProvider(
        "NFON Third Party TAPI K6732",
        [
            ListedLine("100 Anna Schmidt", "2887005441", ["100"], ["NFON\\SCHMIDTA"]),
            ListedLine("101 Jörg Müller", "17", ["101"], ["NFON\\MUELLERJ", "NFON\\ADMIN"]),
            ListedLine("102 nobody", "18", ["102"], []),
        ],
    ),
]


def test_microsofts_sample_parses_block_by_block() -> None:
    assert parse_listing(MICROSOFT_SAMPLE) == MICROSOFT_PARSED


def test_the_blocks_of_one_provider_merge_in_order() -> None:
    merged = merge_providers(parse_listing(MICROSOFT_SAMPLE))
    assert [p.name for p in merged] == [
        "NDIS Proxy TAPI Service Provider",
        "Microsoft H.323 Telephony Service Provider",
    ]
    assert [line.name for line in merged[0].lines] == ["WAN Miniport (L2TP)", "LPT1DOMAIN1\\User1"]


def test_microsofts_sample_does_not_read_one_way_only() -> None:
    """Its two NDIS lines share one (placeholder) permanent ID: which line is which is a guess."""
    problems = listing_problems(merge_providers(parse_listing(MICROSOFT_SAMPLE)))
    assert problems == [
        "permanent ID 12345678910 is listed twice ('NDIS Proxy TAPI Service Provider' line "
        "'WAN Miniport (L2TP)', 'NDIS Proxy TAPI Service Provider' line 'LPT1DOMAIN1\\\\User1')"
    ]


def test_crlf_and_a_byte_order_mark_read_as_plain_text() -> None:
    assert parse_listing("\ufeff" + MICROSOFT_SAMPLE.replace("\n", "\r\n")) == MICROSOFT_PARSED


def test_a_line_before_any_provider_is_a_problem() -> None:
    problems = listing_problems(merge_providers(parse_listing("  Line: 1\n    Permanent ID: 7\n")))
    assert problems == ["a 'Line:' stands before any provider's name"]


def test_the_blocks_layout_round_trips_users_included() -> None:
    text = format_listing(LAB_PROVIDERS, layout="blocks")
    assert "\r\n" in text
    assert "    Users:\r\n      NFON\\SCHMIDTA\r\n" in text
    assert parse_listing(text) == LAB_PROVIDERS


def test_the_documented_layout_repeats_the_provider_and_glues_users() -> None:
    text = format_listing(LAB_PROVIDERS)
    assert text.count("NFON Third Party TAPI K6732\r\n") == 3
    assert "  Line: 101 Jörg MüllerNFON\\MUELLERJNFON\\ADMIN\r\n" in text
    merged = merge_providers(parse_listing(text))
    assert [len(p.lines) for p in merged] == [0, 3]
    read = [
        split_glued_users(line.name, line.name.split("NFON")[0], ["NFON"])
        for line in merged[1].lines
    ]
    assert read == [["NFON\\SCHMIDTA"], ["NFON\\MUELLERJ", "NFON\\ADMIN"], []]


@pytest.mark.parametrize(
    ("listed", "expected", "domains", "users"),
    [
        ("100 Anna", "100 Anna", ["NFON"], []),
        ("100 AnnaNFON\\schmidta", "100 Anna", ["NFON"], ["NFON\\schmidta"]),
        ("100 AnnaOTHER\\x", "100 Anna", [], ["OTHER\\x"]),  # one user needs no known domain
        ("100 AnnaNFON\\aNFON\\b", "100 Anna", ["nfon"], ["NFON\\a", "NFON\\b"]),
        # "NFON\\aNF" + "ON\\b" reads as well as "NFON\\a" + "NFON\\b": not one way only
        ("100 AnnaNFON\\aNFON\\b", "100 Anna", ["NFON", "ON"], None),
        ("100 AnnaNFON\\aOTHER\\b", "100 Anna", ["NFON"], None),  # where does "a" end?
        ("100 Anna NFON\\x", "100 Anna NFON\\x", ["NFON"], []),  # a PBX name with a backslash
        ("100 Bob", "100 Anna", ["NFON"], []),  # renamed since: nothing can hide in it
        ("100 BobNFON\\x", "100 Anna", ["NFON"], None),
        ("100 Anna\\", "100 Anna", ["NFON"], None),
        ("100 AnnaX", "100 Anna", ["NFON"], None),
        # a user's domain and account follow the rules of account names: the line's name under
        # another format ("{extension}") cannot pass for a domain
        ("100 Extension 100NFON\\aNFON\\b", "100", ["NFON"], None),
        ("100 Extension 100NFON\\a", "100", ["NFON"], None),
        ("100NFON\\a:b", "100", ["NFON"], None),
    ],
)
def test_glued_users_are_read_one_way_only_or_not_at_all(
    listed: str, expected: str, domains: list[str], users: list[str] | None
) -> None:
    assert split_glued_users(listed, expected, domains) == users


def test_unknown_and_localized_lines_do_not_invent_lines() -> None:
    noisy = (
        "  Die Telefonie-Konfiguration wird gelesen ...\n"
        "NFON Third Party TAPI K6732\n"
        "  Status: aktiv\n"
        "  Line: 100 Anna Schmidt\n"
        "    Permanent ID: 2887005441\n"
        "    Gerätetyp: Telefon\n"
        "    Addresses:\n"
        "      100\n"
        "    Unbekannt: x\n"
        "      nicht-adresse\n"
        "    Users:\n"
        "      NFON\\SCHMIDTA\n"
        "\n"
        "      verwaist\n"
    )
    assert parse_listing(noisy) == [
        ListedProvider(
            "NFON Third Party TAPI K6732",
            [ListedLine("100 Anna Schmidt", "2887005441", ["100"], ["NFON\\SCHMIDTA"])],
        )
    ]


def test_values_on_the_key_line_and_lines_before_any_provider_are_kept() -> None:
    text = "  Line: orphan\n    Permanent ID:\n    Addresses: 55\n    Users: D\\u\n"
    assert parse_listing(text) == [
        ListedProvider("", [ListedLine("orphan", None, ["55"], ["D\\u"])])
    ]


@given(
    st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1),
            st.lists(st.from_regex(r"[0-9]{1,6}", fullmatch=True), max_size=3),
        ),
        max_size=4,
    )
)
def test_lab_listing_round_trips_for_any_line_names(lines) -> None:
    providers = [
        ListedProvider(
            "NFON Third Party TAPI K1",
            [
                ListedLine(name, str(index), addresses, [f"NFON\\U{index}"])
                for index, (name, addresses) in enumerate(lines)
            ],
        )
    ]
    blocks = format_listing(providers, newline="\n", layout="blocks")
    assert parse_listing(blocks) == providers
    documented = merge_providers(parse_listing(format_listing(providers, newline="\n")))
    lines_read = documented[0].lines if documented else []
    assert [
        split_glued_users(read.name, line.name, ["NFON"])
        for read, line in zip(lines_read, providers[0].lines, strict=True)
    ] == [line.users for line in providers[0].lines]


# --- the import XML ---------------------------------------------------------------------------

MANUAL_EXAMPLE = """<UserList>
  <User NoMerge="1">
    <DomainUser>NFON\\MAUERSBERGERM</DomainUser>
    <FriendlyName>Marius Mauersberger</FriendlyName>
    <LineList><Line><Address>1254</Address></Line></LineList>
  </User>
</UserList>"""


def canonical(text: str) -> str:
    return ET.canonicalize(text, strip_text=True)


def test_the_manual_example_renders_as_in_the_manual() -> None:
    user = XmlUser("NFON\\MAUERSBERGERM", "Marius Mauersberger", True, [XmlLine(address="1254")])
    rendered = render_xml([user])
    assert rendered.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<UserList>')
    assert canonical(rendered) == canonical(MANUAL_EXAMPLE)
    assert '<User NoMerge="1">' in rendered


def test_the_german_manuals_example_renders_back_to_the_same_document() -> None:
    manual = reference_document(TAPI_MANUAL)
    example = re.search(r"<UserList>.*?</UserList>", manual.read_text(encoding="utf-8"), re.S)
    assert example is not None
    users = parse_xml(example[0])
    assert [user.domain_user for user in users] == ["NFON\\MAUERSBERGERM", "NFON\\KONDERM"]
    assert canonical(render_xml(users)) == canonical(example[0])


def test_attributes_are_quoted_and_domain_user_is_the_element() -> None:
    users = [
        XmlUser(
            "D\\a", None, True, [XmlLine(permanent_id="1000"), XmlLine(address="8", remove=True)]
        ),
        XmlUser("D\\b", "B", False, None),
        XmlUser("D\\c", None, False, []),
    ]
    rendered = render_xml(users)
    assert 'NoMerge="1"' in rendered
    assert '<Line Remove="1"><Address>8</Address></Line>' in rendered
    assert "<Line><PermanentID>1000</PermanentID></Line>" in rendered
    assert "DomainUserName" not in rendered
    root = ET.fromstring(rendered)
    b, c = root.findall("User")[1:]
    assert b.find("LineList") is None  # None: no LineList (tsecimp removes all lines)
    assert c.find("LineList") is not None and len(c.find("LineList")) == 0
    assert parse_xml(rendered) == users


HOSTILE = [
    "</DomainUser><DomainUser>EVIL\\admin",
    "a & b < c > d \" e ' f",
    "]]><![CDATA[",
    "$(Remove-Item C:\\ -Recurse)",
    "'; Remove-Item C:\\ -Recurse",
    "‘’‚‛ `backtick`",
    "two\nlines",
    "  padded  ",
    "Müller ☎ 電話",
    "{{ users }}{% raw %}",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_escaped_and_read_back_unchanged(value) -> None:
    user = XmlUser(value, value, False, [XmlLine(address=value), XmlLine(permanent_id=value)])
    rendered = render_xml([user])
    root = ET.fromstring(rendered)  # well-formed
    (element,) = root.findall("User")
    assert [e.text for e in element.findall("DomainUser")] == [value]
    assert element.findtext("FriendlyName") == value
    assert element.find("LineList/Line/Address").text == value
    assert element.find("LineList/Line/PermanentID").text == value
    assert element.get("NoMerge") is None


@given(
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs")).filter(lambda c: c not in "\ufffe\uffff")
    )
)
def test_any_printable_text_survives_render_and_parse(value) -> None:
    rendered = render_xml([XmlUser(f"D\\{value}", value, True, [XmlLine(address=f"a{value}")])])
    (element,) = ET.fromstring(rendered).findall("User")
    assert element.findtext("DomainUser") == f"D\\{value}"
    assert element.findtext("FriendlyName") == value


@pytest.mark.parametrize("value", ["bell\x07", "carriage\rreturn", "nul\x00"])
def test_characters_xml_cannot_carry_are_refused(value) -> None:
    with pytest.raises(TsecimpError, match="control character"):
        XmlUser(value)


def test_a_line_needs_exactly_one_identifier() -> None:
    with pytest.raises(TsecimpError):
        XmlLine()
    with pytest.raises(TsecimpError):
        XmlLine(address="1", permanent_id="2")


def test_parse_xml_reads_microsofts_spellings_and_refuses_broken_xml() -> None:
    users = parse_xml(
        "<UserList><User><DomainUserName>d\\u</DomainUserName>"
        "<LineList><Line Remove='1'><Address> 88888 </Address></Line></LineList></User></UserList>"
    )
    assert users == [XmlUser("d\\u", None, False, [XmlLine(address="88888", remove=True)])]
    with pytest.raises(TsecimpError, match="not well-formed"):
        parse_xml("<UserList><User NoMerge=1><DomainUser>d\\u</DomainUser></User></UserList>")
    with pytest.raises(TsecimpError, match="UserList"):
        parse_xml("<Users/>")
    with pytest.raises(TsecimpError, match="DomainUser"):
        parse_xml("<UserList><User/></UserList>")


# --- captured and hand-made listings (tests/fixtures/hosts) ------------------------------------


def as_expected(providers: list[ListedProvider]) -> list[dict[str, object]]:
    return [{"name": p.name, "lines": [vars(line) for line in p.lines]} for p in providers]


SERVER_FIXTURES = [f for f in host_fixtures() if f.listing is not None]


@pytest.mark.parametrize("fixture", SERVER_FIXTURES, ids=lambda f: f.name)
def test_each_fixture_listing_reads_as_recorded(fixture: HostFixture) -> None:
    """Providers merged as expected (where someone checked them by hand), and the server's
    reading of the listing finds exactly the problems recorded (none for a lab capture; a
    contributed one without example manifests is read by the parser alone)."""
    merged = merge_providers(parse_listing(fixture.listing or ""))
    if "providers" in fixture.expected:
        assert as_expected(merged) == fixture.expected["providers"]
    if "example" in fixture.expected:  # as that example's server reads it
        problems = line_assignment.listing(fixture.context()).problems
    else:
        problems = listing_problems(merged)
    assert problems == fixture.expected.get("problems", [])


def test_the_fixtures_cover_both_layouts_a_bom_crlf_and_a_forgery() -> None:
    listings = [f.listing or "" for f in SERVER_FIXTURES]
    assert any(text.startswith("\ufeff") and "\r\n" in text for text in listings)
    assert any("    Users:" in text for text in listings)  # one block per provider
    assert any(f.expected.get("problems") for f in SERVER_FIXTURES)
