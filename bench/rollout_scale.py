"""A rollout of 1,000 tenants over 20 lab hosts, on SQLite and on PostgreSQL, with its budgets.

    .venv/bin/python bench/rollout_scale.py                       # 20 servers, 1,000 tenants
    .venv/bin/python bench/rollout_scale.py --servers 5 --tenants 100 --stores sqlite

For each state store it writes generated manifests (``bench/generated_estate.py``), starts a lab
for them (simulated Windows hosts behind real WS-Management listeners, the CTI API) and, for
PostgreSQL, a private server (Debian's package, as the tests do). Then the real command line
runs in a child process, three times:

    first     fresh hosts: wave 0 the servers, then tenants in waves 1,10%,50%,100%
    change    every tenant's debug level changed: the same waves
    again     nothing to do

Each command a host receives is timed, and given to the unit (host and wave) whose claim was
open then, as the state store recorded it. Budget per host and wave: ONE batch and ONE gather
(which verifies the batch and plans the host's next wave), plus the host's first read in its
first wave, plus a gather and a second batch where the first batch created TSP instances (their
lines appear only after the Telephony restart), plus at most one empty batch per host and
rollout that gives the host's lock back where no verifying gather did. Wall-time budgets per
rollout are below.

It also measures the state store alone: batches recorded (intent before, results after) by 10
threads at once, 100 changes each, in write transactions and change rows per second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from generated_estate import EstateShape, span, write_estate
from sqlalchemy.engine import URL

from provisioner.lab.estate import Lab
from provisioner.lab.postgres import PostgresServer
from provisioner.plan.model import Action, Change
from provisioner.planner import Host
from provisioner.remote import scripts
from provisioner.runner import ChangeResult, HostResult
from provisioner.state.rollouts import Rollouts, RolloutState
from provisioner.state.store import RunRecord, StateStore

PHASES = ("first", "change", "again")
WALL_BUDGET_S = {"first": 300.0, "change": 120.0, "again": 60.0}  # for 20 servers, 1,000 tenants
MIN_WALL_S = 20.0  # a small estate: starting the command line and the waves dominate
# write transactions per second the store must sustain, at least: a rollout of 1,000 tenants
# over 20 hosts makes about 30 a second (claims, intents, results, leases, waves)
WRITES_BUDGET = 100.0
STORE_BATCHES, STORE_CHANGES, STORE_THREADS = 400, 100, 10


@dataclass
class Command:
    at: datetime
    script: str  # gather | apply | release (an empty batch giving the host's lock back)
    messages: int  # WSMan messages the host had received when the command's stdin ended


@dataclass
class Phase:
    store: str
    name: str
    wall_s: float
    per_unit: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # scripts
    messages: dict[tuple[str, int], int] = field(default_factory=dict)
    waves: int = 0
    problems: list[str] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--users", type=int, default=2, help="assignments per tenant")
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args()
    shape = EstateShape(servers=args.servers, tenants=args.tenants, users_per_tenant=args.users)
    scale = args.tenants / 1_000
    phases: list[Phase] = []
    writes: list[str] = []
    store_problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rollout-scale-") as workdir:
        work = Path(workdir)
        for store in [s.strip() for s in args.stores.split(",") if s.strip()]:
            with state_store(store, work / store) as url:
                phases += run_store(store, url, shape, work / store, scale)
                rate, problem = store_throughput(url)
                writes.append(f"{store}: {rate}")
                if problem:
                    store_problems.append(f"{store}: {problem}")
    print()
    print_table(phases)
    print()
    print("state store alone (intent and result per batch):")
    for line in writes:
        print(f"  {line}")
    problems = [f"{p.store} {p.name}: {problem}" for p in phases for problem in p.problems]
    problems += store_problems
    print()
    for problem in problems:
        print(f"OVER BUDGET / WRONG: {problem}")
    if problems:
        raise SystemExit(1)
    print("all budgets met")


@contextmanager
def state_store(kind: str, directory: Path) -> Iterator[str]:
    directory.mkdir(parents=True)
    if kind == "sqlite":
        yield str(URL.create("sqlite", database=str(directory / "state.db")))
        return
    cluster = Path(tempfile.mkdtemp(prefix="rollout-scale-pg-"))  # the postgres user's own
    try:
        with PostgresServer.start(cluster) as server:
            yield server.create_database("bench")
    finally:
        shutil.rmtree(cluster, ignore_errors=True)


def run_store(store: str, url: str, shape: EstateShape, work: Path, scale: float) -> list[Phase]:
    manifests = write_estate(work / "manifests", shape)
    started = time.perf_counter()
    with Lab(work / "lab", [manifests]) as lab:
        print(
            f"{store}: {shape.servers} servers, {shape.tenants} tenants; lab started in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        environment = os.environ | {
            "PROVISIONER_INVENTORY": str(lab.inventory_path),
            "PROVISIONER_STATE_DIR": str(work / "state"),
            "PROVISIONER_STATE": url,
        }
        commands = record_commands(lab)
        phases = []
        for name in PHASES:
            if name == "change":
                change_every_tenant(manifests)
            for host_commands in commands.values():
                host_commands.clear()
            for host in lab.hosts.values():
                host.server.counters.reset()
            phase = run_phase(store, name, manifests, environment, url, commands, work)
            check(phase, scale)
            phases.append(phase)
            print(f"  {name:<7} {phase.wall_s:7.1f} s, {phase.waves} waves", flush=True)
        return phases


def change_every_tenant(manifests: Path) -> None:
    for manifest in manifests.glob("t*.yaml"):
        text = manifest.read_text()
        manifest.write_text(text.replace("number_format:", "debug_level: 2\nnumber_format:"))


def record_commands(lab: Lab) -> dict[str, list[Command]]:
    """Wrap each lab host's handler to time its commands."""
    commands: dict[str, list[Command]] = defaultdict(list)
    for name, host in lab.hosts.items():
        server = host.server
        real = server.handler

        def handler(
            command: str, arguments: list[str], stdin: bytes, name: str = name, real: Any = real,
            server: Any = server,
        ) -> Any:  # fmt: skip
            now = datetime.now(UTC).replace(tzinfo=None)
            commands[name].append(
                Command(now, scripts.kind_of(stdin), server.counters.total_messages)
            )
            return real(command, arguments, stdin)

        server.handler = handler
    return commands


