"""Active Directory at scale against a real Samba AD DC, with its budgets.

Run from the repository root, as root, in a network namespace of its own (Samba's ports are
fixed)::

    unshare --net --fork sh -c 'ip link set lo up; .venv/bin/python bench/ldap_scale.py'
    .venv/bin/python bench/ldap_scale.py --users 2000 --rounds 1    # a quick look

It starts a DC for the generated estates' domain (BENCH) in a temporary directory and measures:

    seed     the lab's bulk seeding: N users in one LDIF import          budget 30 s (10,000)
    lookup   N users looked up as a plan does, over the pool             budget 3 s (10,000)
             (and, for comparison, on one connection), medians of --rounds
    plan     `provisioner plan` of the medium generated estate (5,000 users) against the lab,
             with AD and with AD turned off in the inventory, interleaved, medians of --rounds:
             with AD at most 1.5 times without

Each phase prints one line; the last lines say which budgets were missed (exit 1 if any).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generated_estate import EstateShape, write_estate
from ruamel.yaml import YAML

from provisioner.directory.facts import lookup_users, resolve_domain
from provisioner.directory.reader import MAX_CONNECTIONS
from provisioner.lab.estate import Lab
from provisioner.lab.samba import LabUser, SambaDC, ou_ldif, users_ldif
from provisioner.transports.ldap import LDAPPool

SEED_BUDGET_S = 30.0  # for 10,000 users
LOOKUP_BUDGET_S = 3.0  # for 10,000 users
PLAN_RATIO_BUDGET = 1.5  # plan with AD / plan without, medium estate
MEDIUM = EstateShape(servers=5, tenants=50, users_per_tenant=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="users to seed and look up")
    parser.add_argument("--rounds", type=int, default=3, help="lookups and plans of each kind")
    args = parser.parse_args()
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ldap-scale-") as workdir:
        work = Path(workdir)
        dc = SambaDC.start(work / "dc", realm="BENCH.TEST", netbios="BENCH", progress=_say)
        try:
            sams = seed(dc, args.users, missed)
            lookup(dc, sams, missed, args.rounds)
            plan(dc, work, args.rounds, missed)
        finally:
            dc.stop()
    print()
    for line in missed:
        print(f"OVER BUDGET: {line}")
    if missed:
        raise SystemExit(1)
    print("all budgets met")


def seed(dc: SambaDC, count: int, missed: list[str]) -> list[str]:
    sams = [f"scale{n:06d}" for n in range(count)]
    container = f"OU=Scale,{dc.domain_dn}"
    users = [LabUser(sam, display_name=f"Scale user {n}") for n, sam in enumerate(sams)]
    started = time.perf_counter()
    ldif = ou_ldif(container) + users_ldif(container, users, realm=dc.realm)
    said = dc.import_ldif(ldif)
    elapsed = time.perf_counter() - started
    budget = SEED_BUDGET_S * count / 10_000
    print(f"seed    {count:6d} users   {elapsed:6.1f} s  budget {budget:4.1f} s  ({said})")
    if elapsed > budget:
        missed.append(f"seeding {count} users took {elapsed:.1f} s, budget {budget:.1f} s")
    return sams


def lookup(dc: SambaDC, sams: list[str], missed: list[str], rounds: int) -> None:
    with dc.admin_connection() as conn:
        domain = resolve_domain(conn, dc.netbios)
    timings: dict[int, list[float]] = {1: [], MAX_CONNECTIONS: []}
    for _ in range(rounds):
        for size in timings:
            with LDAPPool(dc.ldap_settings(), size=size) as pool:
                started = time.perf_counter()
                found = lookup_users(pool, domain, sams)
                timings[size].append(time.perf_counter() - started)
                operations = pool.operations
    pooled, single = (statistics.median(timings[size]) for size in (MAX_CONNECTIONS, 1))
    budget = LOOKUP_BUDGET_S * len(sams) / 10_000
    print(
        f"lookup  {len(found):6d} found   {pooled:6.2f} s  budget {budget:4.1f} s  "
        f"({MAX_CONNECTIONS} connections, {operations} LDAP operations; one connection: "
        f"{single:.2f} s; medians of {rounds})"
    )
    if len(found) != len(sams):
        missed.append(f"lookup found {len(found)} of {len(sams)} users")
    if pooled > budget:
        missed.append(f"looking up {len(sams)} users took {pooled:.2f} s, budget {budget:.1f} s")


def plan(dc: SambaDC, work: Path, rounds: int, missed: list[str]) -> None:
    manifests = write_estate(work / "medium", MEDIUM)
    with Lab(work / "lab", [manifests], dc=dc, progress=_say) as lab:
        without = _without_directory(lab.inventory_path, work / "inventory-no-ad.yaml")
        timings: dict[str, list[float]] = {"with AD": [], "without AD": []}
        for _ in range(rounds):
            for name, inventory in (("with AD", lab.inventory_path), ("without AD", without)):
                timings[name].append(_timed_plan(manifests, inventory, work))
    with_ad, without_ad = (statistics.median(timings[k]) for k in ("with AD", "without AD"))
    ratio = with_ad / without_ad
    print(
        f"plan    {MEDIUM.assignments:6d} users   {with_ad:6.2f} s with AD, {without_ad:.2f} s "
        f"without: {ratio:.2f}x  budget {PLAN_RATIO_BUDGET}x  (medians of {rounds})"
    )
    if ratio > PLAN_RATIO_BUDGET:
        missed.append(f"plan with AD is {ratio:.2f}x the plan without, budget {PLAN_RATIO_BUDGET}x")


def _without_directory(inventory: Path, copy: Path) -> Path:
    yaml = YAML()
    document = yaml.load(inventory.read_text(encoding="utf-8"))
    document["directory"] = {"enabled": False}
    with copy.open("w", encoding="utf-8") as stream:
        yaml.dump(document, stream)
    return copy


def _timed_plan(manifests: Path, inventory: Path, work: Path) -> float:
    environment = os.environ | {
        "PROVISIONER_INVENTORY": str(inventory),
        "PROVISIONER_STATE_DIR": str(work / "state"),
    }
    command = [sys.executable, "-m", "provisioner", "plan", "--detailed-exitcode", str(manifests)]
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 2:  # changes, and no problem
        tail = "\n".join(done.stdout.splitlines()[-15:] + done.stderr.splitlines()[-5:])
        raise SystemExit(f"plan exited {done.returncode}, expected 2:\n{tail}")
    return elapsed


def _say(message: str) -> None:
    print(f"  lab: {message}", flush=True)


if __name__ == "__main__":
    main()
