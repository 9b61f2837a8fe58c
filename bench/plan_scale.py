"""Plan and apply at three estate sizes against the in-process lab, with their budgets.

    .venv/bin/python bench/plan_scale.py                        # small,medium,large
    .venv/bin/python bench/plan_scale.py --sizes small,medium
    .venv/bin/python bench/plan_scale.py --sizes large --profile   # where does the time go?

For each size it writes generated manifests (``bench/generated_estate.py``), starts a lab for
them (simulated Windows hosts behind real WS-Management listeners, and the CTI API), then runs
the real command line in a child process, three times:

    plan     fresh hosts, everything to create            budget: one gather per host
    apply    --auto-approve                               budget: gather + batch + verify gather;
                                                          where TSP instances were created, the
                                                          lines need a re-gather and a second batch
    replan   right after the apply: must show no changes  budget: one gather per host

Peak memory is the peak RSS of the child process that ran the command (the provisioner alone:
the lab runs in this process). "lab CPU" is the CPU time this process (the simulated hosts)
spent meanwhile, so a slow phase can be told apart from a slow simulator. With ``--profile``
each child runs under cProfile (``bench/profiled_command.py``: worker threads included, so
cumulative times add up over threads and can exceed the wall time) and the top functions are
printed.
"""

from __future__ import annotations

import argparse
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from generated_estate import EstateShape, span, write_estate

from provisioner.lab.estate import Lab
from provisioner.remote import scripts

SIZES = {
    "small": EstateShape(servers=1, tenants=1, users_per_tenant=20),
    "medium": EstateShape(servers=5, tenants=50, users_per_tenant=100),
    "large": EstateShape(servers=20, tenants=1_000, users_per_tenant=100),
}
# Wall-time budgets of a plan, by size (seconds), and the memory budget of the large one.
PLAN_BUDGET_S = {"medium": 3.0, "large": 30.0}
MEMORY_BUDGET_MIB = {"large": 2048.0}
PROFILED_COMMAND = Path(__file__).with_name("profiled_command.py")
EXPECTED_EXIT = {"plan": 2, "apply": 0, "replan": 0}  # plan runs with --detailed-exitcode


@dataclass
class Phase:
    """One command's figures: ``commands`` maps each host to its scripts in order."""

    size: str
    name: str
    wall_s: float
    peak_rss_mib: float
    lab_cpu_s: float
    commands: dict[str, list[str]]
    messages: dict[str, int]
    problems: list[str] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="small,medium,large", help="comma-separated sizes")
    parser.add_argument("--profile", action="store_true", help="run the commands under cProfile")
    parser.add_argument("--top", type=int, default=20, help="profile lines to print")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}: choose from {', '.join(SIZES)}")

    phases: list[Phase] = []
    for size in sizes:
        phases += run_size(size, SIZES[size], profile_top=args.top if args.profile else 0)
    print()
    print_table(phases)
    problems = [f"{p.size} {p.name}: {problem}" for p in phases for problem in p.problems]
    print()
    for problem in problems:
        print(f"OVER BUDGET / WRONG: {problem}")
    if problems:
        raise SystemExit(1)
    print("all budgets met")


def run_size(size: str, shape: EstateShape, *, profile_top: int) -> list[Phase]:
    with tempfile.TemporaryDirectory(prefix=f"plan-scale-{size}-") as workdir:
        work = Path(workdir)
        started = time.perf_counter()
        manifests = write_estate(work / "manifests", shape)
        written = time.perf_counter() - started
        started = time.perf_counter()
        with Lab(work / "lab", [manifests]) as lab:
            print(
                f"{size}: {shape.servers} servers, {shape.tenants} tenants, "
                f"{shape.assignments} assignments; manifests written in {written:.1f} s, "
                f"lab started in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            environment = os.environ | {
                "PROVISIONER_INVENTORY": str(lab.inventory_path),
                "PROVISIONER_STATE_DIR": str(work / "state"),
            }
            arguments = {
                "plan": ["plan", "--detailed-exitcode", str(manifests)],
                "apply": ["apply", "--auto-approve", str(manifests)],
                "replan": ["plan", "--detailed-exitcode", str(manifests)],
            }
            phases = []
            for name, argv in arguments.items():
                profile = work / f"{name}.prof" if profile_top else None
                phase = run_phase(lab, size, name, argv, environment, work, profile)
                phases.append(phase)
                print(
                    f"  {name:<7} {phase.wall_s:7.2f} s  {phase.peak_rss_mib:7.0f} MiB", flush=True
                )
                if profile is not None:
                    print_profile(profile, profile_top)
            check_budgets(phases, shape)
            return phases


