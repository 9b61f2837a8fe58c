"""The state store on SQLite and on a real PostgreSQL server: the same suite on both."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from provisioner.lab.postgres import PostgresServer
from provisioner.plan.model import Action, Change
from provisioner.planner import Host
from provisioner.runner import ChangeResult, HostResult
from provisioner.state.store import (
    MIGRATIONS,
    RunRecord,
    StateError,
    StateStore,
    StateStoreGone,
    recorded_run,
)
from provisioner.state.store import state_url as resolve
from provisioner.state.tables import SCHEMA_REVISION, metadata

TAPI01 = Host("server/tapi01", "tapi01", "server")


def change(n: int, tenant: str | None = "k1") -> Change:
    return Change(
        f"tenant/{tenant}/line_assignment/NFON\\U{n}", Action.UPDATE, "x", "tapi01", tenant
    )


def test_a_new_store_has_the_newest_schema_and_the_migrations_make_exactly_the_tables(
    state_url: str,
) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_REVISION
    with StateStore.open(state_url) as store, store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == SCHEMA_REVISION


def test_intents_then_results_one_row_per_change(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        run = store.begin_run("apply", manifests=["m/"], targets=["tenant=k1"], owner="me")
        record = RunRecord(store, run, worker="me")
        planned = [change(1), change(2)]
        handle = record.intent(TAPI01, planned)
        [sent] = store.batches(run)
        assert (sent.status, [c.status for c in sent.changes]) == ("sent", ["sent", "sent"])

        record.result(
            handle,
            HostResult(
                TAPI01,
                "failed",
                "step 2 failed",
                [ChangeResult(planned[0], "ok"), ChangeResult(planned[1], "failed", "no line")],
            ),
        )
        record.unsent(TAPI01, [ChangeResult(change(3), "not-run")], "the batch before failed")
        store.finish_run(run, "incomplete", "Apply incomplete: 1 of 3 changes done.")

        [found] = store.runs(kind="apply")
        assert (found.status, found.targets, found.manifests) == (
            "incomplete",
            ["tenant=k1"],
            ["m/"],
        )
        first, second = store.batches(run)
        assert (first.status, first.message) == ("failed", "step 2 failed")
        assert [(c.status, c.message) for c in first.changes] == [("ok", ""), ("failed", "no line")]
        assert second.status == "not-sent"
        assert [c.status for c in second.changes] == ["not-run"]


def test_a_run_ended_by_an_error_is_failed_not_running(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        with (
            pytest.raises(RuntimeError),
            recorded_run(store, "apply", manifests=[], targets=[], owner="me"),
        ):
            raise RuntimeError("boom")
        [found] = store.runs()
        assert (found.status, found.summary) == ("failed", "boom")


def test_hosts_record_in_parallel(state_url: str) -> None:
    with StateStore.open(state_url, connections=8) as store:
        run = store.begin_run("apply", manifests=[], targets=[], owner="me")
        record = RunRecord(store, run)

        def host(n: int) -> None:
            name = f"h{n}"
            planned = [change(i, f"t{n}") for i in range(20)]
            handle = record.intent(Host(f"server/{name}", name, "server"), planned)
            record.result(
                handle, HostResult(TAPI01, "ok", "", [ChangeResult(c, "ok") for c in planned])
            )

        threads = [threading.Thread(target=host, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batches = store.batches(run)
        assert len(batches) == 8
        assert {c.status for b in batches for c in b.changes} == {"ok"}
        assert sum(len(b.changes) for b in batches) == 160


def test_a_schema_from_a_newer_version_is_refused_in_one_line(state_url: str) -> None:
    with StateStore.open(state_url) as store:
        store.begin_run("plan", manifests=[], targets=[], owner="me")
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0042'"))
    with pytest.raises(StateError) as refused:
        StateStore.open(state_url)
    message = str(refused.value)
    assert f"schema version 0042, newer than this provisioner knows ({SCHEMA_REVISION})" in message
    assert "\n" not in message
    engine = create_engine(resolve(state_url))
    with engine.connect() as conn:  # nothing was changed or lost
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0042"
    engine.dispose()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("not a url", "the state store URL is not a URL: use postgresql://"),
        ("mysql://db/prov", "the state store URL names 'mysql': use postgresql://"),
        ("sqlite://", "a SQLite state store needs a file"),
    ],
)
def test_bad_urls_are_one_line(given: str, expected: str) -> None:
    with pytest.raises(StateError) as refused:
        StateStore.open(given)
    assert str(refused.value).startswith(expected)
    assert "\n" not in str(refused.value)


def test_a_password_on_the_command_line_is_refused_but_not_in_the_variable(
    monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer
) -> None:
    url = postgres.url().replace("postgres@", "postgres:hunter2-Secret@")
    with pytest.raises(StateError) as refused:
        StateStore.open(url)
    assert "PGPASSWORD" in str(refused.value) and "hunter2" not in str(refused.value)
    monkeypatch.setenv("PROVISIONER_STATE", url)
    with StateStore.open(None) as store:  # trust authentication ignores the password
        assert "hunter2" not in store.where and "***" in store.where


def test_a_server_that_is_not_there_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer
) -> None:
    from provisioner.lab.postgres import free_port

    monkeypatch.setenv("PROVISIONER_STATE", f"postgresql://bob:Pa55-word@127.0.0.1:{free_port()}/x")
    with pytest.raises(StateError) as refused:
        StateStore.open(None)
    message = str(refused.value)
    assert message.startswith("the state store postgresql://bob:***@127.0.0.1:")
    assert "cannot be used: " in message and "Pa55-word" not in message and "\n" not in message


def test_an_unwritable_sqlite_directory_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StateError) as refused:
        StateStore.open(f"sqlite:///{blocked}/state.db")
    assert "cannot be written" in str(refused.value)


def test_a_database_that_goes_away_loses_nothing(
    postgres: PostgresServer, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "local"))
    monkeypatch.setenv("PROVISIONER_STATE_RETRY_S", "2")
    with StateStore.open(postgres_url) as store:
        run = store.begin_run("apply", manifests=[], targets=[], owner="me")
        record = RunRecord(store, run)
        planned = [change(1), change(2)]
        handle = record.intent(TAPI01, planned)
        postgres.stop()
        try:
            # the batch was sent: its result cannot be written, and goes to the fallback file
            record.result(
                handle, HostResult(TAPI01, "ok", "", [ChangeResult(c, "ok") for c in planned])
            )
            with pytest.raises(StateStoreGone) as gone:
                record.intent(TAPI01, [change(3)])  # nothing more is sent
            kept = store.fallback.read_text()
        finally:
            postgres.resume()
        message = str(gone.value)
        assert "went away" in message and str(store.fallback) in message and "\n" not in message
        assert "tenant/k1/line_assignment/NFON\\\\U2" in kept and '"status": "ok"' in kept
        assert "U3" in kept
    with StateStore.open(postgres_url) as store:
        [batch] = store.batches(run)  # what was recorded before is all there
        assert [c.status for c in batch.changes] == ["sent", "sent"]


def test_a_database_back_within_the_retry_time_gets_every_write(
    postgres: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_STATE_RETRY_S", "30")
    with StateStore.open(postgres_url) as store:
        run = store.begin_run("apply", manifests=[], targets=[], owner="me")
        postgres.stop()
        threading.Timer(1.5, postgres.resume).start()
        RunRecord(store, run).intent(TAPI01, [change(1)])  # waits for the server
        [batch] = store.batches(run)
        assert batch.status == "sent" and not store.gone
