"""What plan and apply leave in the state store, against the lab: intents before batches, results
after, nothing secret, on SQLite and on PostgreSQL."""

from __future__ import annotations

import signal

from sqlalchemy import create_engine, select

from provisioner.state.store import state_url
from provisioner.state.tables import metadata
from tests.support.lab import (
    EXAMPLES,
    LabEstate,
    LabFor,
    hold_first_batch,
    provisioner_child,
    secret_hits,
)


def test_a_process_killed_while_a_host_works_leaves_what_it_sent(lab_for: LabFor) -> None:
    """Fails with the journal of before: it was written only once a host had answered."""
    estate = lab_for(EXAMPLES / "client-tapi")
    arrived, release = hold_first_batch(estate.server("tapi01"))
    child = provisioner_child("apply", estate.manifests, "--auto-approve")
    try:
        assert arrived.wait(60), "the apply never sent tapi01 its batch"
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        release.set()
        if child.poll() is None:
            child.kill()
    [run] = estate.runs("apply")
    assert run.status == "running"  # it never finished
    with estate.store() as store:
        sent = [b for b in store.batches(run.id) if b.host == "tapi01"]
    assert sent and sent[0].status == "sent"
    assert "server/tapi01/package" in {c.address for c in sent[0].changes}
    assert {c.status for c in sent[0].changes} == {"sent"}


def every_row(url: str) -> list[str]:
    engine = create_engine(state_url(url))
    with engine.connect() as conn:
        rows = [
            repr(tuple(row))
            for table in metadata.sorted_tables
            for row in conn.execute(select(table))
        ]
    engine.dispose()
    return rows


def test_no_secret_reaches_the_store_on_postgresql(lab_for: LabFor, postgres_url: str) -> None:
    estate: LabEstate = lab_for(EXAMPLES / "multi-tenant")
    estate.monkeypatch.setenv("PROVISIONER_STATE", postgres_url)
    assert estate.plan().code == 2
    assert estate.apply().code == 0
    # a changed CTI password travels sealed with the next apply, and a failing one is refused
    assert estate.lab.cti is not None
    estate.lab.cti.set_password("K7001", "k7001-rotated-Pa55word")
    estate.set_secret("K7001_CTI_PASSWORD", "k7001-rotated-Pa55word")
    assert estate.apply().code == 0
    estate.set_secret("K8450_CTI_PASSWORD", "wrong-K8450-pa55word")
    assert estate.apply().code == 1

    rows = every_row(postgres_url)
    assert (
        sum("tenant/k7001/tsp_instance" in row for row in rows) >= 2
    )  # the search means something
    stdin = estate.server("crm01").counters.stdin_payloads
    assert sum(payload.count(b'"sealed"') for payload in stdin) >= 2
    values = estate.lab.values | {
        "rotated": "k7001-rotated-Pa55word",
        "wrong": "wrong-K8450-pa55word",
    }
    assert secret_hits(values, {"the state store": rows}) == []
    assert not (estate.state_dir / "state.db").exists()  # everything went to PostgreSQL


def test_a_plan_is_recorded(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.plan().code == 2
    [run] = estate.runs("plan")
    assert run.status == "changes" and run.summary.startswith("Plan: ")
    with estate.store() as store:  # a plan sends no batch
        assert store.batches(run.id) == []
