"""What one gather and one apply of a big TAPI server cost over WinRM; plans that lose no host.

    .venv/bin/python bench/winrm_gather.py
    .venv/bin/python bench/winrm_gather.py --latency-ms 0,20,50 --tenants 50 --users 100
    .venv/bin/python bench/winrm_gather.py --plans 20          # + 20 large plans in a row

The host is built the honest way: generated manifests for one server (``--tenants`` tenants, so
as many TSP instances, ``--users`` assigned lines each, ``--rules`` managed firewall rules
including the preset's) are applied once through the provisioner (``provisioner apply`` in a
child process) against the in-process lab. The bench then times
:meth:`provisioner.remote.host.RemoteHost.gather` against the host's simulated WinRM listener
(real pywinrm, HTTPS, NTLM), before the apply (an empty host) and after it, at each simulated
latency per WSMan message:

    host   latency  gather       cmds  messages  by action                    out bytes    wall
    full     20 ms  first           1         6  Create 1 Command 1 ...         1234567   0.3 s
    full     20 ms  open shell      1         4  Command 1 Send 1 Receive 1 ...

"first" opens the shell (Create; NTLM's 401 round trip is an HTTP reply, not a WSMan
message), as every plan does once per host; "open shell" is a further gather in the same shell.
Budget: one command per gather, and messages that grow only with the output (one Receive per
~100 KB of output, one Send per 100 KB of stdin), never with the number of resources. The
apply that builds the host is counted too (its gather, batches and verifying gather).

``--plans N`` then runs ``provisioner plan`` N times in a row (child processes) against a lab
of the large generated estate (``--plan-servers`` servers with ``--plan-tenants`` tenants of
``--users`` users), and fails unless every plan reached every host with exactly one gather
and without a problem ("20 consecutive large plans lose no host", issue 14).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generated_estate import PRESET_RULES, EstateShape, write_estate

from provisioner.connectors import Connector, over_winrm
from provisioner.inventory import load_inventory
from provisioner.lab.estate import Lab, LabHost
from provisioner.lab.windows_host import CommandResult
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.planner import Host
from provisioner.remote.contract import HostFacts
from provisioner.remote.tsecimp import parse_listing
from provisioner.runner import gather_request

SERVER = "srv01"
RECEIVE_BYTES = 100_000  # the most output the lab's listener puts in one Receive (as Windows)
SEND_BYTES = 100_000  # the most stdin the provisioner puts in one Send


@dataclass
class Measurement:
    host_state: str  # empty | full
    latency_ms: int
    gather: str  # first | open shell
    wall_s: float
    commands: int
    messages: dict[str, int]
    stdin_bytes: int
    stdout_bytes: int

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    def problems(self) -> list[str]:
        """What breaks the budget: a second command, or messages the output does not explain."""
        found = []
        if self.commands != 1:
            found.append(f"{self.commands} commands, budget 1")
        receives = self.messages.get("Receive", 0)
        allowed = math.ceil(self.stdout_bytes / RECEIVE_BYTES) + 1  # + the final, empty one
        if receives > allowed:
            found.append(f"{receives} Receives for {self.stdout_bytes} bytes, budget {allowed}")
        sends = self.messages.get("Send", 0)
        if sends > math.ceil(self.stdin_bytes / SEND_BYTES):
            found.append(f"{sends} Sends for {self.stdin_bytes} bytes of stdin")
        fixed = {"Command": 1, "Signal": 1, "Create": 1 if self.gather == "first" else 0}
        for action, count in fixed.items():
            if self.messages.get(action, 0) != count:
                found.append(f"{self.messages.get(action, 0)} {action}, budget {count}")
        return found


class OutputMeter:
    """Wraps the simulated host's command handler to note the bytes each command printed."""

    def __init__(self, handler: Callable[[str, list[str], bytes], CommandResult]) -> None:
        self.handler = handler
        self.stdout_bytes = 0
        self.stdin_bytes = 0

    def __call__(self, command: str, arguments: list[str], stdin: bytes) -> CommandResult:
        result = self.handler(command, arguments, stdin)
        self.stdin_bytes = len(stdin)
        self.stdout_bytes = len(result.stdout)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", default="0,20", help="comma-separated, per WSMan message")
    parser.add_argument("--tenants", type=int, default=50, help="TSP instances on the server")
    parser.add_argument("--users", type=int, default=100, help="assigned lines per tenant")
    parser.add_argument("--rules", type=int, default=200, help="managed firewall rules")
    parser.add_argument("--plans", type=int, default=0, help="consecutive large plans to run")
    parser.add_argument("--plan-servers", type=int, default=20, help="servers of the plans' lab")
    parser.add_argument("--plan-tenants", type=int, default=1_000, help="tenants, all servers")
    args = parser.parse_args()
    latencies = [int(x) for x in args.latency_ms.split(",") if x.strip()]
    if args.rules < PRESET_RULES:
        parser.error(f"--rules counts the preset's {PRESET_RULES} rules: give at least that")
    shape = EstateShape(1, args.tenants, args.users, extra_rules=args.rules - PRESET_RULES)

    with tempfile.TemporaryDirectory(prefix="winrm-gather-") as workdir:
        work = Path(workdir)
        manifests = write_estate(work / "manifests", shape)
        with Lab(work / "lab", [manifests]) as lab:
            estate, errors = load_estate([manifests])
            if errors:
                raise SystemExit(f"generated manifests do not validate: {errors[0]}")
            host = lab.hosts[SERVER]
            meter = OutputMeter(host.server.handler)
            host.server.handler = meter
            results: list[Measurement] = []
            for ms in latencies:
                results += measure(lab, estate, host, meter, "empty", ms)
            host.server.counters.reset()
            apply_through_provisioner(lab, manifests, work)
            print_apply(host)
            facts = gather_once(lab, estate)
            describe_host(facts, shape)
            for ms in latencies:
                results += measure(lab, estate, host, meter, "full", ms)
    print_table(results)
    problems = [
        f"{m.host_state} {m.latency_ms} ms {m.gather}: {problem}"
        for m in results
        for problem in m.problems()
    ]
    print()
    for problem in problems:
        print(f"OVER BUDGET: {problem}")
    if problems:
        raise SystemExit(1)
    print("budget met: one command per gather; messages follow the output size only")
    if args.plans:
        shape = EstateShape(args.plan_servers, args.plan_tenants, args.users)
        consecutive_plans(args.plans, shape)


