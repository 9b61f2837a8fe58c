"""NFON CTI API calls per plan for a generated estate, against the in-process lab.

    .venv/bin/python bench/cti_calls.py                  # medium: 5 servers, 50 tenants, 5,000
    .venv/bin/python bench/cti_calls.py --tenants 200 --users-per-tenant 25 --repeat 3

It writes the manifests (``bench/generated_estate.py``), starts a lab for them (simulated
Windows hosts, and a simulated CTI API with one PBX per tenant), then runs the real
``provisioner plan`` in a child process, ``--repeat`` times. The simulator records every request,
so the calls each tenant cost are counted where they arrive. Budget per tenant and plan: one
``POST /login`` and one ``GET /extensions/phone/data``, 2 calls. Printed per plan::

    plan 1   wall   1.19 s   CTI calls 100 (50 tenants): per tenant 2, logins 1, listings 1   ok

A plan's wall time is the whole command: gathering every host, then the CTI API (tenants 10 at
a time), then AD (off in this lab). The CTI part alone (``provisioner.pbx.read_pbx``) is timed
once more in a child process of its own, as "CTI read".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from generated_estate import EstateShape, cti_counts, span, write_estate

from provisioner.lab.cti_api import CTIAPISimulator
from provisioner.lab.estate import Lab

CALLS_PER_TENANT = 2  # one login, one extension listing
PLAN_EXIT_CHANGES = 2  # plan --detailed-exitcode on a fresh estate: everything to create


@dataclass
class PlanFigures:
    """One plan: its wall time and the CTI requests each tenant (K-account) sent."""

    number: int
    wall_s: float
    exit_code: int
    calls: Counter[str]
    logins: Counter[str]
    listings: Counter[str]
    problems: list[str] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=5)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--users-per-tenant", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2, help="plans to run (default 2)")
    args = parser.parse_args()
    shape = EstateShape(args.servers, args.tenants, args.users_per_tenant)

    with tempfile.TemporaryDirectory(prefix="cti-calls-") as workdir:
        work = Path(workdir)
        manifests = write_estate(work / "manifests", shape)
        started = time.perf_counter()
        with Lab(work / "lab", [manifests]) as lab:
            assert lab.cti is not None
            print(
                f"{shape.servers} servers, {shape.tenants} tenants, {shape.assignments} "
                f"assignments; lab started in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            environment = os.environ | {
                "PROVISIONER_INVENTORY": str(lab.inventory_path),
                "PROVISIONER_STATE_DIR": str(work / "state"),
            }
            tenants = sorted(lab.plan.pbx_lines)
            plans = [
                run_plan(number, lab.cti, manifests, environment, work, tenants)
                for number in range(1, args.repeat + 1)
            ]
            read_s, read_calls = time_cti_read(manifests, environment)
    print()
    for figures in plans:
        print(describe(figures))
    print(
        f"CTI read {read_s:6.2f} s   {read_calls} calls for {shape.tenants} tenants "
        "(provisioner.pbx.read_pbx alone)"
    )
    problems = [f"plan {p.number}: {problem}" for p in plans for problem in p.problems]
    for problem in problems:
        print(f"OVER BUDGET / WRONG: {problem}")
    if problems:
        raise SystemExit(1)
    print(f"budget met: at most {CALLS_PER_TENANT} CTI API calls per tenant and plan")


def run_plan(
    number: int,
    cti: CTIAPISimulator,
    manifests: Path,
    environment: dict[str, str],
    work: Path,
    tenants: list[str],
) -> PlanFigures:
    cti.clear_records()
    output = work / f"plan-{number}.out"
    command = [sys.executable, "-m", "provisioner", "plan", "--detailed-exitcode", str(manifests)]
    started = time.perf_counter()
    with output.open("wb") as stream:
        done = subprocess.run(
            command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, check=False,
        )  # fmt: skip
    wall = time.perf_counter() - started
    calls, logins, listings = cti_counts(cti.requests)
    figures = PlanFigures(
        number=number,
        wall_s=wall,
        exit_code=done.returncode,
        calls=calls,
        logins=logins,
        listings=listings,
    )
    if done.returncode != PLAN_EXIT_CHANGES:
        tail = output.read_text(errors="replace").splitlines()[-10:]
        figures.problems.append(
            f"exit code {done.returncode}, expected {PLAN_EXIT_CHANGES}; output ends:\n    "
            + "\n    ".join(tail)
        )
    over = sorted(t for t in tenants if figures.calls[t] > CALLS_PER_TENANT)
    if over:
        figures.problems.append(
            f"{len(over)} tenants over {CALLS_PER_TENANT} calls, e.g. {over[0]}: "
            f"{figures.calls[over[0]]}"
        )
    missing = sorted(t for t in tenants if figures.logins[t] != 1 or figures.listings[t] != 1)
    if missing:
        figures.problems.append(
            f"{len(missing)} tenants without exactly one login and one listing, e.g. {missing[0]}"
        )
    strangers = sorted(set(figures.calls) - set(tenants))
    if strangers:
        figures.problems.append(f"requests of no tenant of the estate: {', '.join(strangers)}")
    return figures


# Run in a child, as the plans are, so the simulator does not share the interpreter's lock.
_CTI_READ = """
import json, sys, time
from provisioner.inventory import load_inventory
from provisioner.manifest import load_estate
from provisioner.pbx import read_pbx
estate, errors = load_estate([sys.argv[1]])
inventory = load_inventory(None)
started = time.perf_counter()
facts = read_pbx(estate, inventory, estate.tenants)
elapsed = time.perf_counter() - started
problems = [str(e) for e in errors[:1]] + [p.message for p in facts.problems]
print(json.dumps([elapsed, facts.calls, problems]))
"""


def time_cti_read(manifests: Path, environment: dict[str, str]) -> tuple[float, int]:
    """``(seconds, calls)`` of reading every tenant's PBX once, as a plan does."""
    done = subprocess.run(
        [sys.executable, "-c", _CTI_READ, str(manifests)],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"timing the CTI read failed: {done.stderr.strip()[-500:]}")
    elapsed, calls, problems = json.loads(done.stdout)
    if problems:
        raise SystemExit(f"reading the PBXs failed: {problems[0]}")
    return float(elapsed), int(calls)


def describe(figures: PlanFigures) -> str:
    per_tenant = list(figures.calls.values()) or [0]
    tenants = len(figures.calls)
    return (
        f"plan {figures.number}   wall {figures.wall_s:6.2f} s   CTI calls "
        f"{sum(per_tenant)} ({tenants} tenants): per tenant {span(per_tenant)}, logins "
        f"{span(list(figures.logins.values()))}, listings "
        f"{span(list(figures.listings.values()))}   "
        f"{'ok' if not figures.problems else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
