"""The pre-commit hook, run as a user first runs it: ``pre-commit try-repo`` in a manifests repo.

The hook's repository is a fresh git repository holding this project's ``.pre-commit-hooks.yaml``;
the manifests repository holds an example. Everything is local: the hook runs the installed
``provisioner`` (this test's environment), so no network and no install is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.lab import EXAMPLES, ROOT

HOOKS = ROOT / ".pre-commit-hooks.yaml"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=CI", "-c", "user.email=ci@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def pre_commit(*args: str | Path, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PRE_COMMIT_HOME": str(home),
        "PRE_COMMIT_COLOR": "never",
    }
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_hooks_file_is_a_valid_pre_commit_manifest(tmp_path: Path) -> None:
    done = pre_commit("validate-manifest", HOOKS, cwd=tmp_path, home=tmp_path / "cache")
    assert done.returncode == 0, done.stdout + done.stderr


def test_try_repo_validates_the_manifests_and_points_at_a_mistake(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    shutil.copy(HOOKS, hooks / HOOKS.name)
    git("init", "-q", cwd=hooks)
    git("add", ".", cwd=hooks)
    git("commit", "-qm", "hooks", cwd=hooks)

    project = tmp_path / "estate"
    shutil.copytree(EXAMPLES / "client-tapi", project / "manifests")
    git("init", "-q", cwd=project)
    git("add", ".", cwd=project)

    home = tmp_path / "cache"
    passed = pre_commit(
        "try-repo", hooks, "provisioner-validate", "--all-files", cwd=project, home=home
    )
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "provisioner validate" in passed.stdout and "Passed" in passed.stdout

    tenant = project / "manifests" / "k6732.yaml"
    tenant.write_text(tenant.read_text().replace("debug_level: 0", "debug_level: 12"))
    git("add", ".", cwd=project)
    failed = pre_commit(
        "try-repo", hooks, "provisioner-validate", "--all-files", cwd=project, home=home
    )
    assert failed.returncode == 1
    assert "Failed" in failed.stdout
    assert "manifests/k6732.yaml:8:14: " in failed.stdout, failed.stdout

    (project / "notes.txt").write_text("not YAML\n")  # no YAML changed: the hook does not run
    tenant.write_text(tenant.read_text().replace("debug_level: 12", "debug_level: 0"))
    git("add", ".", cwd=project)
    git("commit", "-qm", "estate", cwd=project)
    (project / "notes.txt").write_text("still not YAML\n")
    git("add", "notes.txt", cwd=project)
    skipped = pre_commit("try-repo", hooks, "provisioner-validate", cwd=project, home=home)
    assert skipped.returncode == 0
    assert "(no files to check)Skipped" in skipped.stdout
