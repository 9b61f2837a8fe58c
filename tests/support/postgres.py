"""A real PostgreSQL server on loopback for the state store's tests, one per test session.

``state_url`` runs a test on SQLite and on PostgreSQL, each time in a database of its own::

    def test_runs_are_recorded(state_url: str) -> None:
        with StateStore.open(state_url) as store: ...

``postgres`` is the session's server itself (to stop and resume it). Under ``CI=true`` a
PostgreSQL that is missing or does not start fails the tests; elsewhere they skip.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from provisioner.errors import ProvisionerError
from provisioner.lab.postgres import PostgresServer
from tests.support.ci import part_unavailable

_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    directory = Path(tempfile.mkdtemp(prefix="provisioner-pg-"))
    try:
        server = PostgresServer.start(directory)
    except ProvisionerError as exc:
        part_unavailable(str(exc), "a real PostgreSQL server for the state store")
    try:
        yield server
    finally:
        with contextlib.suppress(ProvisionerError):  # a test may have stopped it
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh database on the session's server."""
    return postgres.create_database(f"t{next(_numbers)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(URL.create("sqlite", database=str(tmp_path / "state.db")))
    url: str = request.getfixturevalue("postgres_url")
    return url
