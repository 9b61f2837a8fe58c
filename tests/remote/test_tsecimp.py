"""tsecimp: the /d listing parser and the import XML writer/reader."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

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
    parse_listing,
    parse_xml,
    render_xml,
)

REFERENCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference"

# The sample output of "tsecimp /d" in Microsoft's tsecimp documentation, garbled user included.
MICROSOFT_SAMPLE = """\
NDIS Proxy TAPI Service Provider
  Line: WAN Miniport (L2TP)
    Permanent ID: 12345678910

NDIS Proxy TAPI Service Provider
  Line: LPT1DOMAIN1\\User1
    Permanent ID: 12345678910

Microsoft H.323 Telephony Service Provider
  Line: H323 Line
    Permanent ID: 123456
    Addresses:
      BLDG1-TAPI32
"""

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


def test_microsofts_garbled_sample_parses_leniently() -> None:
    assert parse_listing(MICROSOFT_SAMPLE) == MICROSOFT_PARSED


def test_crlf_is_the_same_as_lf() -> None:
    assert parse_listing(MICROSOFT_SAMPLE.replace("\n", "\r\n")) == MICROSOFT_PARSED


def test_the_lab_format_round_trips_users_included() -> None:
    text = format_listing(LAB_PROVIDERS)
    assert "\r\n" in text
    assert "    Users:\r\n      NFON\\SCHMIDTA\r\n" in text
    assert parse_listing(text) == LAB_PROVIDERS


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
    assert parse_listing(format_listing(providers, newline="\n")) == providers


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
    manual = REFERENCE / "nfon-multiline-tapi-manual.de.txt"
    assert manual.is_file(), f"the NFON manual is expected at {manual}"
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
