"""Headless Chromium for the report tests: find it, dump a DOM.

    dom = dump_dom(chromium_or_unavailable(), Path("drift.html"), tmp_path)  # serialised DOM

Tests install nothing: ``scripts/setup.sh --test`` installs Chromium. Under ``CI=true`` a
missing Chromium fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

from tests.support.ci import part_unavailable

PROGRAMS = ("chromium", "chromium-browser")
# No network, no first-run chores, nothing shared with a user's profile.
FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in CI, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 90


def find_chromium() -> str | None:
    for name in PROGRAMS:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_or_unavailable() -> str:
    found = find_chromium()
    if found is None:
        unavailable("chromium is not installed: run scripts/setup.sh --test")
    return found


def unavailable(reason: str) -> NoReturn:
    part_unavailable(reason, "Chromium for the HTML report test")


def dump_dom(program: str, page: Path, scratch: Path) -> str:
    """The DOM Chromium built from ``page`` (a local file), serialised as HTML."""
    profile = scratch / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [program, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "HOME": str(scratch)},  # its caches go to the scratch directory
    )
    if result.returncode != 0 or "<html" not in result.stdout:
        tail = "\n".join(result.stderr.splitlines()[-10:])
        raise AssertionError(f"chromium --dump-dom failed ({result.returncode}):\n{tail}")
    return result.stdout