def run_phase(
    lab: Lab,
    size: str,
    name: str,
    argv: list[str],
    environment: dict[str, str],
    work: Path,
    profile: Path | None,
) -> Phase:
    for host in lab.hosts.values():
        host.server.counters.reset()
    if profile is None:
        command = [sys.executable, "-m", "provisioner", *argv]
    else:
        command = [sys.executable, str(PROFILED_COMMAND), str(profile), *argv]
    output = work / f"{name}.out"
    cpu_before = _cpu_s()
    started = time.perf_counter()
    with output.open("wb") as stream:
        child = subprocess.Popen(
            command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=environment,
        )
        # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would mix the phases)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    phase = Phase(
        size=size,
        name=name,
        wall_s=wall,
        peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
        lab_cpu_s=_cpu_s() - cpu_before,
        commands={
            host_name: [_script_name(stdin) for stdin in host.server.counters.stdin_payloads]
            for host_name, host in lab.hosts.items()
        },
        messages={
            host_name: host.server.counters.total_messages for host_name, host in lab.hosts.items()
        },
    )
    if child.returncode != EXPECTED_EXIT[name]:
        tail = output.read_text(errors="replace").splitlines()[-15:]
        phase.problems.append(
            f"exit code {child.returncode}, expected {EXPECTED_EXIT[name]}; output ends:\n    "
            + "\n    ".join(tail)
        )
    return phase


def check_budgets(phases: list[Phase], shape: EstateShape) -> None:
    """Append to each phase's problems what breaks its budget."""
    hosts_with_tenants = {f"srv{t % shape.servers + 1:02d}" for t in range(shape.tenants)}
    for phase in phases:
        for host, commands in phase.commands.items():
            if phase.name == "apply":
                expected = ["gather", "apply", "gather"]
                if host in hosts_with_tenants:  # new TSP instances: lines in a second batch
                    expected = ["gather", "apply", "gather", "apply", "gather"]
            else:
                expected = ["gather"]
            if commands != expected:
                phase.problems.append(f"{host}: commands {commands}, expected {expected}")
        budget = PLAN_BUDGET_S.get(phase.size)
        if phase.name in ("plan", "replan") and budget is not None and phase.wall_s > budget:
            phase.problems.append(f"{phase.wall_s:.1f} s, budget {budget:.0f} s")
        memory = MEMORY_BUDGET_MIB.get(phase.size)
        if memory is not None and phase.peak_rss_mib > memory:
            phase.problems.append(f"peak RSS {phase.peak_rss_mib:.0f} MiB, budget {memory:.0f}")


def print_table(phases: list[Phase]) -> None:
    header = (
        f"{'size':<7} {'phase':<7} {'wall s':>8} {'peak RSS MiB':>13} {'lab CPU s':>10} "
        f"{'hosts':>6} {'commands/host':>14} {'messages/host':>14}  budget"
    )
    print(header)
    print("-" * len(header))
    for phase in phases:
        counts = [len(c) for c in phase.commands.values()]
        messages = list(phase.messages.values())
        print(
            f"{phase.size:<7} {phase.name:<7} {phase.wall_s:8.2f} {phase.peak_rss_mib:13.0f} "
            f"{phase.lab_cpu_s:10.1f} {len(counts):6d} {span(counts):>14} {span(messages):>14}"
            f"  {'ok' if not phase.problems else 'NOT MET'}"
        )


def print_profile(path: Path, top: int) -> None:
    stats = pstats.Stats(str(path))
    for order in ("cumulative", "tottime"):
        print(f"    top {top} by {order}:")
        stats.sort_stats(order)
        _, rows = stats.get_print_list([top])
        for function in rows:
            calls, _, own, cumulative, _ = stats.stats[function]  # type: ignore[attr-defined]
            file, line, name = function
            print(
                f"      {cumulative:8.2f} cum {own:8.2f} own {calls:>9} calls  "
                f"{Path(file).name}:{line} {name}"
            )


def _script_name(stdin: bytes) -> str:
    """``gather`` or ``apply``: the name in the script header the command got on stdin."""
    try:
        text, _ = scripts.parse_payload(stdin)
    except (scripts.RemoteScriptError, ValueError):
        return "?"
    identity = scripts.identity_of(text) or "?"
    return identity.split("/", 1)[0]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
