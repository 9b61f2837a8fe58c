"""Each host's lock for a whole apply or rollout, kept in the state store (Terraform's state
lock, per host): taken before the gather the plan is made from, renewed while the work goes on,
released after the verify. A second apply or rollout of the same store on that host fails fast
and names the holder, or waits (``--wait S``). Nothing extra is sent to a host: the lock costs
no WinRM message. (Every batch also takes the host's own lock, ``apply.ps1``, which guards
against a provisioner that uses another store.)

    with HostLocks(store, owner="alice@ws17 pid 4711") as locks:
        held = locks.take(["server/tapi01", "client/ws-0101"], wait_s=0)  # {} when all taken
        ...                                                             # renewed meanwhile
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from provisioner.state.store import StateConflict, StateError, StateStore
from provisioner.state.tables import host_locks

DEFAULT_TTL_S = 120.0  # a lock outlives its owner this long; renewed every third of it
WAIT_POLL_S = 1.0


@dataclass(frozen=True)
class Holder:
    host: str
    owner: str
    acquired_at: datetime
    expires_at: datetime

    def __str__(self) -> str:
        name = self.host.split("/", 1)[-1]
        what = "rollout" if self.owner.startswith("rollout ") else "apply"
        return (
            f"{name} is locked by another {what}: {self.owner} since "
            f"{self.acquired_at:%Y-%m-%d %H:%M:%S} UTC (until {self.expires_at:%H:%M:%S} UTC "
            "unless renewed); to queue behind it, add --wait SECONDS"
        )


class HostLocks:
    """The locks one owner holds; renewed in the background until :meth:`release`."""

    def __init__(self, store: StateStore, owner: str, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.owner = owner
        self.ttl_s = ttl_s
        self.hosts: set[str] = set()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> HostLocks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def take(self, hosts: Sequence[str], *, wait_s: float = 0.0) -> dict[str, Holder]:
        """Lock the hosts that are free (or expired, or this owner's already); retry the others
        for up to ``wait_s`` seconds. Returns the hosts still held by others, with the holder."""
        deadline = time.monotonic() + wait_s
        pending = list(hosts)
        while True:
            held = self._take_once(pending)
            self.hosts |= set(pending) - set(held)
            if not held or time.monotonic() + WAIT_POLL_S > deadline:
                break
            pending = list(held)
            time.sleep(WAIT_POLL_S)
        self._start_renewing()
        return held

    def _take_once(self, hosts: Sequence[str]) -> dict[str, Holder]:
        def write(conn: Connection) -> dict[str, Holder]:
            now = self.store.clock(conn)
            expires = now + timedelta(seconds=self.ttl_s)
            held: dict[str, Holder] = {}
            for host in sorted(hosts):  # one order for every owner: no deadlock between two
                row = conn.execute(
                    select(host_locks).where(host_locks.c.host == host).with_for_update()
                ).mappings().first()  # fmt: skip
                values = {"owner": self.owner, "acquired_at": now, "expires_at": expires}
                if row is None:
                    conn.execute(insert(host_locks).values(host=host, **values))
                elif row["owner"] == self.owner or row["expires_at"] < now:
                    conn.execute(update(host_locks).where(host_locks.c.host == host).values(values))
                else:
                    held[host] = Holder(host, row["owner"], row["acquired_at"], row["expires_at"])
            return held

        for _ in range(5):
            with suppress(StateConflict):  # another owner inserted the host meanwhile: again
                return self.store.write(write, keep={"lock": list(hosts), "owner": self.owner})
        raise StateError(f"the host locks in {self.store.where} keep changing: try again")

    def renew(self) -> None:
        if not self.hosts:
            return

        def write(conn: Connection) -> None:
            expires = self.store.clock(conn) + timedelta(seconds=self.ttl_s)
            conn.execute(
                update(host_locks)
                .where(host_locks.c.owner == self.owner, host_locks.c.host.in_(sorted(self.hosts)))
                .values(expires_at=expires)
            )

        self.store.write(write, keep={"renew": self.owner})

    def stop_renewing(self) -> None:
        """Leave the locks to lapse (or to the other workers of a rollout, which renew them)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None

    def release(self) -> None:
        """Give the locks back (the background renewal stops)."""
        self.stop_renewing()
        if not self.hosts:
            return
        hosts = sorted(self.hosts)
        self.store.write(
            lambda conn: conn.execute(
                delete(host_locks).where(
                    host_locks.c.owner == self.owner, host_locks.c.host.in_(hosts)
                )
            ),
            keep={"release": hosts, "owner": self.owner},
        )
        self.hosts.clear()

    def _start_renewing(self) -> None:
        if self._renewer is None and self.hosts:
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True)
            self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except StateError:
                return  # the store is away: the locks lapse, the command says why
