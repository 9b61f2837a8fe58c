"""The command line's contract: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.cli import main
from tests.manifest.estate import TENANT, write_estate

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args], capture_output=True, text=True, cwd=ROOT
    )


def test_validate_ok_exits_0() -> None:
    result = run("validate", "manifests/examples/client-tapi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("valid: 4 files, 4 documents")


def test_validate_reports_every_problem_then_a_summary(tmp_path: Path) -> None:
    broken = TENANT.replace("K6732", "X1").replace('["100"]', "[100]")
    write_estate(tmp_path, k6732_yaml=broken)
    result = run("validate", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{tmp_path}/k6732.yaml:3:12",
        f"{tmp_path}/k6732.yaml:8:13",
    ]
    assert result.stderr.strip() == "2 problems in 1 file"
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_1_not_2() -> None:
    assert run("no-such-command").returncode == 1
    assert run("validate").returncode == 1


def test_missing_path_is_one_line() -> None:
    result = run("validate", "does/not/exist")
    assert result.returncode == 1
    assert result.stdout.strip() == "does/not/exist: no such file or directory"


def test_schema_prints_json() -> None:
    result = run("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["$schema"].endswith("2020-12/schema")


def test_module_and_console_script_agree() -> None:
    script = Path(sys.executable).with_name("provisioner")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("provisioner, version ")


def complete(
    words: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """What bash's completion script asks ``provisioner`` for ``words`` (README: completion)."""
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - 1))
    monkeypatch.setenv("_PROVISIONER_COMPLETE", "bash_complete")
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_shell_completion_as_the_readme_sets_it_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Path(sys.executable).with_name("provisioner")
    source = subprocess.run(
        [str(script)],
        env={**os.environ, "_PROVISIONER_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
    )
    assert source.returncode == 0 and "complete -o nosort -F" in source.stdout
    assert complete("provisioner pl", monkeypatch, capsys).split() == ["plain,plan"]
    assert "plain,--target" in complete("provisioner drift m --t", monkeypatch, capsys).split()
