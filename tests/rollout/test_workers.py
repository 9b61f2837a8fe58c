"""Two worker processes, one PostgreSQL store, one rollout of a generated estate of 20 hosts and
500 tenants. One worker is killed mid-rollout, right after a host ran a batch it sent: the other
takes its hosts over when its lease runs out and finishes. Nothing is lost, no host ever runs two
batches at once, and every change is recorded done exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select

from provisioner.remote import scripts
from provisioner.state.rollouts import Rollouts
from provisioner.state.store import StateStore, state_url
from provisioner.state.tables import batches, changes
from tests.loop.generated import AssignmentSpec, EstateSpec, ServerSpec, TenantSpec, write_estate
from tests.support.lab import ROOT, LabEstate, LabFor

SERVERS, TENANTS = 20, 500
KILL_AFTER_BATCHES = 30  # the victim's batches before the one it does not live to record


def generated(directory: Path) -> Path:
    servers = [ServerSpec(f"srv{n:02d}", n) for n in range(1, SERVERS + 1)]
    tenants = [
        TenantSpec(
            f"t{t:03d}",
            f"K{10000 + t}",
            f"srv{t % SERVERS + 1:02d}",
            assignments=[AssignmentSpec(f"NFON\\t{t}u0", ["100"])],
        )
        for t in range(TENANTS)
    ]
    return write_estate(EstateSpec(servers, tenants), directory)


class Watch:
    """On every lab host: how many batches run at once (at most), and whose they are."""

    def __init__(self, estate: LabEstate) -> None:
        self.lock = threading.Lock()
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.senders: Counter[str] = Counter()
        self.victim: subprocess.Popen[bytes] | None = None
        self.killed = threading.Event()
        for name in estate.lab.hosts:
            self._wrap(estate, name)

    def _wrap(self, estate: LabEstate, name: str) -> None:
        server = estate.server(name)
        real = server.handler

        def handler(command: str, arguments: list[str], stdin: bytes) -> Any:
            if b'"steps"' not in stdin:
                return real(command, arguments, stdin)
            owner = str(scripts.parse_payload(stdin)[1]["lock"]["owner"])
            with self.lock:
                self.running[name] += 1
                self.most[name] = max(self.most[name], self.running[name])
                self.senders[owner] += 1
                sent = self.senders[owner]
            try:
                return real(command, arguments, stdin)
            finally:
                with self.lock:
                    self.running[name] -= 1
                victim = self.victim
                mine = victim is not None and owner.endswith(f"pid {victim.pid}")
                if mine and sent > KILL_AFTER_BATCHES and not self.killed.is_set():
                    assert victim is not None
                    self.killed.set()
                    victim.send_signal(signal.SIGKILL)  # the host did it; nobody records it

        server.handler = handler


def worker(estate: LabEstate, url: str, *argv: str | Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ) | {"PROVISIONER_STATE": url}
    return subprocess.Popen(
        [sys.executable, "-m", "provisioner", "rollout", *map(str, argv)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_two_workers_drive_one_rollout_and_one_dies_mid_wave(
    lab_for: LabFor, postgres_url: str, tmp_path: Path
) -> None:
    estate = lab_for(generated(tmp_path / "manifests"))
    watch = Watch(estate)
    common = ["--auto-approve", "--lease", "3", "--parallelism", "4"]
    first = worker(estate, postgres_url, estate.manifests, "--waves", "1,10%,50%,100%", *common)
    watch.victim = first
    store = StateStore.open(postgres_url)
    try:
        deadline = time.monotonic() + 60
        while Rollouts(store).latest() is None:
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.2)
        run_id = Rollouts(store).latest()
        second = worker(estate, postgres_url, "--resume", str(run_id), *common)
        output, _ = second.communicate(timeout=600)
        first.wait(30)
        state = Rollouts(store).load(run_id)  # type: ignore[arg-type]
    finally:
        for process in (first, watch.victim):
            if process is not None and process.poll() is None:
                process.kill()
        store.close()
    text = output.decode()
    assert watch.killed.is_set(), "the first worker was never killed"
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 0, text[-3000:]
    assert state.status == "complete"
    assert {t.status for t in state.tenants} == {"done"} and len(state.tenants) == TENANTS
    assert state.current_wave >= 3
    workers = Counter(u.worker for w in state.waves for u in w.units)
    assert len(workers) == 2, workers  # both worked units
    # no host ever ran two batches at once
    assert max(watch.most.values()) == 1, watch.most

    engine = create_engine(state_url(postgres_url))
    with engine.connect() as conn:
        rows = conn.execute(
            select(changes.c.address, changes.c.status, batches.c.status)
            .join(batches, batches.c.id == changes.c.batch_id)
            .where(changes.c.run_id == run_id)
        ).all()
    engine.dispose()
    assert rows
    assert not [r for r in rows if r[1] == "sent"], "a change without an outcome"
    done = Counter(address for address, status, _ in rows if status == "ok")
    restarts = {a for a in done if "/restart/" in a}  # a handler may rightly run per wave
    assert {a: n for a, n in done.items() if n != 1 and a not in restarts} == {}
    assert any(batch == "settled" for _, _, batch in rows), "nothing was taken over"
    assert estate.plan().code == 0
