"""Run one provisioner command and record how long each phase took, and the LDAP searches.

    python bench/phased_command.py OUT.json plan manifests/

The phases are the command's own named steps, timed by wrapping them where the command calls
them: load (manifests → Estate), gather (WinRM), directory (LDAP), pbx (CTI API), plan (the pure
core) and render (the plan as text, written out). OUT.json gets
``{"phases": {"load": 0.41, ...}, "cpu": {"load": 0.40, ..., "total": 1.2},
"ldap_searches": 36}`` (CPU seconds tell the command's own work from waiting on a busy
machine); the exit code is the command's. For ``validate`` only the manifest package is imported
here, as the command itself does, so that the figures are the command's.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import provisioner.manifest as manifest
from provisioner.cli import main as provisioner_main

seconds: dict[str, float] = defaultdict(float)
cpu_seconds: dict[str, float] = defaultdict(float)  # of every thread of this process
searches = 0


def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - started
            cpu_seconds[phase] += time.process_time() - cpu_started

    return wrapper


def count_searches(close: Callable[[Any], None]) -> Callable[[Any], None]:
    def wrapper(self: Any) -> None:
        global searches
        searches += self.searches
        close(self)

    return wrapper


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    manifest.load_estate = timed("load", manifest.load_estate)
    if argv[0] != "validate":
        time_plan_phases()
    code: int | str | None = 0
    try:
        provisioner_main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        with open(out, "w", encoding="utf-8") as stream:
            json.dump(
                {
                    "phases": dict(seconds),
                    "cpu": dict(cpu_seconds) | {"total": time.process_time()},
                    "ldap_searches": searches,
                },
                stream,
            )
    sys.exit(code)


def time_plan_phases() -> None:
    import provisioner.commands as commands
    import provisioner.converge as converge
    import provisioner.runner as runner
    from provisioner.transports.ldap import LDAPConnection

    commands.load_estate = manifest.load_estate
    runner.Run.gather = timed("gather", runner.Run.gather)  # type: ignore[method-assign]
    runner.read_directory = timed("directory", runner.read_directory)
    runner.read_pbx = timed("pbx", runner.read_pbx)
    converge.build_plan = timed("plan", converge.build_plan)
    commands.write_plan = timed("render", commands.write_plan)
    LDAPConnection.close = count_searches(LDAPConnection.close)  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
