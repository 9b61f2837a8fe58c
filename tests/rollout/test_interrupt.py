"""Ctrl-C during apply or rollout: the batch on its way finishes and is recorded, nothing more
is sent, the command exits 130, and the rollout resumes from there."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from tests.loop.test_winrm_budget import scripts_run
from tests.rollout.test_rollout_loop import state_of, three_servers
from tests.support.lab import EXAMPLES, LabEstate, LabFor, hold_first_batch, provisioner_child


def interrupt_while_held(estate: LabEstate, host: str, *argv: str | Path) -> tuple[int, str]:
    """Run ``provisioner ARGV`` in a child, Ctrl-C it while ``host`` holds its first batch,
    then let the batch run; returns the child's exit code and output."""
    arrived, release = hold_first_batch(estate.server(host))
    child = provisioner_child(*argv)
    try:
        assert arrived.wait(60), f"{host} never got a batch"
        child.send_signal(signal.SIGINT)
        threading.Timer(1.0, release.set).start()  # the interrupt lands while the host works
        output, _ = child.communicate(timeout=60)
    finally:
        release.set()
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, output


def test_ctrl_c_during_apply_finishes_the_batch_on_its_way_and_sends_nothing_more(
    lab_for: LabFor,
) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    code, output = interrupt_while_held(
        estate, "tapi01", "apply", estate.manifests, "--auto-approve", "--parallelism", "1"
    )
    assert code == 130, output
    assert "interrupted: the batches already sent finished and are recorded as run" in output
    assert "Traceback" not in output
    [run] = estate.runs("apply")
    assert run.status == "interrupted"
    with estate.store() as store:
        batches = store.batches(run.id)
    [sent] = [b for b in batches if b.status != "not-sent"]
    assert (sent.host, sent.status) == ("tapi01", "ok")  # it finished, and is recorded
    assert {c.status for c in sent.changes} == {"ok"}
    # the workstations' batches (and tapi01's second, for the lines) were never sent; every
    # host got its lock back with one small command
    assert scripts_run(estate) == {
        "tapi01": ["gather", "apply", "release"],
        "ws-0101": ["gather", "release"],
        "ws-0102": ["gather", "release"],
        "ws-0103": ["gather", "release"],
    }
    assert all(host.windows.state.lock is None for host in estate.lab.hosts.values())
    assert estate.apply().code == 0
    assert estate.plan().code == 0


def test_ctrl_c_during_a_rollout_leaves_it_resumable(lab_for: LabFor, tmp_path: Path) -> None:
    estate = lab_for(three_servers(tmp_path / "manifests"))
    code, output = interrupt_while_held(
        estate,
        "srv1",
        "rollout",
        estate.manifests,
        "--auto-approve",
        "--parallelism",
        "1",
        "--waves",
        "1,100%",
    )
    assert code == 130, output
    assert "resume with: provisioner rollout --resume 1" in output
    state = state_of(estate, 1)
    assert state.status == "interrupted"
    [done] = [u for u in state.waves[0].units if u.status == "done"]
    assert done.host == "server/srv1"
    assert {u.status for u in state.waves[0].units if u.host != "server/srv1"} == {"waiting"}
    assert {h: s.count("apply") for h, s in scripts_run(estate).items()} == {
        "srv1": 1,
        "srv2": 0,
        "srv3": 0,
    }
    assert all(host.windows.state.lock is None for host in estate.lab.hosts.values())

    resumed = estate.cli("rollout", "--resume", "1", "--auto-approve")
    assert resumed.code == 0, resumed.output
    assert state_of(estate, 1).status == "complete"
    assert estate.plan().code == 0


def held_by_a_rollout(estate: LabEstate, host: str) -> bool:
    lock = estate.windows(host).state.lock
    return lock is not None and lock.owner.startswith("rollout ")


def test_a_rollout_holds_its_hosts_between_waves(lab_for: LabFor) -> None:
    """An apply while a rollout pauses between waves fails fast naming the rollout; after the
    rollout is interrupted its hosts are free again."""
    estate = lab_for(EXAMPLES / "multi-tenant")
    child = provisioner_child(
        "rollout", estate.manifests, "--auto-approve", "--waves", "1,100%", "--pause", "60"
    )
    try:
        deadline = time.monotonic() + 60
        # the rollout holds crm01 (so its store and its record exist), then opens wave 1
        while not held_by_a_rollout(estate, "crm01") or state_of(estate).current_wave < 1:
            assert time.monotonic() < deadline and child.poll() is None, child.communicate()
            time.sleep(0.3)
        refused = estate.apply()
        child.send_signal(signal.SIGINT)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert refused.code == 1
    assert "crm01 is locked by another rollout: rollout 1 worker " in refused.out
    assert f"pid {child.pid}, since " in refused.out
    assert child.returncode == 130, output
    assert estate.apply().code == 0  # the interrupted rollout let its hosts go
