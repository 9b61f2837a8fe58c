"""The drift report as a reader sees it: rendered by Chromium from a real drift of the lab.

The client-tapi example is applied to a lab, then changed behind the provisioner's back (a
firewall port, a user's lines, the TSP instance's password and debug level, a rule opened by
hand with a hostile name, a workstation's TAPI client switched off). ``provisioner drift
--format html`` writes the report; headless Chromium loads it and dumps the DOM it built, and
the tests read that DOM: the summary line, the counts per host / tenant / resource kind, one
table per tenant, and no external resource anywhere.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar

import pytest

from provisioner.lab.windows_host import FirewallRuleRecord, StoredFingerprint
from provisioner.manifest.models import domain_user_key
from provisioner.render.drift import CATEGORIES, NO_TENANT
from tests.render.chromium import chromium_or_unavailable, dump_dom
from tests.support.lab import EXAMPLES, running_lab

HOSTILE_RULE = 'rogue <img src="https://evil.example/x.png">'
HOSTILE_DESCRIPTION = "opened by hand | <b>bold</b> <script>alert(1)</script>"


# --- a tiny DOM ------------------------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return " ".join(" ".join(parts).split())

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.walk()
            if n.tag == tag and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def rows(self) -> list[list[str]]:
        """A table's rows as cell texts (header row included)."""
        return [
            [cell.text() for cell in row.walk() if cell.tag in ("td", "th")]
            for row in self.find_all("tr")
        ]


