"""What a person watching a rollout sees: a live table on a terminal, coloured unless NO_COLOR
is set; plain lines, one per wave change and per host, when the output is not a terminal."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support.lab import EXAMPLES, ROOT, LabFor

SGR = re.compile(r"\x1b\[([0-9;]*)m")  # select graphic rendition: bold, italic, colours


def coloured(text: str) -> bool:
    """Whether any SGR sequence sets a colour (30-38, 40-48, 90-97, 100-107)."""
    for parameters in SGR.findall(text):
        for number in filter(None, parameters.split(";")):
            if 30 <= int(number) <= 48 or 90 <= int(number) <= 107:
                return True
    return False


def on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """Run ``provisioner ARGV`` with a pseudo-terminal as its output; what it wrote there."""
    leader, follower = os.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "provisioner", *argv],
        cwd=ROOT,
        env=env | {"COLUMNS": "120", "TERM": "xterm-256color"},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert child.wait(120) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_a_terminal_shows_a_live_table(lab_for: LabFor, no_color: bool) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color:
        env["NO_COLOR"] = "1"
    shown = on_a_terminal(
        ["rollout", str(estate.manifests), "--auto-approve", "--waves", "1,50%,100%"], env
    )
    plain = SGR.sub("", shown)
    assert "Rollout 1: complete" in plain
    for column in ("wave", "state", "hosts done", "failing", "working", "waiting", "tenants"):
        assert column in plain
    assert "1 done, 0 failed, 0 waiting" in plain
    assert coloured(shown) is not no_color


def test_without_a_terminal_plain_lines(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    result = estate.cli("rollout", estate.manifests, "--auto-approve", "--waves", "1,50%,100%")
    assert result.code == 0, result.output
    lines = result.out.splitlines()
    assert "  wave 2 crm01: done: 1 of 1 tenants done" in lines
    assert "wave 2 (1 tenant): done" in lines
    assert lines.index("  wave 2 crm01: done: 1 of 1 tenants done") < lines.index(
        "wave 2 (1 tenant): done"
    )
    assert "\x1b" not in result.output
