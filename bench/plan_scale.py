"""Validate and plan generated estates against the in-process lab, phase by phase, with budgets.

    .venv/bin/python bench/plan_scale.py                          # medium and large, 3 runs each
    .venv/bin/python bench/plan_scale.py --sizes medium --runs 1
    .venv/bin/python bench/plan_scale.py --sizes large --converge  # also apply, then re-plan
    .venv/bin/python bench/plan_scale.py --sizes large --profile   # where does a plan's time go?

For each size it writes generated manifests (``bench/generated_estate.py``) and starts a lab for
them (simulated Windows hosts behind real WS-Management listeners, the CTI API simulator; Active
Directory with ``--directory``, which seeds every user into a Samba DC first; the generated
users are in the domain BENCH, so this needs a lab DC that takes the manifests' domain). Then it
runs the real command line in child processes (``bench/phased_command.py`` times each phase),
``--runs`` times each:

    validate cold   the manifest cache empty        validate warm   the cache filled
    plan cold       the cache empty                 plan warm       the cache filled

A plan of the fresh lab has every resource to create (100,000 line assignments in the large
estate). With ``--converge`` the estate is then applied once and re-planned (no changes, every
resource unchanged: its memory must not grow with them). Printed per case: min/median/max wall
time (every run must meet the budget), the largest peak RSS, the median of each phase (load,
gather, directory, pbx, plan, render) with its CPU time, WinRM commands per host, CTI calls per
tenant and LDAP searches, and whether the budgets hold; the script exits 1 when one does not.
"lab CPU" is what the simulated estate (in this process) burnt meanwhile: the machine has two
cores, and the lab shares them with the command. The load average is printed before and after:
the budgets hold on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from generated_estate import EstateShape, cti_counts, span, write_estate

from provisioner.lab.estate import Lab
from provisioner.remote import scripts


@dataclass(frozen=True)
class Budget:
    validate_cold_s: float
    validate_warm_s: float
    plan_cold_s: float
    plan_warm_s: float
    peak_rss_mib: float

    def wall_s(self, case: str) -> float:
        return {
            "validate cold": self.validate_cold_s,
            "validate warm": self.validate_warm_s,
            "plan cold": self.plan_cold_s,
            "plan warm": self.plan_warm_s,
            "apply": math.inf,
            "replan warm": self.plan_warm_s,
        }[case]


SIZES = {
    "small": (EstateShape(servers=1, tenants=1, users_per_tenant=20), None),
    "medium": (
        EstateShape(servers=5, tenants=50, users_per_tenant=100),
        Budget(1.5, 0.3, 3.0, 2.0, 300),
    ),
    "large": (
        EstateShape(servers=20, tenants=1_000, users_per_tenant=100),
        Budget(8.0, 1.5, 20.0, 12.0, 1024),
    ),
}
CTI_CALLS_PER_TENANT = 2  # one login, one extension listing
PHASES = ("load", "gather", "directory", "pbx", "plan", "render")
HERE = Path(__file__).parent
EXPECTED_EXIT = {"validate": 0, "plan": 2, "apply": 0, "replan": 0}  # plan: --detailed-exitcode


@dataclass
class Run:
    """One command: wall time, peak RSS, its phases, and what it cost the lab."""

    wall_s: float
    peak_rss_mib: float
    lab_cpu_s: float
    phases: dict[str, float]
    cpu: dict[str, float]  # CPU seconds of the command, per phase and in total
    commands: dict[str, list[str]]  # host → the scripts it ran, in order
    cti_calls: Counter[str]  # tenant (K-account) → requests
    cti_logins: Counter[str]
    cti_listings: Counter[str]
    ldap_searches: int
    problems: list[str] = field(default_factory=list)


@dataclass
class Case:
    size: str
    name: str
    runs: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="medium,large", help="small, medium and/or large")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case (default 3)")
    parser.add_argument("--converge", action="store_true", help="then apply and re-plan")
    parser.add_argument("--directory", action="store_true", help="with a Samba AD DC (slow)")
    parser.add_argument("--profile", action="store_true", help="profile one cold plan")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size {unknown[0]!r}: choose from {', '.join(SIZES)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    cases: list[Case] = []
    for size in sizes:
        cases += run_size(size, args)
    print()
    print_table(cases)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    problems = [f"{c.size} {c.name}: {p}" for c in cases for p in c.problems]
    print()
    for problem in problems:
        print(f"OVER BUDGET / WRONG: {problem}")
    if problems:
        raise SystemExit(1)
    print("all budgets met")


def run_size(size: str, args: argparse.Namespace) -> list[Case]:
    shape, budget = SIZES[size]
    with tempfile.TemporaryDirectory(prefix=f"plan-scale-{size}-") as workdir:
        work = Path(workdir)
        manifests = write_estate(work / "manifests", shape)
        started = time.perf_counter()
        with Lab(work / "lab", [manifests], active_directory=args.directory) as lab:
            print(
                f"{size}: {shape.servers} servers, {shape.tenants} tenants, "
                f"{shape.assignments:,} assignments; lab started in "
                f"{time.perf_counter() - started:.1f} s; AD: {lab.status()['active_directory']}",
                flush=True,
            )
            bench = Bench(lab, work, manifests)
            cases = [Case(size, name) for name in CASE_NAMES]
            for number in range(args.runs):
                for case in cases:
                    run = bench.run(case.name)
                    case.runs.append(run)
                    print(f"  run {number + 1} {case.name:<14} {describe(run)}", flush=True)
            if args.converge:
                for name, runs in (("apply", 1), ("replan warm", args.runs)):
                    case = Case(size, name)
                    for _ in range(runs):
                        case.runs.append(bench.run(name))
                        print(f"  {name:<20} {describe(case.runs[-1])}", flush=True)
                    cases.append(case)
            if args.profile:
                bench.profile(args.top)
            for case in cases:
                check(case, shape, budget, directory=lab.ad is not None)
            return cases


CASE_NAMES = ("validate cold", "validate warm", "plan cold", "plan warm")


class Bench:
    def __init__(self, lab: Lab, work: Path, manifests: Path) -> None:
        self.lab = lab
        self.work = work
        self.manifests = manifests
        self.state = work / "state"
        self.environment = os.environ | {
            "PROVISIONER_INVENTORY": str(lab.inventory_path),
            "PROVISIONER_STATE_DIR": str(self.state),
        }

    def argv(self, case: str) -> list[str]:
        command = case.split()[0]
        if command == "validate":
            return ["validate", str(self.manifests)]
        if command == "apply":
            return ["apply", "--auto-approve", str(self.manifests)]
        return ["plan", "--detailed-exitcode", str(self.manifests)]

    def run(self, case: str) -> Run:
        if case.endswith("cold"):
            shutil.rmtree(self.state / "cache", ignore_errors=True)
        for host in self.lab.hosts.values():
            host.server.counters.reset()
        assert self.lab.cti is not None
        self.lab.cti.clear_records()
        phases_file = self.work / "phases.json"
        output = self.work / "command.out"
        command = [sys.executable, str(HERE / "phased_command.py"), str(phases_file)]
        cpu_before = _cpu_s()
        started = time.perf_counter()
        with output.open("wb") as stream:
            child = subprocess.Popen(
                command + self.argv(case),
                stdout=stream,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment,
            )
            # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would mix the runs)
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        recorded = json.loads(phases_file.read_text())
        calls, logins, listings = cti_counts(self.lab.cti.requests)
        run = Run(
            wall_s=wall,
            peak_rss_mib=usage.ru_maxrss / 1024,  # KiB on Linux
            lab_cpu_s=_cpu_s() - cpu_before,
            phases=recorded["phases"],
            cpu=recorded["cpu"],
            commands={
                name: [scripts.kind_of(stdin) for stdin in host.server.counters.stdin_payloads]
                for name, host in self.lab.hosts.items()
            },
            cti_calls=calls,
            cti_logins=logins,
            cti_listings=listings,
            ldap_searches=recorded["ldap_searches"],
        )
        code = os.waitstatus_to_exitcode(status)
        expected = EXPECTED_EXIT[case.split()[0]]
        if code != expected:
            tail = output.read_text(errors="replace").splitlines()[-15:]
            run.problems.append(
                f"exit code {code}, expected {expected}; output ends:\n    " + "\n    ".join(tail)
            )
        return run

    def profile(self, top: int) -> None:
        shutil.rmtree(self.state / "cache", ignore_errors=True)
        out = self.work / "plan.prof"
        command = [sys.executable, str(HERE / "profiled_command.py"), str(out)]
        subprocess.run(
            command + self.argv("plan cold"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self.environment,
            check=False,
        )
        stats = pstats.Stats(str(out))
        for order in ("cumulative", "tottime"):
            print(f"    cold plan, top {top} by {order} (all threads):")
            stats.sort_stats(order)
            _, rows = stats.get_print_list([top])
            for function in rows:
                calls, _, own, cumulative, _ = stats.stats[function]  # type: ignore[attr-defined]
                file, line, name = function
                print(
                    f"      {cumulative:8.2f} cum {own:8.2f} own {calls:>9} calls  "
                    f"{Path(file).name}:{line} {name}"
                )


def check(case: Case, shape: EstateShape, budget: Budget | None, *, directory: bool) -> None:
    """Append to the case's problems what breaks a budget or a count."""
    command = case.name.split()[0]
    for number, run in enumerate(case.runs, 1):
        case.problems += [f"run {number}: {p}" for p in run.problems]
        if command == "validate":
            touched = {h: c for h, c in run.commands.items() if c}
            if touched or run.cti_calls or run.ldap_searches:
                case.problems.append(f"run {number}: validate reached the estate")
            continue
        for host, commands in run.commands.items():
            expected = ["gather"]
            if command == "apply":
                expected = ["gather", "apply", "gather", "apply", "gather"]
                if not any(t % shape.servers + 1 == int(host[3:]) for t in range(shape.tenants)):
                    expected = ["gather", "apply", "gather"]
            if commands != expected:
                case.problems.append(f"run {number}: {host}: commands {commands}, not {expected}")
        if command != "apply":
            _check_cti(case, number, run, shape)
        if directory:
            # the RootDSE and the partitions (resolve_domain), then one search per user batch
            allowed = 2 + math.ceil(shape.assignments / 300)
            if run.ldap_searches > allowed:
                case.problems.append(
                    f"run {number}: {run.ldap_searches} LDAP searches, budget {allowed}"
                )
    if budget is None or not case.runs:
        return
    walls = [r.wall_s for r in case.runs]
    over = [w for w in walls if w > budget.wall_s(case.name)]
    if over:  # every run must meet the budget, not only the median
        case.problems.append(
            f"{len(over)} of {len(walls)} runs over the budget of {budget.wall_s(case.name)} s "
            f"(min {min(walls):.2f}, median {statistics.median(walls):.2f}, max {max(walls):.2f})"
        )
    peak = max(r.peak_rss_mib for r in case.runs)
    if peak > budget.peak_rss_mib:
        case.problems.append(f"peak RSS {peak:.0f} MiB, budget {budget.peak_rss_mib:.0f} MiB")


