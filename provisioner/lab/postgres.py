"""A private PostgreSQL server on loopback (Debian's ``postgresql``) for tests and benches.

A throw-away cluster in a directory of its own, on a free port of 127.0.0.1, with fsync off; as
root it runs as the ``postgres`` user, as Debian's package expects::

    with PostgresServer.start(Path("/tmp/pg")) as server:
        url = server.create_database("t1")   # postgresql://postgres@127.0.0.1:PORT/t1
        server.stop(); server.resume()        # a database that goes away and comes back
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ProvisionerError

DEBIAN_ROOT = Path("/usr/lib/postgresql")


def find_binaries() -> Path | None:
    """The newest installed server's ``bin`` directory (``/usr/lib/postgresql/15/bin``)."""
    found = sorted(
        (p.parent for p in DEBIAN_ROOT.glob("*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    directory: Path
    binaries: Path
    port: int = 0

    @classmethod
    def start(cls, directory: Path) -> PostgresServer:
        binaries = find_binaries()
        if binaries is None:
            raise ProvisionerError(
                "PostgreSQL is not installed: run scripts/setup.sh --test (apt-get install "
                "postgresql)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory, binaries)
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres")
        server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "-N")
        server.resume()
        return server

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def resume(self) -> None:
        """Start the server (again): on a free port the first time, on the same one after."""
        for _ in range(3):
            self.port = self.port or free_port()
            options = (
                f"-k {self.directory} -h 127.0.0.1 -p {self.port} -c fsync=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            log = str(self.directory / "log")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "start", "-o", options)
                return
            except ProvisionerError:
                self.port = 0  # taken meanwhile: another one
        raise ProvisionerError(f"PostgreSQL did not start: see {self.directory / 'log'}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self.binaries / program), *arguments]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ProvisionerError(
                f"{program} failed: {detail[-1] if detail else result.returncode}"
            )
