"""One state store for every plan, apply and rollout: SQLite by default, PostgreSQL for teams.

    store = StateStore.open(None)                # .provisioner/state.db, or $PROVISIONER_STATE
    run = store.begin_run("apply", manifests=["manifests/"], targets=[], owner="alice@ws17 pid 1")
    record = RunRecord(store, run)               # the runner's Recorder
    handle = record.intent(host, changes)        # BEFORE the batch is sent
    record.result(handle, host_result)           # then each change's result
    store.finish_run(run, "complete", "Apply complete: 12 of 12 changes done.")

Opening a store upgrades an older schema (Alembic migrations, ``migrations/``) and refuses a newer
one. Every write is one transaction, retried while the database is away (``PROVISIONER_STATE_
RETRY_S``, 30 s); a write that still fails goes to a file beside the default store instead
(nothing recorded is lost), no further batch is sent, and the command ends with one line saying
where the file is. Secrets never reach the store: changes are kept by address and outcome.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from provisioner.errors import Interrupted, ProvisionerError
from provisioner.plan.model import Change
from provisioner.planner import Host
from provisioner.runner import ChangeResult, HostResult
from provisioner.state.tables import SCHEMA_REVISION, batches, changes, runs

T = TypeVar("T")
STATE_VARIABLE = "PROVISIONER_STATE"
DIRECTORY_VARIABLE = "PROVISIONER_STATE_DIR"
RETRY_VARIABLE = "PROVISIONER_STATE_RETRY_S"
DEFAULT_RETRY_S = 30.0
MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATION_LOCK = 7_700_421  # pg_advisory_xact_lock key: one worker migrates at a time


class StateError(ProvisionerError):
    """The state store cannot be opened or used; the message says what to fix."""


class StateStoreGone(StateError):
    """The database went away and did not come back in time."""


class StateConflict(StateError):
    """A write lost a race with another writer (a key inserted meanwhile): read and try again."""


def state_directory() -> Path:
    return Path(os.environ.get(DIRECTORY_VARIABLE, ".provisioner"))


def state_url(option: str | None) -> URL:
    """The store's URL: ``--state``, else ``$PROVISIONER_STATE``, else SQLite in the state
    directory. A password belongs in ``PGPASSWORD`` or ``~/.pgpass``, or in the variable:
    command lines are visible to every user of the machine."""
    given = option or os.environ.get(STATE_VARIABLE)
    if not given:
        return URL.create("sqlite", database=str(state_directory() / "state.db"))
    try:
        url = make_url(given)
    except ArgumentError:
        raise StateError(
            "the state store URL is not a URL: use postgresql://USER@HOST[:PORT]/DATABASE or "
            "sqlite:///PATH"
        ) from None
    backend = url.get_backend_name()
    if backend == "postgres":
        url = url.set(drivername="postgresql")
    elif backend not in ("postgresql", "sqlite"):
        raise StateError(
            f"the state store URL names {backend!r}: use postgresql://USER@HOST[:PORT]/DATABASE "
            "or sqlite:///PATH"
        )
    if option and url.password:
        raise StateError(
            "--state holds a password, which every user of this machine can read on the command "
            f"line: put it in PGPASSWORD or ~/.pgpass, or give the URL in ${STATE_VARIABLE}"
        )
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql+psycopg")
    if not url.database:
        raise StateError("a SQLite state store needs a file: sqlite:///PATH")
    return url


def shown(url: URL) -> str:
    """The URL as messages show it: no password, the driver left out."""
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def reason(exc: BaseException) -> str:
    """The first line of what the database driver said, without the SQL."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return lines[0] if lines else type(cause).__name__


