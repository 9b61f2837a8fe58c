"""Operators on several workstations at once, each with the default state store of its own: the
hosts' own locks let exactly one apply or rollout work each host, the others fail fast naming the
holder (or queue with --wait), and no change is lost or done twice: the lab's hosts and every
workstation's records agree.

Each provisioner runs in a process of its own, through the lab's WS-Management listeners, and the
lab's Windows model runs their commands concurrently, as Windows does."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from provisioner.remote import scripts
from provisioner.state.store import StateStore
from tests.rollout.test_rollout_loop import three_servers
from tests.support.lab import EXAMPLES, LabEstate, LabFor, hold_first_batch, provisioner_child


def store_of(estate: LabEstate, workstation: str) -> Path:
    return estate.directory / f"workstation-{workstation}"


def on(estate: LabEstate, workstation: str, *argv: str | Path) -> subprocess.Popen[str]:
    """``provisioner ARGV`` as an operator on another workstation runs it: its own store."""
    env = dict(os.environ) | {"PROVISIONER_STATE_DIR": str(store_of(estate, workstation))}
    return provisioner_child(*argv, env=env)


def finish(children: list[subprocess.Popen[str]]) -> list[str]:
    try:
        return [child.communicate(timeout=240)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate()


class Race:
    """Each host holds back the first gathers that ask for its lock until every contender's has
    arrived (or a minute has passed): the contenders meet at each host's lock at one moment."""

    def __init__(self, estate: LabEstate, contenders: int) -> None:
        self.contenders = contenders
        self._guard = threading.Lock()
        for name in estate.lab.hosts:
            self._wrap(estate, name)

    def _wrap(self, estate: LabEstate, name: str) -> None:
        server = estate.server(name)
        real = server.handler
        arrived = [0]
        everyone = threading.Event()

        def handler(command: str, arguments: list[str], stdin: bytes) -> Any:
            request = scripts.parse_payload(stdin)[1]
            if "steps" not in request and request.get("lock") and not request["lock"]["release"]:
                with self._guard:
                    arrived[0] += 1
                    contending = arrived[0] <= self.contenders
                    if arrived[0] == self.contenders:
                        everyone.set()
                if contending:
                    everyone.wait(60)
            return real(command, arguments, stdin)

        server.handler = handler


def batch_owners(estate: LabEstate) -> dict[str, set[str]]:
    """Per host, whose lock the batches that changed something carried."""
    owners: dict[str, set[str]] = {}
    for name, host in estate.lab.hosts.items():
        requests = [scripts.parse_payload(p)[1] for p in host.server.counters.stdin_payloads]
        owners[name] = {r["lock"]["owner"] for r in requests if r.get("steps")}
    return owners


def recorded_done(estate: LabEstate, workstations: list[str]) -> Counter[str]:
    """How often each change is recorded done, over every workstation's store."""
    done: Counter[str] = Counter()
    for workstation in workstations:
        database = store_of(estate, workstation) / "state.db"
        with StateStore.open(str(URL.create("sqlite", database=str(database)))) as store:
            for run in store.runs():
                for batch in store.batches(run.id):
                    done.update(c.address for c in batch.changes if c.status == "ok")
    return done


def without_restarts(addresses: set[str] | Counter[str]) -> set[str]:
    return {a for a in addresses if "/restart/" not in a}


def assert_one_winner_per_host_and_nothing_lost_or_doubled(
    estate: LabEstate,
    workstations: list[str],
    planned: set[str],
) -> dict[str, str]:
    """Exactly one workstation's batches changed each host, every change the lab shows done is
    recorded done once, in one store, and no lock is left held. Returns each host's winner (the
    owner its batches carried)."""
    winners: dict[str, str] = {}
    for host, owners in batch_owners(estate).items():
        assert len(owners) == 1, f"{host} changed by {owners}"
        [winners[host]] = owners
    done = recorded_done(estate, workstations)
    twice = [a for a, n in done.items() if n > 1 and "/restart/" not in a]
    assert twice == []  # (a restart runs again for each wave that needs it)
    still = without_restarts(estate.planned_addresses())
    assert without_restarts(done) == without_restarts(planned) - still  # none lost
    assert all(host.windows.state.lock is None for host in estate.lab.hosts.values())
    return winners


