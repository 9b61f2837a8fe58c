"""The host locks one apply, or one rollout worker, holds: on the hosts themselves.

Every operator shares the hosts, whatever state store their workstation uses, so each host keeps
its own lock (:class:`~provisioner.remote.contract.LockRequest` says how). It costs no command
of its own: the gather a plan is made from takes it, every batch renews it, the verifying gather
gives it back. Only a host that got no batch (nothing to do, held back, cancelled, Ctrl-C) needs
one small command at the end to give it back::

    locks = HostLocks("alice@ws17 pid 4711")
    locks.request("server/tapi01")                  # what the gather carries; held from now on
    locks.settle("server/tapi01", held=True)        # its answer came back
    locks.request("server/tapi01", release=True)    # the verifying gather
    locks.held                                      # what is left to give back at the end

A rollout worker names the worker whose host it takes over (``replaces``): that one's lock, and
only that one, it may take before it lapses.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from provisioner.remote.contract import LOCK_TTL_S, LockInfo, LockRequest
from provisioner.remote.scripts import one_line


class HostLocks:
    def __init__(self, owner: str, *, ttl_s: int = LOCK_TTL_S) -> None:
        self.owner = owner
        self.ttl_s = ttl_s
        self.replaces: dict[str, str] = {}  # host key → the owner whose lock may be taken over
        self._held: set[str] = set()
        self._guard = threading.Lock()

    def request(self, host: str, *, release: bool = False) -> LockRequest:
        """The lock request of a command about to be sent to ``host``. From now on the host
        counts as held: the command may take the lock even if its answer never arrives."""
        with self._guard:
            self._held.add(host)
        return LockRequest(
            owner=self.owner,
            ttl_seconds=self.ttl_s,
            replaces=self.replaces.get(host),
            release=release,
        )

    def settle(self, host: str, *, held: bool) -> None:
        """The host answered: the lock is this owner's now, or not (refused, lost, given back)."""
        with self._guard:
            if held:
                self._held.add(host)
            else:
                self._held.discard(host)

    @property
    def held(self) -> list[str]:
        """The hosts whose lock this owner holds, or may hold (an answer that never came)."""
        with self._guard:
            return sorted(self._held)


def holder_line(host: str, holder: LockInfo) -> str:
    """``tapi01 is locked by another apply: bob@ws2 pid 9, since 2026-01-05 10:00:00 UTC,
    until 2026-01-05 10:15:00 UTC``."""
    return f"{host} is locked by {holder_text(holder)}"


def holder_text(holder: LockInfo) -> str:
    """Who holds a lock, since when, until when. What the host printed is untrusted: shown on
    one line, control characters replaced."""
    owner = one_line(holder.owner)
    what = "rollout" if owner.startswith("rollout ") else "apply"
    return (
        f"another {what}: {owner}, since {_moment(holder.acquired)}, until "
        f"{_moment(holder.expires)}"
    )


def lapsed(holder: LockInfo, now: datetime | None = None) -> bool:
    """Whether a lock has run out (by this machine's clock; unreadable times count as run out,
    as the host counts them)."""
    try:
        expires = datetime.fromisoformat(holder.expires)
    except ValueError:
        return True
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return expires <= (now or datetime.now(UTC))


def _moment(text: str) -> str:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return one_line(text) or "(unknown)"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
