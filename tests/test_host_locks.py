"""What an apply or rollout worker knows of the host locks it holds, and how a holder is named
(the host's words are untrusted)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provisioner.host_locks import HostLocks, holder_line, lapsed
from provisioner.remote.contract import LOCK_TTL_S, LockInfo


def test_a_host_counts_as_held_from_the_moment_its_request_is_sent() -> None:
    locks = HostLocks("alice@ws17 pid 1")
    locks.replaces["server/tapi01"] = "rollout 7 worker bob@ws2 pid 2"
    request = locks.request("server/tapi01")
    assert (request.owner, request.ttl_seconds, request.release) == (
        "alice@ws17 pid 1",
        LOCK_TTL_S,
        False,
    )
    assert request.replaces == "rollout 7 worker bob@ws2 pid 2"
    assert locks.request("client/ws-0101").replaces is None
    assert locks.held == ["client/ws-0101", "server/tapi01"]  # no answer yet: maybe taken
    locks.settle("client/ws-0101", held=False)  # refused
    assert locks.request("server/tapi01", release=True).release is True
    locks.settle("server/tapi01", held=False)  # given back
    assert locks.held == []


def test_the_holder_is_named_on_one_line_whatever_the_host_printed() -> None:
    holder = LockInfo(
        owner="rollout 3 worker \x1b[2Jmallory\r\nOK: nothing locked\u202e",
        acquired="2026-01-05T10:00:00Z",
        expires="soon\nperhaps",
    )
    line = holder_line("tapi01", holder)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.startswith("tapi01 is locked by another rollout: rollout 3 worker ")
    assert "since 2026-01-05 10:00:00 UTC, until soon perhaps" in line
    apply = LockInfo(owner="bob@ws2 pid 9", acquired="x", expires="2026-01-05T10:15:00+01:00")
    assert holder_line("ws-0101", apply) == (
        "ws-0101 is locked by another apply: bob@ws2 pid 9, since x, until 2026-01-05 09:15:00 UTC"
    )


def test_a_lock_lapses_at_its_time_and_an_unreadable_time_counts_as_lapsed() -> None:
    now = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)

    def lock(expires: str) -> LockInfo:
        return LockInfo(owner="bob", acquired="", expires=expires)

    assert not lapsed(lock((now + timedelta(seconds=1)).isoformat()), now)
    assert lapsed(lock(now.isoformat()), now)
    assert not lapsed(lock("2026-01-05T10:00:01"), now)  # no zone: UTC, as the host reads it
    assert lapsed(lock("tomorrow"), now)
