"""Host locks in the state store, on SQLite and PostgreSQL; and against the lab: an apply holds
its hosts from its first gather to its verify, a second apply fails fast naming the holder or
queues with --wait, and truly concurrent applies leave exactly one winner per host."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from provisioner.state.locks import HostLocks
from provisioner.state.store import StateStore
from tests.loop.test_winrm_budget import scripts_run
from tests.support.lab import EXAMPLES, LabFor, hold_first_batch, provisioner_child

HOSTS = ["client/ws-0101", "server/tapi01"]


def test_a_lock_is_one_owners_until_released_or_expired(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        alice, bob = HostLocks(store, "alice@ws1 pid 1"), HostLocks(store, "bob@ws2 pid 2")
        assert alice.take(HOSTS) == {}
        assert alice.take(HOSTS) == {}  # its own: renewed
        held = bob.take([*HOSTS, "server/tapi02"])
        assert sorted(held) == HOSTS and bob.hosts == {"server/tapi02"}
        message = str(held["server/tapi01"])
        assert message.startswith("tapi01 is locked by another apply: alice@ws1 pid 1 since ")
        assert message.endswith("to queue behind it, add --wait SECONDS")
        alice.release()
        assert bob.take(HOSTS) == {}
        bob.release()

        # an owner that stopped without releasing: its locks lapse after their time
        crashed = HostLocks(store, "crashed@ws3 pid 3", ttl_s=1)
        assert crashed.take(HOSTS) == {}
        crashed.stop_renewing()
        assert HostLocks(store, "carol@ws4 pid 4").take(HOSTS) != {}
        time.sleep(1.2)
        carol = HostLocks(store, "carol@ws4 pid 4")
        assert carol.take(HOSTS) == {}
        carol.release()


def test_a_working_owners_locks_are_renewed_and_others_can_queue(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        alice = HostLocks(store, "alice@ws1 pid 1", ttl_s=1.5)
        assert alice.take(HOSTS) == {}
        time.sleep(2.0)  # past the first expiry: renewed meanwhile
        bob = HostLocks(store, "bob@ws2 pid 2")
        assert sorted(bob.take(HOSTS)) == HOSTS
        threading.Timer(1.0, alice.release).start()
        started = time.monotonic()
        assert bob.take(HOSTS, wait_s=20) == {}  # queued until alice let go
        assert 0.5 < time.monotonic() - started < 10
        bob.release()
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM host_locks")).scalar() == 0


def apply_in_child(manifests: Path, *extra: str) -> subprocess.Popen[str]:
    return provisioner_child("apply", manifests, "--auto-approve", *extra)


def test_the_lock_covers_the_whole_apply_and_a_second_fails_fast_or_waits(
    lab_for: LabFor,
) -> None:
    """Fails with the lock of before, which covered one batch: the second apply gathered while
    the first one worked, and was refused only if its batch arrived before the first's ended."""
    estate = lab_for(EXAMPLES / "client-tapi")
    arrived, release = hold_first_batch(estate.server("ws-0103"))
    first = apply_in_child(estate.manifests)
    try:
        assert arrived.wait(60), "the first apply never reached ws-0103"
        time.sleep(1)  # the first apply's other hosts have finished their batches meanwhile
        estate.reset_counters()
        second = estate.apply()
        read_by_second = scripts_run(estate)
        queued = apply_in_child(estate.manifests, "--wait", "120")
        time.sleep(1)
        assert queued.poll() is None  # it waits
    finally:
        release.set()
        output, _ = first.communicate(timeout=120)
    queued_output, _ = queued.communicate(timeout=120)

    assert first.returncode == 0, output
    assert second.code == 1, second.output
    for host in ("tapi01", "ws-0101", "ws-0102", "ws-0103"):
        assert f"{host} is locked by another apply: " in second.out
    assert f"pid {first.pid} since" in second.out
    assert "Traceback" not in second.output
    # the second apply failed fast: it did not even read a host the first one held
    assert not any(read_by_second.values())
    assert queued.returncode == 0, queued_output  # after the first: nothing left to do
    assert "No changes. The estate matches the manifests." in queued_output
    assert estate.plan().code == 0


def test_truly_concurrent_applies_leave_one_winner_per_host(lab_for: LabFor) -> None:
    """Three applies at once; the winner's first batch waits at the host until the two others
    have ended, so all three overlap."""
    estate = lab_for(EXAMPLES / "multi-tenant")
    children: list[subprocess.Popen[str]] = []
    server = estate.server("crm01")
    real = server.handler

    def handler(command: str, arguments: list[str], stdin: bytes) -> Any:
        if b'"steps"' in stdin:
            deadline = time.monotonic() + 120
            while sum(c.poll() is not None for c in children) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        return real(command, arguments, stdin)

    server.handler = handler
    children += [apply_in_child(estate.manifests) for _ in range(3)]
    outputs = [child.communicate(timeout=180)[0] for child in children]
    assert sorted(c.returncode for c in children) == [0, 1, 1], outputs
    for output, child in zip(outputs, children, strict=True):
        if child.returncode:
            assert "crm01 is locked by another apply: " in output
            assert "Traceback" not in output
    # one winner: each change carried out once, nothing lost
    [winner] = estate.runs("apply")
    assert winner.status == "complete"
    batches = [p for p in server.counters.stdin_payloads if b'"steps"' in p]
    assert len(batches) == 2  # the first batch, and the new instances' lines
    assert estate.plan().code == 0
