"""apply asks before it changes anything: no terminal and no --auto-approve is an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.lab import LabEstate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests" / "examples" / "client-tapi"


def test_without_a_terminal_apply_needs_auto_approve(lab_for, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    estate: LabEstate = lab_for(EXAMPLE)
    before = estate.plan()
    assert before.code == 2
    result = subprocess.run(
        [sys.executable, "-m", "provisioner", "apply", str(estate.manifests)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),  # the fixture put the lab's inventory and state dir here
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: apply needs confirmation and there is no terminal: add --auto-approve"
    )
    assert "Traceback" not in result.stderr
    assert estate.plan().code == 2  # nothing was changed
    assert estate.runs("apply") == []  # and nothing was recorded
