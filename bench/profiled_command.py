"""Run one provisioner command under cProfile, worker threads included, and save the stats.

    python bench/profiled_command.py OUT.prof plan manifests/

``python -m cProfile`` sees only the main thread, but plan and apply work their hosts in a
thread pool: here every thread gets its own profiler and the stats are merged at the end.
The exit code is the command's.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import threading
from types import FrameType
from typing import Any

from provisioner.cli import main as provisioner_main


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    profiles: list[cProfile.Profile] = []
    guard = threading.Lock()

    def start_thread_profile(frame: FrameType, event: str, arg: Any) -> None:
        # called once in each new thread, before its run(): hand over to a real profiler
        sys.setprofile(None)
        profile = cProfile.Profile()
        with guard:
            profiles.append(profile)
        profile.enable()

    threading.setprofile(start_thread_profile)
    main_profile = cProfile.Profile()
    code: int | str | None = 0
    main_profile.enable()
    try:
        provisioner_main(argv)
    except SystemExit as exc:
        code = exc.code
    finally:
        main_profile.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    with guard:
        stats = pstats.Stats(main_profile, *profiles)
    stats.dump_stats(out)
    sys.exit(code)


if __name__ == "__main__":
    main()
