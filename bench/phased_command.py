"""Run one provisioner command and record how long each phase took, and the LDAP searches.

    python bench/phased_command.py OUT.json plan manifests/

The phases are the command's own named steps, timed by wrapping them where the command calls
them: load (manifests → Estate), gather (WinRM), directory (LDAP), pbx (CTI API), plan (the pure
core) and render (the plan as text, written out). OUT.json gets
``{"phases": {"load": 0.41, ...}, "ldap_searches": 36}``; the exit code is the command's.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import provisioner.commands as commands
import provisioner.manifest as manifest
import provisioner.runner as runner
from provisioner.cli import main as provisioner_main
from provisioner.transports.ldap import LDAPConnection

seconds: dict[str, float] = defaultdict(float)
searches = 0


def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - started

    return wrapper


def count_searches(close: Callable[[LDAPConnection], None]) -> Callable[[LDAPConnection], None]:
    def wrapper(self: LDAPConnection) -> None:
        global searches
        searches += self.searches
        close(self)

    return wrapper


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    commands.load_estate = manifest.load_estate = timed("load", manifest.load_estate)
    runner.Run.gather = timed("gather", runner.Run.gather)  # type: ignore[method-assign]
    runner.read_directory = timed("directory", runner.read_directory)
    runner.read_pbx = timed("pbx", runner.read_pbx)
    commands.build_plan = timed("plan", commands.build_plan)
    commands.write_plan = timed("render", commands.write_plan)
    LDAPConnection.close = count_searches(LDAPConnection.close)  # type: ignore[method-assign]
    code: int | str | None = 0
    try:
        provisioner_main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        with open(out, "w", encoding="utf-8") as stream:
            json.dump({"phases": dict(seconds), "ldap_searches": searches}, stream)
    sys.exit(code)


if __name__ == "__main__":
    main()
