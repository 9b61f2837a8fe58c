"""The rollout report as a reader sees it: rendered by headless Chromium from a halted rollout of
the lab, whose failure message carries markup from the PBX's answer."""

from __future__ import annotations

from pathlib import Path

from tests.render.chromium import chromium_or_unavailable, dump_dom
from tests.render.test_drift_html import parse_dom
from tests.support.lab import EXAMPLES, LabFor

HOSTILE = 'down <img src="https://evil.example/x.png"> | <script>alert(1)</script>'


def test_a_halted_rollout_reads_as_waves_failures_and_tenants(
    lab_for: LabFor, tmp_path: Path
) -> None:
    chromium = chromium_or_unavailable()
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.lab.cti is not None
    estate.lab.cti.fail_next(20, status=503, error=HOSTILE, k_account="K7001", path="/login")
    halted = estate.cli("rollout", estate.manifests, "--auto-approve", "--waves", "1,50%,100%")
    assert halted.code == 1, halted.output
    page = tmp_path / "rollout.html"
    written = estate.cli("rollout", "status", "--format", "html", "--output", page)
    assert written.code == 0, written.output
    assert written.out.startswith("Rollout 1 halted")

    html = page.read_text(encoding="utf-8")
    dom = parse_dom(dump_dom(chromium, page, tmp_path))
    [summary] = dom.find_all("p", id="summary")
    assert summary.text().startswith("Rollout 1 halted (in wave 2: 1 of 1 tenants failed")
    [waves] = dom.find_all("table", id="waves")
    assert [row[:3] for row in waves.rows()] == [
        ["Wave", "", "State"],
        ["0", "servers", "done"],
        ["1", "canary", "done"],
        ["2", "tenants", "halted"],
        ["3", "tenants", "not started"],
    ]
    [failures] = dom.find_all("section", id="failures")
    [_, row] = failures.find_all("table")[0].rows()
    assert row[:3] == ["k7001", "crm01", "2"]
    assert "<script>alert(1)</script>" in row[3]  # the markup is text
    [tenants] = dom.find_all("table", id="tenants")
    assert {r[0]: r[3] for r in tenants.rows()[1:]} == {
        "k6732": "done",
        "k7001": "failed",
        "k8450": "not started",
    }
    assert dom.find_all("p", id="resume")
    # nothing runs or loads: the markup from the PBX stayed text
    assert not dom.find_all("script") and not dom.find_all("img")
    assert "<script>" not in html and "&lt;script&gt;" in html