def run_phase(
    store: str,
    name: str,
    manifests: Path,
    environment: dict[str, str],
    url: str,
    commands: dict[str, list[Command]],
    work: Path,
) -> Phase:
    argv = [sys.executable, "-m", "provisioner", "rollout", str(manifests), "--auto-approve"]
    output = work / f"{name}.out"
    started = time.perf_counter()
    with output.open("wb") as stream:
        code = subprocess.call(argv, stdout=stream, stderr=subprocess.STDOUT, env=environment)
    phase = Phase(store, name, time.perf_counter() - started)
    if code != 0:
        tail = output.read_text(errors="replace").splitlines()[-15:]
        phase.problems.append(f"exit code {code}; output ends:\n    " + "\n    ".join(tail))
        return phase
    with StateStore.open(url) as opened:
        rollouts = Rollouts(opened)
        latest = rollouts.latest()
        assert latest is not None
        state = rollouts.load(latest)
        created = instances_created(opened, latest)
    phase.waves = len(state.waves)
    attribute(phase, state, commands)
    phase.problems += budget_problems(phase, created)
    return phase


def instances_created(store: StateStore, run_id: int) -> set[tuple[str, int]]:
    """(host, wave) where a batch created TSP instances: their lines need a second batch."""
    return {
        (batch.host, batch.wave or 0)
        for batch in store.batches(run_id)
        if any(c.kind == "tsp_instance" and c.action == "create" for c in batch.changes)
    }


