"""A rollout's shared state: its waves, its tenants and the units workers claim.

A unit is one host in one wave. Any number of workers, on any number of machines, drive one
rollout through the store alone: each claims a waiting unit with ``SELECT ... FOR UPDATE SKIP
LOCKED`` (SQLite, one writer at a time, needs no such clause) under a lease it renews; a unit
whose lease ran out is claimed again by another worker. When a wave's units are all finished,
whichever worker notices it moves the rollout on, under a lock on the rollout's row::

    rollouts = Rollouts(store)
    rollouts.create(run_id, settings, waves=[[("k1", "tapi01")], ...], first=["server/tapi01"])
    unit = rollouts.claim(run_id, worker="alice@ws17 pid 1", lease_s=60)   # or None
    rollouts.finish(unit, "done", "", tenants={"k1": ("done", "")}, threshold=Amount(0, False))
    rollouts.advance(run_id)   # "running", "opened", "confirm", "halted" or "complete"
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, RowMapping, and_, func, insert, or_, select, update

from provisioner.rollout.waves import Amount, exceeded, parse_threshold
from provisioner.state.store import StateError, StateStore
from provisioner.state.tables import rollout_tenants, rollout_units, rollout_waves, rollouts, runs


@dataclass(frozen=True)
class Settings:
    waves: str  # as given, for the report
    max_failures: str
    pause_s: float = 0.0
    confirm_each_wave: bool = False
    lease_s: float = 60.0

    @property
    def threshold(self) -> Amount:
        return parse_threshold(self.max_failures)


@dataclass(frozen=True)
class Unit:
    id: int
    run_id: int
    wave: int
    host: str  # a host key: server/tapi01
    taken_over_from: str | None = None  # a worker whose lease ran out


@dataclass
class TenantRow:
    tenant: str
    server: str
    wave: int
    status: str  # waiting | done | failed
    message: str
    finished_at: datetime | None


@dataclass
class UnitRow:
    wave: int
    host: str
    status: str  # waiting | claimed | done | failed
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    message: str


@dataclass
class WaveRow:
    number: int
    status: str  # waiting | running | confirm | halting | halted | done
    opens_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    message: str
    tenants: list[TenantRow] = field(default_factory=list)
    units: list[UnitRow] = field(default_factory=list)


@dataclass
class RolloutState:
    """Everything a report or a status line needs, read in one transaction."""

    run_id: int
    status: str  # running | halted | complete | interrupted
    summary: str
    owner: str
    started_at: datetime
    finished_at: datetime | None
    manifests: list[str]
    targets: list[str]
    settings: Settings
    current_wave: int
    waves: list[WaveRow]

    @property
    def tenants(self) -> list[TenantRow]:
        return [t for wave in self.waves for t in wave.tenants]


class Rollouts:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    # --- starting ------------------------------------------------------------------------------

    def create(
        self,
        run_id: int,
        settings: Settings,
        *,
        waves: Sequence[Sequence[tuple[str, str]]],
        first: Sequence[str],
    ) -> None:
        """The rollout's waves: 0 for the hosts' own resources (``first``: host keys), then one
        per list of (tenant, server). Wave 0 opens at once."""

        def write(conn: Connection) -> None:
            now = self.store.clock(conn)
            conn.execute(
                insert(rollouts).values(
                    run_id=run_id,
                    waves=settings.waves,
                    max_failures=settings.max_failures,
                    pause_s=settings.pause_s,
                    confirm_each_wave=settings.confirm_each_wave,
                    lease_s=settings.lease_s,
                    current_wave=0,
                )
            )
            conn.execute(
                insert(rollout_waves),
                [
                    {"run_id": run_id, "number": n, "status": "running" if n == 0 else "waiting",
                     "opens_at": now if n == 0 else None, "started_at": now if n == 0 else None,
                     "message": ""}
                    for n in range(len(waves) + 1)
                ],
            )  # fmt: skip
            tenants = [
                {"run_id": run_id, "tenant": t, "server": s, "wave": n, "status": "waiting",
                 "message": ""}
                for n, wave in enumerate(waves, start=1)
                for t, s in wave
            ]  # fmt: skip
            if tenants:
                conn.execute(insert(rollout_tenants), tenants)
            _add_units(conn, run_id, 0, first)

        self.store.write(write, keep={"rollout": run_id, "created": True})

    def resume(self, run_id: int) -> RolloutState:
        """A halted or interrupted rollout runs again from its current wave: the units that
        failed or never started wait again (workers re-plan them from fresh facts)."""

        def write(conn: Connection) -> None:
            state = _lock(conn, run_id)
            if state["status"] == "complete":
                raise StateError(f"rollout {run_id} is complete: there is nothing to resume")
            wave = state["current_wave"]
            now = self.store.clock(conn)
            _set_run(conn, run_id, "running", "", now)
            conn.execute(
                update(rollout_waves)
                .where(rollout_waves.c.run_id == run_id, rollout_waves.c.number == wave)
                .where(rollout_waves.c.status.in_(("halting", "halted", "waiting")))
                .values(status="running", opens_at=now, finished_at=None, message="")
            )
            conn.execute(
                update(rollout_units)
                .where(rollout_units.c.run_id == run_id, rollout_units.c.wave == wave)
                .where(rollout_units.c.status == "failed")
                .values(status="waiting", worker=None, lease_until=None, message="")
            )
            conn.execute(
                update(rollout_tenants)
                .where(rollout_tenants.c.run_id == run_id, rollout_tenants.c.wave == wave)
                .where(rollout_tenants.c.status == "failed")
                .values(status="waiting", message="")
            )

        self.store.write(write, keep={"rollout": run_id, "resumed": True})
        return self.load(run_id)

    # --- working -------------------------------------------------------------------------------

    def claim(self, run_id: int, worker: str, lease_s: float) -> Unit | None:
        """A unit of the open wave nobody holds (or whose holder's lease ran out), or None."""

        def write(conn: Connection) -> Unit | None:
            now = self.store.clock(conn)
            wave = conn.execute(
                select(rollout_waves.c.number)
                .join(rollouts, and_(rollouts.c.run_id == rollout_waves.c.run_id,
                                     rollouts.c.current_wave == rollout_waves.c.number))
                .where(rollout_waves.c.run_id == run_id, rollout_waves.c.status == "running")
                .where(or_(rollout_waves.c.opens_at.is_(None), rollout_waves.c.opens_at <= now))
            ).scalar()  # fmt: skip
            if wave is None:
                return None
            row = (
                conn.execute(
                    select(rollout_units)
                    .where(rollout_units.c.run_id == run_id, rollout_units.c.wave == wave)
                    .where(
                        or_(
                            rollout_units.c.status == "waiting",
                            and_(
                                rollout_units.c.status == "claimed",
                                rollout_units.c.lease_until < now,
                            ),
                        )
                    )
                    .order_by(rollout_units.c.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            conn.execute(
                update(rollout_units)
                .where(rollout_units.c.id == row["id"])
                .values(status="claimed", worker=worker, started_at=now,
                        lease_until=now + timedelta(seconds=lease_s))
            )  # fmt: skip
            previous = row["worker"] if row["status"] == "claimed" else None
            return Unit(row["id"], run_id, wave, row["host"], previous)

        return self.store.write(write, keep={"rollout": run_id, "claim": worker})

    def renew(self, unit: Unit, worker: str, lease_s: float) -> bool:
        """Extend this worker's lease; False when another worker has taken the unit over."""

        def write(conn: Connection) -> bool:
            now = self.store.clock(conn)
            result = conn.execute(
                update(rollout_units)
                .where(rollout_units.c.id == unit.id, rollout_units.c.worker == worker)
                .where(rollout_units.c.status == "claimed")
                .values(lease_until=now + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1

        return self.store.write(write, keep={"rollout": unit.run_id, "renew": unit.id})

    def release(self, unit: Unit, worker: str) -> None:
        """Give a claimed unit back untouched (Ctrl-C before its batch was sent)."""
        self.store.write(
            lambda conn: conn.execute(
                update(rollout_units)
                .where(rollout_units.c.id == unit.id, rollout_units.c.worker == worker)
                .where(rollout_units.c.status == "claimed")
                .values(status="waiting", worker=None, lease_until=None)
            ),
            keep={"rollout": unit.run_id, "released": unit.id},
        )

    def tenants_of(self, unit: Unit) -> list[str]:
        """The tenants this unit works: those of its wave on its server."""
        if unit.wave == 0 or not unit.host.startswith("server/"):
            return []
        server = unit.host.split("/", 1)[1]
        query = (
            select(rollout_tenants.c.tenant)
            .where(rollout_tenants.c.run_id == unit.run_id, rollout_tenants.c.wave == unit.wave)
            .where(rollout_tenants.c.server == server)
            .order_by(rollout_tenants.c.tenant)
        )
        return list(self.store.read(lambda conn: conn.execute(query).scalars().all()))

    def later_waves_on(self, unit: Unit) -> bool:
        """Whether a later wave of the rollout works this unit's host (tenants on it)."""
        server = unit.host.split("/", 1)[1]
        query = (
            select(rollout_tenants.c.tenant)
            .where(rollout_tenants.c.run_id == unit.run_id, rollout_tenants.c.wave > unit.wave)
            .where(rollout_tenants.c.server == server)
            .limit(1)
        )
        if not unit.host.startswith("server/"):
            return False
        return self.store.read(lambda conn: conn.execute(query).first()) is not None

    def last_unit(self, run_id: int, host: str) -> tuple[str | None, int] | None:
        """(worker, unit id) of the last finished unit on a host, or None."""
        query = (
            select(rollout_units.c.worker, rollout_units.c.id)
            .where(rollout_units.c.run_id == run_id, rollout_units.c.host == host)
            .where(rollout_units.c.status.in_(("done", "failed")))
            .order_by(rollout_units.c.finished_at.desc(), rollout_units.c.id.desc())
            .limit(1)
        )
        row = self.store.read(lambda conn: conn.execute(query).first())
        return (row[0], row[1]) if row is not None else None

    def finish(
        self,
        unit: Unit,
        worker: str,
        status: str,
        message: str,
        *,
        tenants: Mapping[str, tuple[str, str]],
        threshold: Amount,
    ) -> bool:
        """Record a unit's outcome and its tenants'; when the wave's failures pass the
        threshold, the wave starts no further unit. False if the unit was taken over."""

        def write(conn: Connection) -> bool:
            now = self.store.clock(conn)
            mine = conn.execute(
                update(rollout_units)
                .where(rollout_units.c.id == unit.id, rollout_units.c.worker == worker)
                .values(status=status, message=message, finished_at=now, lease_until=None)
            ).rowcount
            if not mine:
                return False
            for tenant, (outcome, why) in tenants.items():
                conn.execute(
                    update(rollout_tenants)
                    .where(rollout_tenants.c.run_id == unit.run_id)
                    .where(rollout_tenants.c.tenant == tenant)
                    .values(status=outcome, message=why, finished_at=now)
                )
            failed, total = _failures(conn, unit.run_id, unit.wave)
            noun = "hosts" if unit.wave == 0 else "tenants"
            if exceeded(threshold, failed, total):
                conn.execute(
                    update(rollout_waves)
                    .where(rollout_waves.c.run_id == unit.run_id)
                    .where(rollout_waves.c.number == unit.wave)
                    .where(rollout_waves.c.status == "running")
                    .values(status="halting", message=f"{failed} of {total} {noun} failed")
                )
            return True

        keep = {"rollout": unit.run_id, "unit": unit.id, "status": status, "message": message,
                "tenants": {t: list(v) for t, v in tenants.items()}}  # fmt: skip
        return self.store.write(write, keep=keep)

    def advance(self, run_id: int) -> str:
        """Move the rollout on if its wave is over: halt it, open the next wave, or complete it.
        Returns the rollout's status, ``opened`` when the next wave has just opened, or
        ``confirm`` while a wave waits for a yes."""

        def write(conn: Connection) -> str:
            state = _lock(conn, run_id)
            if state["status"] != "running":
                return str(state["status"])
            number = state["current_wave"]
            wave = _wave(conn, run_id, number)
            assert wave is not None
            if wave["status"] == "confirm":
                return "confirm"
            now = self.store.clock(conn)
            units = conn.execute(
                select(rollout_units.c.status, rollout_units.c.lease_until)
                .where(rollout_units.c.run_id == run_id, rollout_units.c.wave == number)
            ).all()  # fmt: skip
            if any(s == "claimed" and lease >= now for s, lease in units):
                return "running"  # in flight
            if wave["status"] == "running" and any(s in ("waiting", "claimed") for s, _ in units):
                return "running"  # to be claimed (again, where a worker's lease ran out)
            if wave["status"] == "halting":
                _set_wave(conn, run_id, number, status="halted", finished_at=now)
                summary = (
                    f"in wave {number}: {wave['message']}, more than --max-failures "
                    f"{state['max_failures']} allows"
                )
                _set_run(conn, run_id, "halted", summary, now)
                return "halted"
            _set_wave(conn, run_id, number, status="done", finished_at=now)
            following = _wave(conn, run_id, number + 1)
            if following is None:
                _set_run(conn, run_id, "complete", "", now)
                return "complete"
            opens = now + timedelta(seconds=float(state["pause_s"]))
            status = "confirm" if state["confirm_each_wave"] else "running"
            _set_wave(conn, run_id, number + 1, status=status, opens_at=opens, started_at=opens)
            conn.execute(
                update(rollouts).where(rollouts.c.run_id == run_id).values(current_wave=number + 1)
            )
            servers = conn.execute(
                select(rollout_tenants.c.server)
                .where(rollout_tenants.c.run_id == run_id, rollout_tenants.c.wave == number + 1)
                .distinct()
            ).scalars().all()  # fmt: skip
            _add_units(conn, run_id, number + 1, [f"server/{s}" for s in sorted(servers)])
            return "opened" if status == "running" else status

        return self.store.write(write, keep={"rollout": run_id, "advance": True})

    def confirm(self, run_id: int, go: bool) -> None:
        """The operator's answer for a wave waiting for a yes: open it, or halt the rollout."""

        def write(conn: Connection) -> None:
            state = _lock(conn, run_id)
            number = state["current_wave"]
            now = self.store.clock(conn)
            if go:
                _set_wave(conn, run_id, number, status="running", opens_at=now, started_at=now)
            else:
                _set_wave(conn, run_id, number, status="waiting", message="not confirmed")
                _set_run(conn, run_id, "halted", f"before wave {number}: not confirmed", now)

        self.store.write(write, keep={"rollout": run_id, "confirm": go})

    def interrupt(self, run_id: int, summary: str) -> None:
        """Ctrl-C: the rollout stops where it is, resumable."""

        def write(conn: Connection) -> None:
            state = _lock(conn, run_id)
            if state["status"] == "running":
                _set_run(conn, run_id, "interrupted", summary, self.store.clock(conn))

        self.store.write(write, keep={"rollout": run_id, "interrupted": summary})

    # --- reading -------------------------------------------------------------------------------

    def latest(self) -> int | None:
        query = select(func.max(rollouts.c.run_id))
        found = self.store.read(lambda conn: conn.execute(query).scalar())
        return int(found) if found is not None else None

    def load(self, run_id: int) -> RolloutState:
        def read(conn: Connection) -> RolloutState:
            head = conn.execute(
                select(runs, rollouts).join(rollouts, rollouts.c.run_id == runs.c.id)
                .where(runs.c.id == run_id)
            ).mappings().first()  # fmt: skip
            if head is None:
                raise StateError(
                    f"there is no rollout {run_id} in the state store {self.store.where}"
                )
            waves = {
                row["number"]: WaveRow(**{k: row[k] for k in WaveRow.__dataclass_fields__
                                          if k not in ("tenants", "units")})
                for row in conn.execute(
                    select(rollout_waves).where(rollout_waves.c.run_id == run_id)
                    .order_by(rollout_waves.c.number)
                ).mappings()
            }  # fmt: skip
            for row in conn.execute(
                select(rollout_tenants).where(rollout_tenants.c.run_id == run_id)
                .order_by(rollout_tenants.c.wave, rollout_tenants.c.tenant)
            ).mappings():  # fmt: skip
                waves[row["wave"]].tenants.append(
                    TenantRow(**{k: row[k] for k in TenantRow.__dataclass_fields__})
                )
            for row in conn.execute(
                select(rollout_units).where(rollout_units.c.run_id == run_id)
                .order_by(rollout_units.c.wave, rollout_units.c.host)
            ).mappings():  # fmt: skip
                waves[row["wave"]].units.append(
                    UnitRow(**{k: row[k] for k in UnitRow.__dataclass_fields__})
                )
            return RolloutState(
                run_id=run_id,
                status=head["status"],
                summary=head["summary"],
                owner=head["owner"],
                started_at=head["started_at"],
                finished_at=head["finished_at"],
                manifests=json.loads(head["manifests"]),
                targets=json.loads(head["targets"]),
                settings=Settings(head["waves"], head["max_failures"], head["pause_s"],
                                  head["confirm_each_wave"], head["lease_s"]),
                current_wave=head["current_wave"],
                waves=list(waves.values()),
            )  # fmt: skip

        return self.store.read(read)


def _lock(conn: Connection, run_id: int) -> RowMapping:
    """The rollout's row, locked for this transaction (PostgreSQL; SQLite's writer lock is
    already held), with its run's status."""
    row = conn.execute(
        select(rollouts, runs.c.status)
        .join(runs, runs.c.id == rollouts.c.run_id)
        .where(rollouts.c.run_id == run_id)
        .with_for_update(of=rollouts)
    ).mappings().first()  # fmt: skip
    if row is None:
        raise StateError(f"there is no rollout {run_id} in the state store")
    return row


def _wave(conn: Connection, run_id: int, number: int) -> RowMapping | None:
    query = select(rollout_waves).where(
        rollout_waves.c.run_id == run_id, rollout_waves.c.number == number
    )
    return conn.execute(query).mappings().first()


def _set_wave(conn: Connection, run_id: int, number: int, **values: object) -> None:
    conn.execute(
        update(rollout_waves)
        .where(rollout_waves.c.run_id == run_id, rollout_waves.c.number == number)
        .values(**values)
    )


def _set_run(conn: Connection, run_id: int, status: str, summary: str, now: datetime) -> None:
    conn.execute(
        update(runs)
        .where(runs.c.id == run_id)
        .values(status=status, summary=summary, finished_at=None if status == "running" else now)
    )


def _add_units(conn: Connection, run_id: int, wave: int, hosts: Sequence[str]) -> None:
    if hosts:
        conn.execute(
            insert(rollout_units),
            [{"run_id": run_id, "wave": wave, "host": h, "status": "waiting", "message": ""}
             for h in hosts],
        )  # fmt: skip


def _failures(conn: Connection, run_id: int, wave: int) -> tuple[int, int]:
    """(failed, total) of a wave: its hosts in wave 0, its tenants after."""
    if wave == 0:
        table, where = rollout_units, rollout_units.c.wave == 0
    else:
        table, where = rollout_tenants, rollout_tenants.c.wave == wave
    statuses = conn.execute(
        select(table.c.status).where(table.c.run_id == run_id, where)
    ).scalars().all()  # fmt: skip
    return sum(s == "failed" for s in statuses), len(statuses)
