"""A running lab estate for tests of the plan/apply/drift loop, driven through the real CLI.

The lab (:class:`provisioner.lab.estate.Lab`) is in-process: simulated Windows hosts behind real
WS-Management listeners and a simulated NFON CTI API. A test copies manifests into its own
directory, starts a lab for them and runs ``provisioner`` commands in-process::

    def test_apply_then_plan_is_empty(lab_for: LabFor) -> None:
        estate = lab_for(EXAMPLES / "client-tapi")     # copies the manifests, starts the lab
        assert estate.apply().code == 0                 # provisioner apply MANIFESTS --auto-approve
        assert estate.plan().code == 0                  # provisioner plan ... --detailed-exitcode
        estate.windows("tapi01").state.firewall_rules   # the simulated host, to change behind
        estate.server("tapi01").counters.commands       # the WinRM commands it received

Every command's output is kept in ``estate.transcript`` (tests search it for secrets).
``PROVISIONER_INVENTORY`` and ``PROVISIONER_STATE_DIR`` point at the lab while it runs; one lab
per test (a second one would re-point them).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from sqlalchemy.engine import URL

from provisioner.cli import main
from provisioner.lab.estate import Lab
from provisioner.lab.windows_host import WindowsHost
from provisioner.lab.wsman_server import WSManServer
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.remote import scripts
from provisioner.state.store import RunRow, StateStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


@dataclass(frozen=True)
class CliResult:
    """One ``provisioner`` command: its exit code and what it printed."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        """The JSON document the command printed (``--format json``)."""
        return json.loads(self.out)


def run_cli(*args: str) -> CliResult:
    """Run ``provisioner ARGS`` in this process, capturing both streams."""
    out, err = io.StringIO(), io.StringIO()
    code: Any = None
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int), f"provisioner {' '.join(args)} did not exit with a code: {code!r}"
    return CliResult(tuple(args), code, out.getvalue(), err.getvalue())


@dataclass
class LabEstate:
    """A started lab, the manifests it was made for, and the CLI pointed at both."""

    lab: Lab
    manifests: Path
    state_dir: Path
    monkeypatch: pytest.MonkeyPatch
    transcript: list[CliResult] = field(default_factory=list)

    # --- the command line ------------------------------------------------------------------

    def cli(self, *args: str | Path) -> CliResult:
        result = run_cli(*(str(a) for a in args))
        self.transcript.append(result)
        return result

    def plan(self, *extra: str | Path) -> CliResult:
        """``plan MANIFESTS --detailed-exitcode``: 0 nothing to do, 2 changes, 1 error."""
        return self.cli("plan", self.manifests, "--detailed-exitcode", *extra)

    def plan_json(self, *extra: str | Path) -> dict[str, Any]:
        result = self.cli("plan", self.manifests, "--format", "json", *extra)
        assert result.code == 0, result.output
        document: dict[str, Any] = result.json()
        return document

    def planned_addresses(self, *extra: str | Path) -> set[str]:
        return {c["address"] for c in self.plan_json(*extra)["resource_changes"]}

    def apply(self, *extra: str | Path) -> CliResult:
        return self.cli("apply", self.manifests, "--auto-approve", *extra)

    def drift(self, *extra: str | Path) -> CliResult:
        return self.cli("drift", self.manifests, *extra)

    def model(self) -> Estate:
        """The manifests as the tool loads them (to name their users, rules, tenants)."""
        estate, errors = load_estate([self.manifests])
        assert not errors, [str(e) for e in errors]
        return estate

    # --- the simulated estate --------------------------------------------------------------

    def windows(self, host: str) -> WindowsHost:
        return self.lab.hosts[host].windows

    def server(self, host: str) -> WSManServer:
        return self.lab.hosts[host].server

    def commands(self) -> dict[str, int]:
        """WinRM commands each host received since the last :meth:`reset_counters`."""
        return {name: host.server.counters.commands for name, host in self.lab.hosts.items()}

    def batches(self) -> dict[str, int]:
        """Batches that carried steps, per host, since the last :meth:`reset_counters` (an empty
        batch only gives the host's lock back)."""
        return {
            name: sum(
                scripts.kind_of(payload) == "apply"
                for payload in host.server.counters.stdin_payloads
            )
            for name, host in self.lab.hosts.items()
        }

    def reset_counters(self) -> None:
        for host in self.lab.hosts.values():
            host.server.counters.reset()
        if self.lab.cti is not None:
            self.lab.cti.clear_records()

    def set_secret(self, variable: str, value: str) -> None:
        """Give a secret reference a new value (the environment wins over the inventory)."""
        self.monkeypatch.setenv(variable, value)

    # --- what the tool wrote ---------------------------------------------------------------

    def store(self) -> StateStore:
        """The state store the commands wrote to (``state/state.db``)."""
        return StateStore.open(str(URL.create("sqlite", database=str(self.state_dir / "state.db"))))

    def runs(self, kind: str) -> list[RunRow]:
        """The recorded runs of one kind (plan, apply, rollout), oldest first."""
        if not (self.state_dir / "state.db").exists():
            return []
        with self.store() as store:
            return store.runs(kind=kind)

    def last_apply(self) -> dict[str, dict[str, Any]]:
        """Per host, what the last apply recorded: ``{"status": ..., "changes": [{"address":
        ..., "status": ..., "message": ...}]}`` over all its batches (a host's worst status)."""
        applies = self.runs("apply")
        assert applies, "no apply was recorded"
        hosts: dict[str, dict[str, Any]] = {}
        with self.store() as store:
            for batch in store.batches(applies[-1].id):
                entry = hosts.setdefault(batch.host, {"status": "ok", "changes": []})
                if batch.status != "ok" and entry["status"] == "ok":
                    entry["status"] = batch.status
                entry["changes"] += [
                    {"address": c.address, "status": c.status, "message": c.message}
                    for c in batch.changes
                ]
        return hosts

    @property
    def directory(self) -> Path:
        """This estate's directory: ``manifests/``, ``state/``, ``lab/`` and what tests save."""
        return self.manifests.parent

    def written_files(self) -> dict[str, bytes]:
        """Every file in the estate's directory except the lab's own (its inventory holds the
        lab's secret values by design)."""
        return {
            str(path.relative_to(self.directory)): path.read_bytes()
            for path in sorted(self.directory.rglob("*"))
            if path.is_file() and path.relative_to(self.directory).parts[0] != "lab"
        }


def write_manifests(directory: Path, files: Mapping[str, str]) -> Path:
    """Write ``{"site.yaml": "...", ...}`` into ``directory`` and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


@contextmanager
def running_lab(
    directory: Path, manifests: Path, *, also: Iterable[Path] = ()
) -> Iterator[LabEstate]:
    """Copy ``manifests`` to ``directory/manifests``, start a lab for them, point the CLI at it.

    The lab also simulates what the manifests in ``also`` name (later versions of the estate).
    Usable where a fixture is not (inside a hypothesis example); stops the lab on exit.
    """
    copied = directory / "manifests"
    if manifests.resolve() != copied.resolve():
        shutil.copytree(manifests, copied)
    state_dir = directory / "state"
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        Lab(directory / "lab", [copied, *also]) as lab,
    ):
        monkeypatch.setenv("PROVISIONER_INVENTORY", str(lab.inventory_path))
        monkeypatch.setenv("PROVISIONER_STATE_DIR", str(state_dir))
        yield LabEstate(lab, copied, state_dir, monkeypatch)


class LabFor(Protocol):
    def __call__(self, manifests: Path) -> LabEstate: ...


@pytest.fixture
def lab_for(tmp_path: Path) -> Iterator[LabFor]:
    """Start a lab for a manifest directory (copied into ``tmp_path``); stopped at teardown."""
    with ExitStack() as stack:
        started: list[LabEstate] = []

        def start(manifests: Path) -> LabEstate:
            directory = tmp_path / f"estate-{len(started) + 1}"
            estate = stack.enter_context(running_lab(directory, manifests))
            started.append(estate)
            return estate

        yield start


# --- looking for secrets ----------------------------------------------------------------------


def secret_forms(value: str) -> list[bytes]:
    """The ways a secret could show up in bytes: as UTF-8 and UTF-16LE, plain or in base64.

    Base64 of a value depends on where it starts in the encoded data, so each of the three
    alignments is searched, without the characters at either end that mix in other bytes
    (PowerShell's ``-EncodedCommand`` is base64 of UTF-16LE, hence both encodings).
    """
    forms = []
    for encoded in (value.encode("utf-8"), value.encode("utf-16-le")):
        forms.append(encoded)
        for offset in range(3):
            text = base64.b64encode(b"\0" * offset + encoded)
            forms.append(text[4:-4])
    return [form for form in forms if len(form) >= 8]


def secret_hits(
    values: Mapping[str, str], places: Mapping[str, str | bytes | Iterable[str | bytes]]
) -> list[str]:
    """``"K6732_CTI_PASSWORD in journal"`` for every secret value found in any place."""
    hits = []
    for where, content in places.items():
        chunks = [content] if isinstance(content, str | bytes) else list(content)
        data = [c.encode("utf-8") if isinstance(c, str) else c for c in chunks]
        for variable, value in values.items():
            if any(form in chunk for form in secret_forms(value) for chunk in data):
                hits.append(f"{variable} in {where}")
    return hits


# --- commands in child processes, hosts that take their time ----------------------------------


def provisioner_child(
    *argv: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """``provisioner ARGV`` in a child process with this process's environment (the lab's
    inventory and state), or ``env``; Ctrl-C works in it as at a terminal, even where this suite
    runs in the background (which inherits SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner", *map(str, argv)],
        cwd=ROOT,
        env=dict(os.environ if env is None else env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def hold_first_batch(server: WSManServer) -> tuple[threading.Event, threading.Event]:
    """``(arrived, release)``: the host's first batch waits for ``release`` before it runs."""
    arrived, release = threading.Event(), threading.Event()
    real = server.handler

    def handler(command: str, arguments: list[str], stdin: bytes) -> Any:
        if b'"steps"' in stdin and not arrived.is_set():
            arrived.set()
            release.wait(60)
        return real(command, arguments, stdin)

    server.handler = handler
    return arrived, release