class _TreeBuilder(HTMLParser):
    VOID: ClassVar[set[str]] = {
        "meta",
        "br",
        "img",
        "link",
        "input",
        "hr",
        "source",
        "area",
        "base",
        "col",
        "embed",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# --- the drifted lab and its report ------------------------------------------------------------


@dataclass
class Report:
    html: str  # the file the tool wrote
    dom: Node  # what Chromium made of it
    data: dict[str, Any]  # the same drift as --format json
    secrets: dict[str, str]  # the lab's secret values


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    chromium = chromium_or_unavailable()
    directory = tmp_path_factory.mktemp("drift-html")
    output = directory / "drift.html"
    with running_lab(directory / "estate", EXAMPLES / "client-tapi") as estate:
        applied = estate.apply()
        assert applied.code == 0, applied.output
        tapi01 = estate.windows("tapi01").state
        smb = next(r for r in tapi01.firewall_rules if r.name == "nfon-tapi-in-smb")
        smb.local_ports = "9999"
        tapi01.tsec_users[domain_user_key("NFON\\reception2")].lines.clear()
        [instance] = tapi01.tsp_settings.values()
        assert instance.password_fingerprint is not None
        instance.password_fingerprint = StoredFingerprint(
            instance.password_fingerprint.salt, "0" * 64
        )
        instance.debug_level = 3
        tapi01.firewall_rules.append(
            FirewallRuleRecord(
                name=HOSTILE_RULE,
                description=HOSTILE_DESCRIPTION,
                group=smb.group,
                direction=1,
                action=1,
                protocol=6,
                local_ports="3389",
                remote_ports="*",
                remote_addresses="*",
                profiles=0x7FFFFFFF,
                enabled=True,
            )
        )
        estate.windows("ws-0102").state.tapi_client.enabled = False

        written = estate.drift("--format", "html", "--output", output)
        assert written.code == 2, written.output
        as_json = estate.drift("--format", "json")
        assert as_json.code == 2, as_json.output
        secrets = dict(estate.lab.values)
    html = output.read_text(encoding="utf-8")
    dom = parse_dom(dump_dom(chromium, output, directory))
    return Report(html, dom, as_json.json(), secrets)


def test_the_summary_line_comes_first_and_counts_every_category(report: Report) -> None:
    [summary] = [n for n in report.dom.walk() if n.attrs.get("id") == "summary"]
    assert summary.text() == "Drift: 3 changed, 1 missing, 1 unmanaged, on 2 hosts and 1 tenant."
    assert report.data["counts"] == {"changed": 3, "missing": 1, "unmanaged": 1}
    [heading] = report.dom.find_all("h1")
    assert heading.text() == "Drift report"
    assert report.dom.find_all("title")[0].text() == "Drift report"


def counts_table(report: Report, by: str) -> dict[str, dict[str, int]]:
    [table] = report.dom.find_all("table", data_by=by)
    header, *rows = table.rows()
    assert header == [by, *CATEGORIES]
    return {name: dict(zip(CATEGORIES, map(int, numbers), strict=True)) for name, *numbers in rows}


def expected_counts(report: Report, attribute: str) -> dict[str, dict[str, int]]:
    """The counts the JSON form of the same drift implies."""
    counters: dict[str, Counter[str]] = {}
    for item in report.data["items"]:
        key = item[attribute] or NO_TENANT
        counters.setdefault(key, Counter())[item["category"]] += 1
    return {k: {c: counter[c] for c in CATEGORIES} for k, counter in counters.items()}


def test_counts_per_host_tenant_and_kind(report: Report) -> None:
    hosts = counts_table(report, "Host")
    assert hosts == {
        "tapi01": {"changed": 2, "missing": 1, "unmanaged": 1},
        "ws-0102": {"changed": 1, "missing": 0, "unmanaged": 0},
    }
    tenants = counts_table(report, "Tenant")
    assert tenants["k6732"] == {"changed": 1, "missing": 1, "unmanaged": 0}
    assert tenants[NO_TENANT] == {"changed": 2, "missing": 0, "unmanaged": 1}
    kinds = counts_table(report, "Resource kind")
    assert kinds == {
        "firewall_rule": {"changed": 1, "missing": 0, "unmanaged": 1},
        "line_assignment": {"changed": 0, "missing": 1, "unmanaged": 0},
        "tsp_instance": {"changed": 1, "missing": 0, "unmanaged": 0},
        "tapi_client": {"changed": 1, "missing": 0, "unmanaged": 0},
    }
    assert (hosts, tenants, kinds) == (
        expected_counts(report, "host"),
        expected_counts(report, "tenant"),
        expected_counts(report, "kind"),
    )


def test_a_table_per_tenant_and_per_host_with_what_differs(report: Report) -> None:
    tables = report.dom.find_all("table", **{"class": "items"})
    sections = [(t.attrs["data-host"], t.attrs["data-tenant"]) for t in tables]
    assert sections == [("tapi01", ""), ("tapi01", "k6732"), ("ws-0102", "")]
    headings = [h.text() for h in report.dom.find_all("h2")]
    assert [h for h in headings if h.startswith(("Host ", "Tenant "))] == [
        "Host tapi01: host settings",
        "Tenant k6732 on tapi01",
        "Host ws-0102: host settings",
    ]
    [tenant] = report.dom.find_all("table", data_tenant="k6732")
    header, *rows = tenant.rows()
    assert header == ["category", "address", "what differs"]
    assert rows == [
        [
            "missing",
            "tenant/k6732/line_assignment/NFON\\RECEPTION2",
            'does not exist lines: manifests want ["1200"]',
        ],
        [
            "changed",
            "tenant/k6732/tsp_instance",
            "debug_level differs; cti_password changed (sensitive) "
            "cti_password: (sensitive) differs debug_level: host has 3, manifests want 0",
        ],
    ]
    [host] = report.dom.find_all("table", data_host="tapi01", data_tenant="")
    smb = next(row for row in host.rows() if row[1].endswith("/nfon-tapi-in-smb"))
    assert smb[0] == "changed"
    assert 'local_ports: host has ["9999"], manifests want ["445"]' in smb[2]
    every_row = [row for table in tables for row in table.rows()[1:]]
    assert len(every_row) == len(report.data["items"]) == 5


def test_hostile_names_are_text_and_nothing_is_loaded_from_outside(report: Report) -> None:
    elements = list(report.dom.walk())
    tags = {n.tag for n in elements}
    assert not tags & {"script", "img", "link", "iframe", "object", "embed", "base", "b"}
    references = [
        (n.tag, name, value)
        for n in elements
        for name, value in n.attrs.items()
        if name in ("src", "href", "srcset", "action", "data", "poster")
    ]
    assert references == []  # self-contained: not even a local reference
    assert not any(
        value.strip().lower().startswith(("http:", "https:", "//"))
        for n in elements
        for value in n.attrs.values()
    )
    assert "url(" not in report.html  # nor from the stylesheet
    [policy] = [n for n in report.dom.find_all("meta") if n.attrs.get("http-equiv")]
    assert policy.attrs["content"].startswith("default-src 'none'")
    # the rule's name, as an admin typed it, is shown as text
    [unmanaged] = [r for r in report.dom.find_all("tr") if r.attrs.get("class") == "unmanaged"]
    assert HOSTILE_RULE in unmanaged.text()


def test_no_secret_value_is_in_the_report(report: Report) -> None:
    assert report.secrets, "the lab should have secret values to look for"
    for variable, value in report.secrets.items():
        assert value not in report.html, f"{variable}'s value is in the HTML report"
        assert value not in json.dumps(report.data), f"{variable}'s value is in the JSON report"


def test_notes_travel_with_the_report(report: Report) -> None:
    [notes] = [n for n in report.dom.walk() if n.attrs.get("id") == "notes"]
    items = [li.text() for li in notes.find_all("li")]
    assert items == report.data["notes"]
    assert any("1257" in note for note in items)  # the PBX's spare extension
    assert not [n for n in report.dom.walk() if n.attrs.get("id") == "problems"]
