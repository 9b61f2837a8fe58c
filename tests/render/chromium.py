"""Headless Chromium for the report tests: find it (install it with apt-get as root), dump a DOM.

    dom = dump_dom(chromium_or_unavailable(), Path("drift.html"), tmp_path)  # serialised DOM

Under ``CI=true`` a Chromium that cannot be found or installed fails the test; elsewhere it
skips (``scripts/setup.sh --test`` installs it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

from tests.support.ci import part_unavailable

PROGRAMS = ("chromium", "chromium-browser")
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
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
    """The Chromium program, installed first when missing and this is root on Debian."""
    found = find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        unavailable(f"chromium is not installed; as root run: {' '.join(INSTALL)}")
    lock = Path(tempfile.gettempdir()) / "provisioner-tests-chromium.lock"
    with lock.open("w") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)  # xdist workers install one at a time
        if find_chromium() is None:
            _install()
    found = find_chromium()
    if found is None:
        unavailable(f"installing chromium failed; run: {' '.join(INSTALL)}")
    return found


def _install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    installed = subprocess.run(INSTALL, env=env, capture_output=True, check=False)
    if installed.returncode != 0:
        # usually an empty or outdated package list: refresh it once and try again
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(INSTALL, env=env, capture_output=True, check=False)


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