def print_apply(host: LabHost) -> None:
    """What the apply that built the host cost it: its gathers and batches, message by message."""
    counters = host.server.counters
    actions = " ".join(f"{name} {count}" for name, count in sorted(counters.messages.items()))
    print(
        f"apply of {SERVER}: {counters.commands} commands, {counters.total_messages} messages "
        f"({actions}; Delete ends the run's shell)"
    )


@dataclass
class PlanRun:
    number: int
    wall_s: float
    code: int
    hosts: int  # hosts that got exactly one gather
    problems: list[str]
    retries: list[str]  # the "retried in a fresh shell" lines on stderr


def consecutive_plans(count: int, shape: EstateShape) -> None:
    with tempfile.TemporaryDirectory(prefix="winrm-plans-") as workdir:
        work = Path(workdir)
        manifests = write_estate(work / "manifests", shape)
        with Lab(work / "lab", [manifests]) as lab:
            print(
                f"\n{count} consecutive plans: {shape.servers} servers, {shape.tenants} tenants, "
                f"{shape.assignments} assignments"
            )
            environment = os.environ | {
                "PROVISIONER_INVENTORY": str(lab.inventory_path),
                "PROVISIONER_STATE_DIR": str(work / "state"),
            }
            runs = [plan_once(lab, manifests, environment, n) for n in range(1, count + 1)]
    lost = [run for run in runs if run.code != 2 or run.problems or run.hosts != shape.servers]
    walls = sorted(run.wall_s for run in runs)
    print(
        f"plans: {len(runs)}, hosts reached: {sum(r.hosts for r in runs)} of "
        f"{len(runs) * shape.servers}, plans with a problem: {len(lost)}, retries: "
        f"{sum(len(r.retries) for r in runs)}, wall median {walls[len(walls) // 2]:.1f} s, "
        f"max {walls[-1]:.1f} s"
    )
    for run in lost:
        print(f"LOST: plan {run.number} exit {run.code}: {'; '.join(run.problems)[:300]}")
    if lost:
        raise SystemExit(1)
    print(f"no host lost in {len(runs)} consecutive plans")