def test_truly_concurrent_applies_leave_one_winner_per_host(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    planned = estate.planned_addresses()
    workstations = ["alice", "bob", "carol"]
    Race(estate, len(workstations))
    children = [on(estate, w, "apply", estate.manifests, "--auto-approve") for w in workstations]
    outputs = finish(children)

    winners = assert_one_winner_per_host_and_nothing_lost_or_doubled(estate, workstations, planned)
    for child, output in zip(children, outputs, strict=True):
        won = {host for host, owner in winners.items() if owner.endswith(f" pid {child.pid}")}
        lost = set(winners) - won
        assert child.returncode == (1 if lost else 0), output
        for host in lost:
            assert f"{host} is locked by another apply: {winners[host]}, since " in output
        assert "Traceback" not in output
    assert estate.plan().code == 0  # every host converged, by its one winner


def test_a_second_apply_fails_fast_before_anything_changes_or_queues(lab_for: LabFor) -> None:
    """The first apply holds every host from its plan's gather to its verify, whatever store
    the others use: a second one is refused at once on each host, naming the first; a plan only
    notes it; a third queues with --wait and then finds nothing to do."""
    estate = lab_for(EXAMPLES / "client-tapi")
    arrived, release = hold_first_batch(estate.server("ws-0103"))
    first = on(estate, "alice", "apply", estate.manifests, "--auto-approve")
    try:
        assert arrived.wait(60), "the first apply never reached ws-0103"
        time.sleep(1)  # the first apply's other hosts have finished their batches meanwhile
        owner = f"pid {first.pid}, since "
        estate.reset_counters()
        started = time.monotonic()
        second = estate.apply()  # another workstation: the test's own store
        took = time.monotonic() - started
        sent = batch_owners(estate)
        plan = estate.plan()
        queued = on(estate, "carol", "apply", estate.manifests, "--auto-approve", "--wait", "120")
        time.sleep(3)
        assert queued.poll() is None  # it waits
    finally:
        release.set()
    [first_output, queued_output] = finish([first, queued])

    assert first.returncode == 0, first_output
    assert second.code == 1, second.output
    for host in ("tapi01", "ws-0101", "ws-0102", "ws-0103"):
        assert f"{host} is locked by another apply: " in second.out
        assert f"host {host} is locked by another apply: " in plan.out
    assert second.out.count(owner) == 4
    assert took < 30 and not any(sent.values())  # fast, and nothing sent but the gathers
    assert "Traceback" not in second.output
    assert plan.code == 2, plan.output  # the plan takes no lock: it notes the holder
    assert queued.returncode == 0, queued_output
    assert "No changes. The estate matches the manifests." in queued_output
    assert estate.plan().code == 0


def test_two_concurrent_rollouts_leave_one_winner_per_host(lab_for: LabFor, tmp_path: Path) -> None:
    estate = lab_for(three_servers(tmp_path / "manifests"))
    planned = estate.planned_addresses()
    workstations = ["alice", "bob"]
    Race(estate, len(workstations))
    argv = ["rollout", estate.manifests, "--auto-approve", "--waves", "1,100%"]
    children = [on(estate, w, *argv) for w in workstations]
    outputs = finish(children)

    winners = assert_one_winner_per_host_and_nothing_lost_or_doubled(estate, workstations, planned)
    assert all(owner.startswith("rollout 1 worker ") for owner in winners.values())
    for child, output in zip(children, outputs, strict=True):
        lost = {h for h, owner in winners.items() if not owner.endswith(f" pid {child.pid}")}
        assert child.returncode == (1 if lost else 0), output
        for host in lost:
            assert f"{host} is locked by another rollout: {winners[host]}, since " in output
        assert "Traceback" not in output


def test_an_apply_racing_a_rollout_leaves_one_winner_per_host(
    lab_for: LabFor, tmp_path: Path
) -> None:
    estate = lab_for(three_servers(tmp_path / "manifests"))
    planned = estate.planned_addresses()
    Race(estate, 2)
    apply = on(estate, "alice", "apply", estate.manifests, "--auto-approve")
    rollout = on(estate, "bob", "rollout", estate.manifests, "--auto-approve", "--waves", "100%")
    outputs = finish([apply, rollout])

    winners = assert_one_winner_per_host_and_nothing_lost_or_doubled(
        estate, ["alice", "bob"], planned
    )
    for host, owner in winners.items():
        if owner.startswith("rollout "):
            assert f"{host} is locked by another rollout: {owner}, since " in outputs[0]
        else:
            assert f"{host} is locked by another apply: {owner}, since " in outputs[1]
