"""The CI kits: valid against the official workflow schemas, and their commands work in the lab.

Each kit is checked with ``check-jsonschema``'s own copies of the GitHub workflow and GitLab CI
schemas (no network). Then every ``provisioner`` command of its jobs is taken from the YAML and
run against a lab, job by job, as CI would: validate and plan on the pull request (also with a
problem), apply of the saved plan from another checkout on merge, drift at night (clean, then
after a change behind the tool's back). The files the kit comments on and uploads must be the
files those commands wrote.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from provisioner.lab.tamper import tamper
from provisioner.render.markdown import COMMENT_LIMIT
from provisioner.saved_plan import SavedPlan
from tests.support.lab import EXAMPLES, ROOT, LabEstate, LabFor, run_cli

KITS = ROOT / "examples" / "ci"
GITHUB = KITS / "github-actions.yml"
GITLAB = KITS / "gitlab-ci.yml"
GITLAB_KEYWORDS = {"stages", "variables", "default", "workflow", "include", "image", "services"}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    return document


def check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def without_timeouts(text: str) -> str:
    return re.sub(r"^ *timeout-minutes: .*\n", "", text, flags=re.MULTILINE)


# per kit: each schema's options, and a change that schema must refuse (so the check is real)
SCHEMAS: dict[Path, list[tuple[list[str], Callable[[str], str]]]] = {
    GITHUB: [
        (["--builtin-schema", "vendor.github-workflows"], lambda t: t.replace("steps:", "stepz:")),
        (["--builtin-schema", "custom.github-workflows-require-timeout"], without_timeouts),
    ],
    GITLAB: [
        (
            ["--builtin-schema", "vendor.gitlab-ci", "--data-transform", "gitlab-ci"],
            lambda t: t.replace("script:", "scripz:"),
        )
    ],
}


@pytest.mark.parametrize("kit", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_the_kit_is_valid_against_the_official_schema(kit: Path, tmp_path: Path) -> None:
    for options, breaking in SCHEMAS[kit]:
        done = check_jsonschema(*options, kit)
        assert done.returncode == 0, done.stdout + done.stderr
        broken = tmp_path / kit.name
        broken.write_text(breaking(kit.read_text(encoding="utf-8")), encoding="utf-8")
        assert check_jsonschema(*options, broken).returncode == 1


# --- the commands of each job ---------------------------------------------------------------


def commands_in(script: str) -> list[list[str]]:
    """The ``provisioner`` command lines of a shell script, as argument lists."""
    joined = re.sub(r"\\\n\s*", " ", script)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if words[:1] == ["provisioner"]:
            found.append(words[1:])
        else:
            assert "provisioner" not in words, f"a provisioner command hides in: {line!r}"
    return found


def github_jobs(document: dict[str, Any]) -> dict[str, list[list[str]]]:
    return {
        name: [c for step in job["steps"] for c in commands_in(step.get("run", ""))]
        for name, job in document["jobs"].items()
    }


def gitlab_jobs(document: dict[str, Any]) -> dict[str, list[list[str]]]:
    jobs = {}
    for name, job in document.items():
        if name in GITLAB_KEYWORDS or not isinstance(job, dict):
            continue
        lines = [*job.get("before_script", []), *job["script"], *job.get("after_script", [])]
        jobs[name] = [c for line in lines for c in commands_in(line)]
    return jobs


@dataclass(frozen=True)
class Kit:
    path: Path
    jobs: Callable[[dict[str, Any]], dict[str, list[list[str]]]]
    on_pull_request: tuple[str, ...]  # job names, in stage order
    on_merge: str
    nightly: str
    example: str


GITHUB_KIT = Kit(GITHUB, github_jobs, ("plan",), "apply", "drift", "client-tapi")
GITLAB_KIT = Kit(GITLAB, gitlab_jobs, ("validate", "plan"), "apply", "drift", "multi-tenant")


def test_each_kit_runs_the_commands_of_the_workflow() -> None:
    for kit in (GITHUB_KIT, GITLAB_KIT):
        jobs = kit.jobs(load(kit.path))
        pull_request = [c for name in kit.on_pull_request for c in jobs[name]]
        assert [c[0] for c in pull_request] == ["validate", "plan"]
        assert [c[0] for c in jobs[kit.on_merge]] == ["apply"]
        assert [c[0] for c in jobs[kit.nightly]] == ["drift"]


@contextmanager
def job_directory(estate: LabEstate, name: str, *artifacts: Path) -> Iterator[Path]:
    """A fresh checkout for one job: the manifests, and the artifacts it downloads."""
    checkout = estate.directory / name
    shutil.copytree(estate.manifests, checkout / "manifests")
    for artifact in artifacts:
        shutil.copy(artifact, checkout / artifact.name)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(checkout)
        yield checkout


def run_job(commands: list[list[str]]) -> list[int]:
    codes = []
    for command in commands:
        result = run_cli(*command)
        assert "Traceback" not in result.output
        codes.append(result.code)
    return codes


@pytest.mark.parametrize("kit", [GITHUB_KIT, GITLAB_KIT], ids=["github", "gitlab"])
def test_the_kits_commands_work_against_the_lab(kit: Kit, lab_for: LabFor) -> None:
    jobs = kit.jobs(load(kit.path))
    pull_request = [c for name in kit.on_pull_request for c in jobs[name]]
    estate = lab_for(EXAMPLES / kit.example)
    assert estate.lab.cti is not None
    k_account = next(iter(estate.model().tenants.values())).k_account

    # a pull request whose plan has a problem: the comment still says so, first; the job fails
    estate.lab.cti.set_password(k_account, "changed-at-nfon-only")
    with job_directory(estate, "pr-with-problem") as checkout:
        assert run_job(pull_request) == [0, 1]
        comment = (checkout / "plan.md").read_text(encoding="utf-8")
        assert comment.index("[!CAUTION]") < comment.index("**Plan:")
    estate.lab.cti.set_password(k_account, estate.lab.values[f"{k_account}_CTI_PASSWORD"])

    # the pull request again, fixed: a comment that fits, and the saved plan as the artifact
    with job_directory(estate, "pr") as checkout:
        assert run_job(pull_request) == [0, 0]
        comment = (checkout / "plan.md").read_text(encoding="utf-8")
        assert len(comment) <= COMMENT_LIMIT and "[!CAUTION]" not in comment
        saved = checkout / "plan.json"
        assert SavedPlan.read(saved).changes()
        assert_uploads(kit, "pr", checkout)

    # merged: another checkout, the downloaded plan, applied as reviewed
    with job_directory(estate, "merge", saved):
        assert run_job(jobs[kit.on_merge]) == [0]
    assert estate.plan().code == 0

    # nightly: clean, then drift fails the job and the report is still there to upload
    with job_directory(estate, "nightly") as checkout:
        assert run_job(jobs[kit.nightly]) == [0]
        assert_uploads(kit, "nightly", checkout)
    host = next(name for name, host in estate.lab.hosts.items() if host.role == "server")
    tamper(estate.lab, host, "remove-firewall-rule", "nfon-tapi-in-smb")
    with job_directory(estate, "nightly-drift") as checkout:
        assert run_job(jobs[kit.nightly]) == [2]
        assert "nfon-tapi-in-smb" in (checkout / "drift.html").read_text(encoding="utf-8")


def assert_uploads(kit: Kit, when: str, checkout: Path) -> None:
    """What the kit comments on and uploads is what the commands wrote, and it goes out even
    when the job failed (a plan with problems, a drift)."""
    document = load(kit.path)
    if kit is GITHUB_KIT:
        job = document["jobs"]["plan" if when == "pr" else "drift"]
        uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload")]
        assert uploads and all("!cancelled()" in s["if"] for s in uploads)
        paths = [s["with"]["path"] for s in uploads]
        if when == "pr":
            [comment] = [s for s in job["steps"] if "gh pr comment" in s.get("run", "")]
            assert "--body-file plan.md" in comment["run"] and "!cancelled()" in comment["if"]
            [download] = [
                s
                for s in document["jobs"]["apply"]["steps"]
                if str(s.get("uses", "")).startswith("actions/download-artifact")
            ]
            assert download["with"]["name"] == uploads[0]["with"]["name"]
    else:
        job = document["plan" if when == "pr" else "drift"]
        assert job["artifacts"]["when"] == "always"
        paths = job["artifacts"]["paths"]
        if when == "pr":
            assert any('"body@plan.md"' in line for line in job["after_script"])
            assert any("raw/plan.json?job=plan" in line for line in document["apply"]["script"])
    for path in paths:
        assert (checkout / path).is_file(), f"{kit.path.name} uploads {path}, never written"


def test_the_kits_run_on_the_events_they_promise() -> None:
    github = load(GITHUB)
    assert {"pull_request", "schedule"} <= set(github["on"])
    jobs = github["jobs"]
    assert "github.event.action != 'closed'" in jobs["plan"]["if"]
    assert "github.event.pull_request.merged" in jobs["apply"]["if"]
    assert jobs["apply"]["environment"] == "production"
    assert "schedule" in jobs["drift"]["if"]

    gitlab = load(GITLAB)
    for name in ("validate", "plan"):
        assert gitlab[name]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert gitlab["apply"]["environment"]["name"] == "production"
    assert "$CI_DEFAULT_BRANCH" in gitlab["apply"]["rules"][0]["if"]
    assert gitlab["drift"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule"'}]
