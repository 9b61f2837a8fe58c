"""Saved-plan files that are broken in some way are refused in one line, never with a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import __version__
from provisioner.errors import ProvisionerError
from provisioner.render.json_format import FORMAT_VERSION
from provisioner.saved_plan import SavedPlan, manifest_digest

COMPLETE = {
    "format_version": FORMAT_VERSION,
    "kind": "saved-plan",
    "manifests": ["m"],
    "inventory_digest": None,
    "manifest_digest": "0" * 64,
    "fingerprints": {},
    "targets": [],
    "plan": {"provisioner_version": __version__, "resource_changes": []},
}


PLAN = COMPLETE["plan"]
CHANGE = {
    "address": "server/tapi01/package",
    "type": "package",
    "host": "tapi01",
    "change": {"actions": ["create"], "before": None, "after": {"version": "1.0.0"}},
}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{", "not a saved plan (not UTF-8 text)"),
        (
            json.dumps({"kind": "saved-plan", "format_version": FORMAT_VERSION}).encode(),
            "not a complete saved plan",
        ),
        (
            json.dumps({**COMPLETE, "format_version": "1"}).encode(),
            "saved-plan format '1' is not",
        ),
        (b"[1, 2]", "not a saved plan (make one with plan --out)"),
        (b'{"kind": "saved-plan"', "not a saved plan"),
        (
            json.dumps({**COMPLETE, "plan": {"resource_changes": [{"x": 1}]}}).encode(),
            "not a complete saved plan",
        ),
        (
            json.dumps(
                {**COMPLETE, "plan": {"provisioner_version": "0.0.1", "resource_changes": []}}
            ).encode(),
            "was made by provisioner 0.0.1",
        ),
        (json.dumps({**COMPLETE, "manifests": []}).encode(), "not a complete saved plan"),
        (json.dumps({**COMPLETE, "manifests": "m"}).encode(), "not a complete saved plan"),
        (json.dumps({**COMPLETE, "targets": [1]}).encode(), "not a complete saved plan"),
        (json.dumps({**COMPLETE, "fingerprints": []}).encode(), "not a complete saved plan"),
        (json.dumps({**COMPLETE, "manifest_digest": "x"}).encode(), "not a complete saved plan"),
        # an endpoint of the editor's choosing is not something a saved plan can carry
        (
            json.dumps({**COMPLETE, "inventory": "/tmp/elsewhere.yaml"}).encode(),
            "not a complete saved plan (inventory: Extra inputs are not permitted)",
        ),
        *[
            (
                json.dumps({**COMPLETE, "plan": {**PLAN, "resource_changes": changes}}).encode(),
                "not a complete saved plan",
            )
            for changes in (
                [{**CHANGE, "change": {**CHANGE["change"], "actions": []}}],
                [{**CHANGE, "change": {**CHANGE["change"], "actions": ["explode"]}}],
                [{**CHANGE, "change": {**CHANGE["change"], "actions": "create"}}],
                [{**CHANGE, "change": None}],
                [{key: value for key, value in CHANGE.items() if key != "change"}],
                [{"address": "a"}],
                [None],
                "server/x",
                {"a": 1},
            )
        ],
        (
            json.dumps({**COMPLETE, "plan": {"resource_changes": []}}).encode(),
            "not a complete saved plan (plan.provisioner_version is missing)",
        ),
    ],
)
def test_broken_saved_plans_are_one_line_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "plan.json"
    path.write_bytes(content)
    with pytest.raises(ProvisionerError) as caught:
        SavedPlan.read(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_complete_saved_plan_reads(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(COMPLETE))
    assert SavedPlan.read(path).changes() == {}
    path.write_text(json.dumps({**COMPLETE, "plan": {**PLAN, "resource_changes": [CHANGE]}}))
    assert list(SavedPlan.read(path).changes()) == ["server/tapi01/package"]


def test_the_manifest_digest_does_not_depend_on_where_the_checkout_is(tmp_path: Path) -> None:
    for clone in ("a", "b/deeper"):
        (tmp_path / clone / "m" / "sub").mkdir(parents=True)
        (tmp_path / clone / "m" / "site.yaml").write_text("kind: Site\n")
        (tmp_path / clone / "m" / "sub" / "ignored.txt").write_text("x")
    first = manifest_digest([tmp_path / "a" / "m"])
    assert manifest_digest([tmp_path / "b" / "deeper" / "m"]) == first
    (tmp_path / "b" / "deeper" / "m" / "site.yaml").write_text("kind: Site # edited\n")
    assert manifest_digest([tmp_path / "b" / "deeper" / "m"]) != first


def test_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    saved = SavedPlan(["m"], None, PLAN, {}, "0" * 64, [])
    with pytest.raises(ProvisionerError, match="cannot write the plan"):
        saved.write(tmp_path / "missing" / "plan.json")