class StateStore:
    """The store behind one command; thread-safe (hosts are worked in parallel)."""

    def __init__(self, engine: Engine, url: URL, *, retry_s: float) -> None:
        self.engine = engine
        self.url = url
        self.retry_s = retry_s
        self.gone = ""  # why the database is away for good (then writes go to the fallback)
        self.fallback = state_directory() / f"unrecorded-{os.getpid()}-{int(time.time())}.jsonl"
        self._sqlite = url.get_backend_name() == "sqlite"
        self._write_lock = threading.Lock()  # SQLite: one writer at a time in this process

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, option: str | None = None, *, connections: int = 10) -> StateStore:
        """Open (and create or upgrade) the store; every failure is one line."""
        url = state_url(option)
        if url.get_backend_name() == "sqlite":
            engine = _sqlite_engine(url)
        else:
            engine = create_engine(
                url,
                pool_size=connections + 2,
                max_overflow=connections,  # a connection the server dropped fails once: retried
                connect_args={"connect_timeout": 10},
            )
        store = cls(engine, url, retry_s=float(os.environ.get(RETRY_VARIABLE, DEFAULT_RETRY_S)))
        try:
            store._upgrade()
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StateError(
                f"the state store {shown(url)} cannot be used: {reason(exc)} (check --state or "
                f"${STATE_VARIABLE})"
            ) from None
        except BaseException:
            engine.dispose()
            raise
        return store

    def _upgrade(self) -> None:
        with self.engine.begin() as conn:
            if not self._sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            current = _revision(conn)
            if current == SCHEMA_REVISION:
                return
            if current is not None and not _known(current):
                raise StateError(
                    f"the state store {shown(self.url)} has schema version {current}, newer than "
                    f"this provisioner knows ({SCHEMA_REVISION}): use a newer provisioner"
                )
            from alembic import command
            from alembic.config import Config

            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return shown(self.url)

    # --- reading and writing -----------------------------------------------------------------

    def clock(self, conn: Connection) -> datetime:
        """The store's time, UTC (the server's for PostgreSQL: leases compare across
        machines)."""
        if self._sqlite:
            return utcnow()
        now: datetime = conn.execute(text("SELECT timezone('utc', now())")).scalar_one()
        return now

    def read(self, function: Callable[[Connection], T]) -> T:
        return self._attempt(function, writing=False)

    def write(self, function: Callable[[Connection], T], *, keep: dict[str, Any]) -> T:
        """``function`` in one transaction, retried while the database is away. If it stays
        away, ``keep`` (plain JSON: what the write recorded) goes to the fallback file, and
        :class:`StateStoreGone` is raised."""
        if not self.gone:
            try:
                return self._attempt(function, writing=True)
            except StateStoreGone:
                pass
        self._keep(keep)
        raise self._gone_error()

    def _attempt(self, function: Callable[[Connection], T], *, writing: bool) -> T:
        deadline = time.monotonic() + self.retry_s
        pause = 0.2
        while True:
            try:
                with self._serialised(writing), self.engine.begin() as conn:
                    return function(conn)
            except DBAPIError as exc:
                if isinstance(exc, IntegrityError):
                    raise StateConflict(f"the state store {self.where}: {reason(exc)}") from None
                if not _transient(exc):
                    raise StateError(f"the state store {self.where}: {reason(exc)}") from None
                if time.monotonic() + pause > deadline:
                    self.gone = (
                        f"the state store {self.where} went away ({reason(exc)}) and did not "
                        f"come back within {self.retry_s:.0f} s"
                    )
                    raise StateStoreGone(self.gone) from None
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _serialised(self, writing: bool) -> AbstractContextManager[object]:
        """SQLite takes one writer at a time: this process's writers queue here."""
        return self._write_lock if writing and self._sqlite else nullcontext()

    def _keep(self, record: dict[str, Any]) -> None:
        self.fallback.parent.mkdir(parents=True, exist_ok=True)
        with self.fallback.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record | {"time": utcnow().isoformat()}) + "\n")

    def ensure_recorded(self) -> None:
        """Raise, as one line, if something could not be written to the store."""
        if self.gone:
            raise self._gone_error()

    def _gone_error(self) -> StateStoreGone:
        return StateStoreGone(
            f"{self.gone}: what could not be recorded there is kept in {self.fallback}"
        )

    # --- runs ----------------------------------------------------------------------------------

    def begin_run(
        self, kind: str, *, manifests: Sequence[str | Path], targets: Sequence[str], owner: str
    ) -> int:
        started = utcnow()
        values: dict[str, object] = {
            "kind": kind,
            "status": "running",
            "owner": owner,
            "manifests": json.dumps([str(p) for p in manifests]),
            "targets": json.dumps(list(targets)),
            "summary": "",
        }
        return self.write(
            lambda c: _inserted(c.execute(insert(runs).values({**values, "started_at": started}))),
            keep={"run": values | {"started_at": started.isoformat()}},
        )

    def finish_run(self, run_id: int, status: str, summary: str) -> None:
        values = {"status": status, "summary": summary, "finished_at": utcnow()}
        self.write(
            lambda c: c.execute(update(runs).where(runs.c.id == run_id).values(values)),
            keep={"run_id": run_id, "status": status, "summary": summary},
        )

    def run(self, run_id: int) -> RunRow | None:
        found = self.runs(ids=[run_id])
        return found[0] if found else None

    def runs(self, *, kind: str | None = None, ids: Sequence[int] | None = None) -> list[RunRow]:
        query = select(runs).order_by(runs.c.id)
        if kind is not None:
            query = query.where(runs.c.kind == kind)
        if ids is not None:
            query = query.where(runs.c.id.in_(list(ids)))
        rows = self.read(lambda c: c.execute(query).mappings().all())
        return [RunRow.of(row) for row in rows]

    def batches(self, run_id: int) -> list[BatchRow]:
        """Every batch of a run with its changes, in the order they were sent."""

        def query(conn: Connection) -> list[BatchRow]:
            found = {
                row["id"]: BatchRow.of(row)
                for row in conn.execute(
                    select(batches).where(batches.c.run_id == run_id).order_by(batches.c.id)
                ).mappings()
            }
            for row in conn.execute(
                select(changes).where(changes.c.run_id == run_id).order_by(changes.c.id)
            ).mappings():
                found[row["batch_id"]].changes.append(ChangeRow.of(row))
            return list(found.values())

        return self.read(query)


