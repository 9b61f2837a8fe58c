"""Saved-plan files that are broken in some way are refused in one line, never with a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import __version__
from provisioner.errors import ProvisionerError
from provisioner.saved_plan import SavedPlan

COMPLETE = {
    "format_version": "1",
    "kind": "saved-plan",
    "manifests": ["m"],
    "inventory": None,
    "manifest_digest": "0" * 64,
    "fingerprints": {},
    "targets": [],
    "plan": {"provisioner_version": __version__, "resource_changes": []},
}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe{", "not a saved plan (not UTF-8 text)"),
        (b'{"kind": "saved-plan", "format_version": "1"}', "not a complete saved plan"),
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


def test_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    saved = SavedPlan(["m"], None, COMPLETE["plan"], {}, "0" * 64, [])
    with pytest.raises(ProvisionerError, match="cannot write the plan"):
        saved.write(tmp_path / "missing" / "plan.json")
