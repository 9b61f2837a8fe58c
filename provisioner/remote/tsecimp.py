"""``tsecimp``: the ``/d`` listing (what is assigned) and the XML it imports (what to assign).

``tsecimp /d`` prints plain indented text, not XML. Microsoft's documentation of it
(learn.microsoft.com/windows-server/administration/windows-commands/tsecimp, "Sample output for
/d parameter") shows the provider's name again above EACH line, and a user glued onto the line's
name (``Line: LPT1DOMAIN1\\User1``); where users stand on a modern host, and whether the labels are
translated, no public source says. So the listing is read in two steps:

* :func:`parse_listing` reads the blocks as printed, keyed on ``Line:``, ``Permanent ID:``,
  ``Addresses:`` and ``Users:``, ignoring what it does not know (a leading BOM included);
* :func:`merge_providers` joins the blocks of one provider, and :func:`split_glued_users` takes
  the users off a line's name when the name the line should have is known.

The listing is untrusted text: a line's name comes from a PBX, and a name holding a line break
can print what looks like another provider's header. :func:`listing_problems` finds what does not
read one way only (a permanent ID listed twice, a ``Line:`` before any provider); the caller
holds back what depends on such a listing instead of guessing::

    NFON Third Party TAPI K6732
      Line: 100 Anna SchmidtNFON\\SCHMIDTA
        Permanent ID: 2887005441
        Addresses:
          100

:func:`render_xml` writes the import file through an autoescaping template
(``templates/tsecimp.xml.j2``); :func:`parse_xml` reads one back (the simulated host imports it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import jinja2

from provisioner.errors import ProvisionerError
from provisioner.manifest.models import is_domain_account
from provisioner.remote.scripts import templates_dir

# XML 1.0 forbids most control characters even as references; a CR would come back as LF.
_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b-\x0c\x0d\x0e-\x1f\ufffe\uffff]")
_KEY = re.compile(
    r"^(?P<indent>\s*)(?P<key>Line|Permanent ID|Addresses|Users)\s*:\s?(?P<value>.*)$"
)
_TRUE = {"1", "true", "yes"}
_BOM = "\ufeff"

Layout = Literal["documented", "blocks"]


class TsecimpError(ProvisionerError):
    """A value cannot be written to, or a document cannot be read as, tsecimp XML."""


# --- the /d listing ---------------------------------------------------------------------------


@dataclass
class ListedLine:
    """One line device of a provider, with its addresses and the users assigned to it."""

    name: str
    permanent_id: str | None = None
    addresses: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


@dataclass
class ListedProvider:
    name: str
    lines: list[ListedLine] = field(default_factory=list)


def parse_listing(text: str) -> list[ListedProvider]:
    """The blocks of ``tsecimp /d`` output as printed (CRLF or LF, BOM and noise tolerated).

    A line without indentation that is no known key starts a provider block; ``Line:`` starts a
    line device; ``Addresses:`` and ``Users:`` open a block whose deeper-indented lines are its
    entries. Anything else is ignored, so localized chatter cannot invent lines. A ``Line:``
    before any provider lands in a provider named ``""`` (:func:`listing_problems` reports it).
    """
    providers: list[ListedProvider] = []
    line: ListedLine | None = None
    block: list[str] | None = None  # the entries list an open Addresses:/Users: block fills
    block_indent = 0
    for raw in text.removeprefix(_BOM).splitlines():
        stripped = raw.lstrip()
        if not stripped:
            block = None
            continue
        indent = len(raw) - len(stripped)
        key = _KEY.match(raw) if ":" in stripped else None  # every key ends in a colon
        if block is not None and key is None and indent > block_indent:
            block.append(stripped.rstrip())
            continue
        block = None
        if key is None:
            if indent == 0:
                providers.append(ListedProvider(name=stripped.rstrip()))
                line = None
            continue
        value = key["value"].strip()
        name = key["key"]
        if name == "Line":
            if not providers:
                providers.append(ListedProvider(name=""))
            line = ListedLine(name=value)
            providers[-1].lines.append(line)
        elif line is None:
            continue
        elif name == "Permanent ID":
            line.permanent_id = value or None
        else:
            block = line.addresses if name == "Addresses" else line.users
            block_indent = len(key["indent"])
            if value:
                block.append(value)
    return providers


def merge_providers(blocks: Iterable[ListedProvider]) -> list[ListedProvider]:
    """One entry per provider name (case-insensitive), its lines from every block in order."""
    merged: dict[str, ListedProvider] = {}
    for block in blocks:
        key = block.name.strip().casefold()
        if key not in merged:
            merged[key] = ListedProvider(block.name.strip())
        merged[key].lines.extend(block.lines)
    return list(merged.values())


def listing_problems(providers: Sequence[ListedProvider]) -> list[str]:
    """What keeps a merged listing from reading one way only (empty when it reads cleanly)."""
    problems = []
    seen: dict[str, tuple[str, str]] = {}
    for provider in providers:
        if not provider.name:
            problems.append("a 'Line:' stands before any provider's name")
        for line in provider.lines:
            if line.permanent_id is None:
                continue
            where = (provider.name, line.name)
            if line.permanent_id in seen and seen[line.permanent_id] != where:
                first = seen[line.permanent_id]
                problems.append(
                    f"permanent ID {line.permanent_id} is listed twice ({first[0]!r} line "
                    f"{first[1]!r}, {where[0]!r} line {where[1]!r})"
                )
            seen.setdefault(line.permanent_id, where)
    return problems


def split_glued_users(
    listed_name: str, expected_name: str, domains: Iterable[str]
) -> list[str] | None:
    """The users glued onto a line's name, as in Microsoft's sample (``LPT1DOMAIN1\\User1``).

    ``expected_name`` is the name the line has without users; what follows it must be one or
    more ``DOMAIN\\account`` with nothing between them. A second user can only be told from the
    end of the first by a known NetBIOS domain (``domains``), so several users split one way
    only or not at all. Returns None when the name does not read one way only; ``[]`` when it
    is exactly the expected name.
    """
    if listed_name == expected_name:
        return []
    if not listed_name.startswith(expected_name):
        return None if "\\" in listed_name else []  # renamed since; no user can hide in it
    rest = listed_name[len(expected_name) :]
    known = sorted({d.casefold() for d in domains if d}, key=len, reverse=True)
    readings = _segmentations(rest, known)
    return readings[0] if len(readings) == 1 else None


def _segmentations(text: str, domains: list[str]) -> list[list[str]]:
    """Every way ``text`` is a run of ``DOMAIN\\account`` (at most two ways are computed)."""
    first = text.find("\\")
    later = text.find("\\", first + 1) if first >= 0 else -1
    if later < 0:
        # one user: the domain before the backslash, the account after it
        return [[text]] if is_domain_account(text) else []
    readings: list[list[str]] = []
    between = text[first + 1 : later]  # the first user's account, then the next user's domain
    for domain in domains:
        cut = len(between) - len(domain)
        user = text[: first + 1 + cut]
        if cut > 0 and between[cut:].casefold() == domain and is_domain_account(user):
            for rest in _segmentations(text[first + 1 + cut :], domains):
                readings.append([user, *rest])
                if len(readings) > 1:
                    return readings
    return readings


def format_listing(
    providers: Sequence[ListedProvider], newline: str = "\r\n", layout: Layout = "documented"
) -> str:
    """A listing as a host prints it.

    ``documented`` is Microsoft's sample layout: the provider's name above every line, users
    glued onto the line's name. ``blocks`` names each provider once and lists users under
    ``Users:``, a layout no public source shows but a host might print.
    """
    out: list[str] = []

    def line_entries(line: ListedLine, glued: bool) -> None:
        name = line.name + "".join(line.users) if glued else line.name
        out.append(f"  Line: {name}")
        if line.permanent_id is not None:
            out.append(f"    Permanent ID: {line.permanent_id}")
        blocks = [("Addresses", line.addresses)] + ([] if glued else [("Users", line.users)])
        for title, entries in blocks:
            if entries:
                out.append(f"    {title}:")
                out.extend(f"      {entry}" for entry in entries)

    for provider in providers:
        if layout == "blocks" or not provider.lines:
            out.append(provider.name)
            for line in provider.lines:
                line_entries(line, glued=False)
            out.append("")
            continue
        for line in provider.lines:
            out.append(provider.name)
            line_entries(line, glued=True)
            out.append("")
    return newline.join(out) + (newline if out else "")


# --- the import XML ---------------------------------------------------------------------------


def _check_text(what: str, value: str) -> str:
    if _NOT_XML_TEXT.search(value):
        raise TsecimpError(f"{what} {value!r} holds a control character XML cannot carry")
    return value


@dataclass(frozen=True)
class XmlLine:
    """A ``<Line>`` by ``address`` or by ``permanent_id`` (exactly one); ``remove`` unassigns."""

    address: str | None = None
    permanent_id: str | None = None
    remove: bool = False

    def __post_init__(self) -> None:
        if (self.address is None) == (self.permanent_id is None):
            raise TsecimpError("a tsecimp line needs exactly one of address and permanent_id")
        _check_text("line", self.address if self.address is not None else str(self.permanent_id))


@dataclass(frozen=True)
class XmlUser:
    """A ``<User>``: ``lines`` None writes no ``LineList`` (tsecimp then removes all lines).

    >>> XmlUser("NFON\\\\MAUERSBERGERM", "Marius Mauersberger", True, [XmlLine(address="1254")])
    ... # doctest: +ELLIPSIS
    XmlUser(domain_user='NFON\\\\MAUERSBERGERM', ...)
    """

    domain_user: str
    friendly_name: str | None = None
    no_merge: bool = False
    lines: list[XmlLine] | None = None

    def __post_init__(self) -> None:
        _check_text("domain user", self.domain_user)
        if self.friendly_name is not None:
            _check_text("friendly name", self.friendly_name)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        autoescape=True,  # every value is text: & < > " ' are escaped
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_xml(users: Sequence[XmlUser]) -> str:
    """The ``tsecimp /f`` document for these users (UTF-8, with an XML declaration)."""
    return _environment().get_template("tsecimp.xml.j2").render(users=list(users))


def _text(element: ET.Element, tag: str) -> str | None:
    found = element.find(tag)
    return None if found is None else (found.text or "").strip()


def parse_xml(text: str) -> list[XmlUser]:
    """The users of a ``tsecimp`` XML document (``DomainUserName`` is read as ``DomainUser``)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TsecimpError(f"the tsecimp XML is not well-formed: {exc}") from None
    if root.tag != "UserList":
        raise TsecimpError(f"the tsecimp XML's top element is <{root.tag}>, not <UserList>")
    users: list[XmlUser] = []
    for element in root.findall("User"):
        domain_user = _text(element, "DomainUser") or _text(element, "DomainUserName")
        if not domain_user:
            raise TsecimpError("a <User> of the tsecimp XML has no <DomainUser>")
        lines: list[XmlLine] | None = None
        line_list = element.find("LineList")
        if line_list is not None:
            lines = []
            for line in line_list.findall("Line"):
                address = _text(line, "Address")
                permanent_id = _text(line, "PermanentID")
                remove = line.get("Remove", "").strip().lower() in _TRUE
                lines.append(
                    XmlLine(address=address, permanent_id=permanent_id, remove=remove)
                    if permanent_id is None
                    else XmlLine(permanent_id=permanent_id, remove=remove)
                )
        users.append(
            XmlUser(
                domain_user=domain_user,
                friendly_name=_text(element, "FriendlyName"),
                no_merge=element.get("NoMerge", "").strip().lower() in _TRUE,
                lines=lines,
            )
        )
    return users