def plan_once(lab: Lab, manifests: Path, environment: dict[str, str], number: int) -> PlanRun:
    for host in lab.hosts.values():
        host.server.counters.reset()
    argv = ["plan", "--detailed-exitcode", "--format", "json", str(manifests)]
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "provisioner", *argv],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    try:
        problems = [p["message"] for p in json.loads(child.stdout).get("problems", [])]
    except json.JSONDecodeError:
        problems = [child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "no JSON"]
    run = PlanRun(
        number,
        wall,
        child.returncode,
        sum(1 for host in lab.hosts.values() if host.server.counters.commands == 1),
        problems,
        [line for line in child.stderr.splitlines() if "retried in a fresh shell" in line],
    )
    print(
        f"  plan {number:>2}: exit {run.code}, {run.hosts} hosts, {len(run.problems)} problems, "
        f"{len(run.retries)} retries, {wall:.1f} s",
        flush=True,
    )
    return run


def apply_through_provisioner(lab: Lab, manifests: Path, work: Path) -> None:
    environment = os.environ | {
        "PROVISIONER_INVENTORY": str(lab.inventory_path),
        "PROVISIONER_STATE_DIR": str(work / "state"),
    }
    started = time.perf_counter()
    applied = subprocess.run(
        [sys.executable, "-m", "provisioner", "apply", "--auto-approve", str(manifests)],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if applied.returncode != 0:
        tail = "\n".join((applied.stdout + applied.stderr).splitlines()[-15:])
        raise SystemExit(f"the apply that builds the host failed:\n{tail}")
    print(f"host built by 'provisioner apply' in {time.perf_counter() - started:.1f} s")


def remote_for(lab: Lab, estate: Estate) -> tuple[Connector, Host]:
    host = Host(f"server/{SERVER}", SERVER, "server")
    return over_winrm(estate, load_inventory(lab.inventory_path))(host), host


def gather_once(lab: Lab, estate: Estate) -> HostFacts:
    remote, host = remote_for(lab, estate)
    with remote:
        return remote.gather(gather_request(estate, host))


def measure(
    lab: Lab, estate: Estate, lab_host: LabHost, meter: OutputMeter, state: str, latency_ms: int
) -> list[Measurement]:
    server = lab_host.server
    server.faults.latency_s = latency_ms / 1000
    remote, host = remote_for(lab, estate)
    request = gather_request(estate, host)
    found = []
    try:
        for which in ("first", "open shell"):
            server.counters.reset()
            started = time.perf_counter()
            remote.gather(request)
            wall = time.perf_counter() - started
            found.append(
                Measurement(
                    state,
                    latency_ms,
                    which,
                    wall,
                    server.counters.commands,
                    dict(server.counters.messages),
                    meter.stdin_bytes,
                    meter.stdout_bytes,
                )
            )
    finally:
        remote.close()
        server.faults.latency_s = 0.0
    return found


def describe_host(facts: HostFacts, shape: EstateShape) -> None:
    listing = parse_listing(facts.tsecimp_listing or "")
    lines = sum(len(p.lines) for p in listing)
    assigned = sum(1 for p in listing for line in p.lines if line.users)
    print(
        f"host {SERVER}: {len(facts.tsp_instances)} TSP instances, {lines} lines listed "
        f"({assigned} assigned), {len(facts.firewall_rules)} managed firewall rules "
        f"(asked for {shape.tenants} instances, {shape.assignments} assignments)"
    )


def print_table(rows: list[Measurement]) -> None:
    header = (
        f"{'host':<6} {'latency':>8}  {'gather':<11} {'cmds':>4} {'messages':>8}  "
        f"{'by action':<46} {'stdin B':>8} {'stdout B':>9} {'wall s':>7}"
    )
    print()
    print(header)
    print("-" * len(header))
    for m in rows:
        actions = " ".join(f"{name} {count}" for name, count in sorted(m.messages.items()))
        print(
            f"{m.host_state:<6} {m.latency_ms:>5} ms  {m.gather:<11} {m.commands:>4} "
            f"{m.total_messages:>8}  {actions:<46} {m.stdin_bytes:>8} {m.stdout_bytes:>9} "
            f"{m.wall_s:>7.3f}"
        )


if __name__ == "__main__":
    main()