@dataclass
class RunRow:
    id: int
    kind: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    owner: str
    manifests: list[str]
    targets: list[str]
    summary: str

    @classmethod
    def of(cls, row: Any) -> RunRow:
        data = dict(row)
        data["manifests"] = json.loads(data["manifests"])
        data["targets"] = json.loads(data["targets"])
        return cls(**data)


@dataclass
class ChangeRow:
    address: str
    action: str
    kind: str
    tenant: str | None
    status: str
    message: str

    @classmethod
    def of(cls, row: Any) -> ChangeRow:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass
class BatchRow:
    id: int
    host: str
    wave: int | None
    worker: str
    status: str
    message: str
    sent_at: datetime
    finished_at: datetime | None
    changes: list[ChangeRow] = field(default_factory=list)

    @classmethod
    def of(cls, row: Any) -> BatchRow:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__ if name != "changes"})


class RunRecord:
    """The runner's :class:`~provisioner.runner.Recorder` for one run (and rollout wave)."""

    def __init__(
        self, store: StateStore, run_id: int, *, wave: int | None = None, worker: str = ""
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.wave = wave
        self.worker = worker

    def intent(self, host: Host, planned: Sequence[Change], *, status: str = "sent") -> object:
        """The batch and its changes as ``sent``, before it goes: a process killed while the
        host works leaves this, not nothing."""
        sent = utcnow()
        batch: dict[str, object] = {
            "run_id": self.run_id,
            "host": host.name,
            "wave": self.wave,
            "worker": self.worker,
            "status": status,
            "message": "",
        }
        rows = [
            {
                "run_id": self.run_id,
                "address": c.address,
                "action": c.action.value,
                "kind": c.kind,
                "tenant": c.tenant,
                "status": status,
                "message": "",
            }
            for c in planned
        ]

        def write(conn: Connection) -> int:
            batch_id = _inserted(conn.execute(insert(batches).values({**batch, "sent_at": sent})))
            if rows:  # executemany: pipelined by psycopg, one prepared statement in SQLite
                conn.execute(insert(changes), [row | {"batch_id": batch_id} for row in rows])
            return batch_id

        keep = {"intent": batch | {"sent_at": sent.isoformat()}, "changes": rows}
        return self.store.write(write, keep=keep)

    def result(self, handle: object, result: HostResult) -> None:
        """Each change's result; if the store is away for good they go to its fallback file
        (nothing is lost) and later intents refuse to send anything."""
        assert isinstance(handle, int)
        outcomes: dict[tuple[str, str], list[str]] = {}  # (status, message) → addresses
        for r in result.changes:
            outcomes.setdefault((r.status, r.message), []).append(r.change.address)
        finished = utcnow()

        def write(conn: Connection) -> None:
            for (status, message), addresses in outcomes.items():  # mostly one: all "ok"
                conn.execute(
                    update(changes)
                    .where(changes.c.batch_id == handle, changes.c.address.in_(addresses))
                    .values(status=status, message=message)
                )
            conn.execute(
                update(batches)
                .where(batches.c.id == handle)
                .values(status=result.status, message=result.message, finished_at=finished)
            )

        keep = {
            "result": {"batch": handle, "host": result.host.name, "status": result.status,
                       "message": result.message, "finished_at": finished.isoformat()},
            "changes": [
                {"status": status, "message": message, "addresses": addresses}
                for (status, message), addresses in outcomes.items()
            ],
        }  # fmt: skip
        with suppress(StateStoreGone):  # kept in the fallback file; the command ends saying so
            self.store.write(write, keep=keep)

    def settle(self, host: Host, pending: set[str]) -> int:
        """Batches another worker of this run sent to the host but never recorded the outcome
        of (it stopped): their changes are ``ok`` when a fresh plan no longer has them, else
        ``unknown``. Returns how many changes were settled."""

        def write(conn: Connection) -> int:
            orphans = select(batches.c.id).where(
                batches.c.run_id == self.run_id,
                batches.c.host == host.name,
                batches.c.status == "sent",
                batches.c.worker != self.worker,
            )
            rows = conn.execute(
                select(changes.c.id, changes.c.address, batches.c.worker)
                .join(batches, batches.c.id == changes.c.batch_id)
                .where(changes.c.batch_id.in_(orphans), changes.c.status == "sent")
            ).all()
            for row_id, address, sender in rows:
                done = address not in pending
                why = (
                    f"sent by {sender}, which stopped before it recorded the outcome; "
                    f"{'verified done' if done else 'still to do'} by {self.worker}"
                )
                conn.execute(
                    update(changes)
                    .where(changes.c.id == row_id)
                    .values(status="ok" if done else "unknown", message=why)
                )
            conn.execute(
                update(batches)
                .where(batches.c.id.in_(orphans))
                .values(status="settled", message=f"settled by {self.worker}", finished_at=utcnow())
            )
            return len(rows)

        return self.store.write(write, keep={"settle": host.name, "run_id": self.run_id})

    def unsent(self, host: Host, results: Sequence[ChangeResult], why: str) -> None:
        """Changes planned for a host but never sent, as a batch of status ``not-sent``."""
        handle = self.intent(host, [r.change for r in results], status="not-sent")
        self.result(handle, HostResult(host, "not-sent", why, list(results)))


def _inserted(result: CursorResult[Any]) -> int:
    """The primary key an INSERT of one row gave it."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _sqlite_engine(url: URL) -> Engine:
    path = Path(str(url.database))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        raise StateError(
            f"the state store {path} cannot be written ({exc.strerror}): set "
            f"{DIRECTORY_VARIABLE} or --state; nothing was changed"
        ) from None
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _: Any) -> None:
        dbapi.isolation_level = None  # transactions begin below, as IMMEDIATE
        cursor = dbapi.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # a writer that waits for the lock instead of failing at its first write
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _known(revision: str) -> bool:
    versions = (MIGRATIONS / "versions").glob("*.py")
    return any(path.name.startswith(f"{revision}_") for path in versions)


def _transient(exc: DBAPIError) -> bool:
    """The connection broke or could not be made, or the database is busy: worth a retry, as
    opposed to a statement the database refused."""
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


@contextmanager
def recorded_run(
    store: StateStore,
    kind: str,
    *,
    manifests: Sequence[str | Path],
    targets: Sequence[str],
    owner: str,
) -> Iterator[int]:
    """A run in the store for the duration of a command: ``running`` until the command calls
    :meth:`StateStore.finish_run`; ``failed`` or ``interrupted`` if it ends by an exception."""
    run_id = store.begin_run(kind, manifests=manifests, targets=targets, owner=owner)
    try:
        yield run_id
    except (KeyboardInterrupt, Interrupted):
        _finish_unfinished(store, run_id, "interrupted", "interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        _finish_unfinished(store, run_id, "failed", str(exc))
        raise


def _finish_unfinished(store: StateStore, run_id: int, status: str, summary: str) -> None:
    with suppress(StateError):
        found = store.run(run_id)
        if found is not None and found.status == "running":
            store.finish_run(run_id, status, summary)
