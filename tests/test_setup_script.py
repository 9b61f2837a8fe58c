"""``scripts/setup.sh`` runs pip only when something changed (the demo calls it every time)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stands in for the venv's interpreter: it records how it was called, so the test sees whether
# setup.sh ran pip (which needs the network) without running it.
_RECORDING_PYTHON = '#!/bin/sh\necho "$*" >> "$(dirname "$0")/../calls"\n'


def _checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(_RECORDING_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _setup(checkout: Path) -> list[str]:
    """Run setup.sh (without the lab's Samba); the pip calls it made."""
    calls = checkout / ".venv" / "calls"
    calls.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(checkout / "scripts" / "setup.sh")],
        env={**os.environ, "PROVISIONER_LAB_AD": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines() if calls.exists() else []


def test_setup_runs_pip_once_and_again_only_when_pyproject_changes(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    assert "-m pip install -q -e ." in _setup(checkout)
    assert _setup(checkout) == [], "nothing changed, yet pip ran again"
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# a change\n")
    assert "-m pip install -q -e ." in _setup(checkout)
    assert _setup(checkout) == []


def test_a_test_set_up_serves_the_demo_too(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    digest = subprocess.run(
        ["sha256sum", str(checkout / "pyproject.toml")], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    (checkout / ".venv" / ".provisioner-setup").write_text(f"{digest} [test]\n")
    assert _setup(checkout) == []