def attribute(phase: Phase, state: RolloutState, commands: dict[str, list[Command]]) -> None:
    """Give each host's commands to the unit whose claim was open when they arrived."""
    for wave in state.waves:
        for unit in wave.units:
            name = unit.host.split("/", 1)[1]
            assert unit.started_at is not None and unit.finished_at is not None
            phase.per_unit[(name, wave.number)] = []
            previous = 0
            for command in commands.get(name, []):
                if unit.started_at <= command.at <= unit.finished_at:
                    phase.per_unit[(name, wave.number)].append(command.script)
                    key = (name, wave.number)
                    phase.messages[key] = phase.messages.get(key, 0) + command.messages - previous
                previous = command.messages
    attributed = sum(len(c) for c in phase.per_unit.values())
    total = sum(len(c) for c in commands.values())
    if attributed != total:
        phase.problems.append(f"{total - attributed} commands outside any unit's claim")


def budget_problems(phase: Phase, created: set[tuple[str, int]]) -> list[str]:
    problems = []
    first_wave: dict[str, int] = {}
    for name, wave in sorted(phase.per_unit, key=lambda k: k[1]):
        first_wave.setdefault(name, wave)
    for (name, wave), scripts_ in sorted(phase.per_unit.items()):
        extra = 1 if (name, wave) in created else 0
        counts = Counter(scripts_)
        batches_allowed = 1 + extra
        gathers_allowed = max(counts["apply"], 1) + (1 if first_wave[name] == wave else 0)
        if counts["apply"] > batches_allowed or counts["gather"] > gathers_allowed:
            problems.append(
                f"{name} wave {wave}: {scripts_}, allowed {batches_allowed} batches and "
                f"{gathers_allowed} gathers"
            )
    releases = Counter(name for (name, _), scripts_ in phase.per_unit.items()
                       for script in scripts_ if script == "release")  # fmt: skip
    problems += [f"{name}: {n} lock releases, allowed 1" for name, n in releases.items() if n > 1]
    return problems


def check(phase: Phase, scale: float) -> None:
    budget = max(WALL_BUDGET_S[phase.name] * scale, MIN_WALL_S)
    if phase.wall_s > budget:
        phase.problems.append(f"{phase.wall_s:.1f} s, budget {budget:.0f} s")
    if phase.name == "again":
        sent = [k for k, s in phase.per_unit.items() if "apply" in s]
        if sent:
            phase.problems.append(f"batches sent with nothing to do: {sent[:5]}")


def store_throughput(url: str) -> tuple[str, str]:
    """Batches recorded by several threads at once: write transactions and rows per second."""
    host = Host("server/bench", "bench", "server")
    planned = [
        Change(f"tenant/t/line_assignment/U{n}", Action.UPDATE, "line_assignment", "bench", "t")
        for n in range(STORE_CHANGES)
    ]
    done = HostResult(host, "ok", "", [ChangeResult(c, "ok") for c in planned])
    with StateStore.open(url, connections=STORE_THREADS) as store:
        run_id = store.begin_run("apply", manifests=[], targets=[], owner="bench")
        record = RunRecord(store, run_id, worker="bench")

        def batches(count: int) -> None:
            for _ in range(count):
                record.result(record.intent(host, planned), done)

        threads = [
            threading.Thread(target=batches, args=(STORE_BATCHES // STORE_THREADS,))
            for _ in range(STORE_THREADS)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    transactions = 2 * STORE_BATCHES / wall
    rows = 2 * STORE_BATCHES * STORE_CHANGES / wall
    text = f"{transactions:,.0f} write transactions/s, {rows:,.0f} change rows/s ({wall:.1f} s)"
    if transactions < WRITES_BUDGET:
        return text, f"state store: {transactions:.0f} transactions/s, budget {WRITES_BUDGET:.0f}"
    return text, ""


def print_table(phases: list[Phase]) -> None:
    header = (
        f"{'store':<11} {'phase':<7} {'wall s':>7} {'waves':>6} {'units':>6} "
        f"{'cmds/host/wave':>15} {'messages/host/wave':>19}  budget"
    )
    print(header)
    print("-" * len(header))
    for phase in phases:
        commands = [len(c) for c in phase.per_unit.values()]
        print(
            f"{phase.store:<11} {phase.name:<7} {phase.wall_s:7.1f} {phase.waves:6d} "
            f"{len(phase.per_unit):6d} {span(commands):>15} "
            f"{span(list(phase.messages.values())):>19}  "
            f"{'ok' if not phase.problems else 'NOT MET'}"
        )


if __name__ == "__main__":
    main()
