"""``tsecimp``: the ``/d`` listing (what is assigned) and the XML it imports (what to assign).

``tsecimp /d`` prints plain indented text, not XML, and Microsoft's own sample of it is garbled
(a user glued to a line name). :func:`parse_listing` therefore keys on ``Line:`` and
``Permanent ID:`` and ignores what it does not know::

    NFON Third Party TAPI K6732
      Line: 100 Anna Schmidt
        Permanent ID: 2887005441
        Addresses:
          100
        Users:
          NFON\\SCHMIDTA

:func:`render_xml` writes the import file through an autoescaping template
(``templates/tsecimp.xml.j2``); :func:`parse_xml` reads one back (the simulated host imports it).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

import jinja2

from provisioner.errors import ProvisionerError
from provisioner.remote.scripts import templates_dir

# XML 1.0 forbids most control characters even as references; a CR would come back as LF.
_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b-\x0c\x0d\x0e-\x1f\ufffe\uffff]")
_KEY = re.compile(
    r"^(?P<indent>\s*)(?P<key>Line|Permanent ID|Addresses|Users)\s*:\s?(?P<value>.*)$"
)
_TRUE = {"1", "true", "yes"}


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
    """Providers and their lines from ``tsecimp /d`` output (CRLF or LF, noise tolerated).

    A line without indentation that is no known key starts a provider; ``Line:`` starts a line
    device; ``Addresses:`` and ``Users:`` open a block whose deeper-indented lines are its
    entries. Anything else is ignored, so localized chatter cannot invent lines.
    """
    providers: list[ListedProvider] = []
    line: ListedLine | None = None
    block: list[str] | None = None  # the entries list an open Addresses:/Users: block fills
    block_indent = 0
    for raw in text.splitlines():
        if not raw.strip():
            block = None
            continue
        indent = len(raw) - len(raw.lstrip())
        key = _KEY.match(raw)
        if block is not None and key is None and indent > block_indent:
            block.append(raw.strip())
            continue
        block = None
        if key is None:
            if indent == 0:
                providers.append(ListedProvider(name=raw.strip()))
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


def format_listing(providers: Sequence[ListedProvider], newline: str = "\r\n") -> str:
    """The listing in the documented layout plus a ``Users:`` block (what the lab host prints)."""
    out: list[str] = []
    for provider in providers:
        out.append(provider.name)
        for line in provider.lines:
            out.append(f"  Line: {line.name}")
            if line.permanent_id is not None:
                out.append(f"    Permanent ID: {line.permanent_id}")
            for title, entries in (("Addresses", line.addresses), ("Users", line.users)):
                if entries:
                    out.append(f"    {title}:")
                    out.extend(f"      {entry}" for entry in entries)
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