def _check_cti(case: Case, number: int, run: Run, shape: EstateShape) -> None:
    tenants = {f"K{10_000 + t}" for t in range(shape.tenants)}
    if set(run.cti_calls) != tenants:
        case.problems.append(f"run {number}: CTI calls for {len(run.cti_calls)} tenants")
    over = sorted(t for t, n in run.cti_calls.items() if n > CTI_CALLS_PER_TENANT)
    if over:
        case.problems.append(
            f"run {number}: {len(over)} tenants over {CTI_CALLS_PER_TENANT} CTI calls, e.g. "
            f"{over[0]}: {run.cti_calls[over[0]]}"
        )
    if any(run.cti_logins[t] != 1 or run.cti_listings[t] != 1 for t in tenants):
        case.problems.append(f"run {number}: not one login and one listing per tenant")


def describe(run: Run) -> str:
    phases = " ".join(
        f"{p} {run.phases[p]:.2f} ({run.cpu[p]:.2f} CPU)" for p in PHASES if p in run.phases
    )
    return (
        f"{run.wall_s:6.2f} s, {run.cpu['total']:.2f} s CPU, {run.peak_rss_mib:4.0f} MiB, "
        f"lab CPU {run.lab_cpu_s:4.1f} s: {phases}"
    )


def print_table(cases: list[Case]) -> None:
    header = (
        f"{'size':<7} {'case':<14} {'min s':>6} {'median':>6} {'max s':>6} {'budget':>6} "
        f"{'RSS MiB':>7} "
        + " ".join(f"{p:>9}" for p in PHASES)
        + f" {'WinRM/host':>10} {'CTI/tenant':>10} {'LDAP':>5}  verdict"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        if not case.runs:
            continue
        walls = sorted(r.wall_s for r in case.runs)
        _, budget = SIZES[case.size]
        limit = f"{budget.wall_s(case.name):6.1f}" if budget else "     -"
        phases = " ".join(
            f"{statistics.median(r.phases.get(p, 0.0) for r in case.runs):9.2f}" for p in PHASES
        )
        last = case.runs[-1]
        winrm = span([len(c) for c in last.commands.values()])
        cti = span(list(last.cti_calls.values()))
        print(
            f"{case.size:<7} {case.name:<14} {walls[0]:6.2f} {statistics.median(walls):6.2f} "
            f"{walls[-1]:6.2f} {limit} {max(r.peak_rss_mib for r in case.runs):7.0f} {phases} "
            f"{winrm:>10} {cti:>10} {last.ldap_searches:>5}  "
            f"{'ok' if not case.problems else 'NOT MET'}"
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
