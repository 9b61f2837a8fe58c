"""What the first-contact tools cost: doctor's WinRM commands and messages, conformance's time.

    .venv/bin/python bench/first_contact.py
    .venv/bin/python bench/first_contact.py --runs 10

``doctor`` runs against the client-tapi example's lab hosts after ``provisioner apply`` (the
server and a workstation) over the real transport (pywinrm, HTTPS, NTLM); the lab's listener
counts what arrives. The conformance suite runs on a lab test server
(``examples/first-contact/tapitest.yaml`` beside the example's Site, applied first): in-process
(the lab model's handler called directly) and over WS-Management (pywinrm, HTTPS, NTLM)::

    doctor tapi01: 1 command, 6 messages (Create 1, Command 1, Send 1, Receive 1, ...)
    conformance in-process: 10 cases, median 0.02 s
    conformance over WS-Management: 10 cases, median 0.25 s, 25 commands, 102 messages per run

Budget: ONE command per doctor run and at most 8 WSMan messages; the conformance suite under
1 s in-process and under 20 s over WS-Management (medians).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provisioner.conformance import run_cases
from provisioner.connectors import Connect, endpoint_for, in_process, over_winrm
from provisioner.doctor import diagnose
from provisioner.inventory import load_inventory
from provisioner.lab.estate import Lab
from provisioner.lab.windows_host import WindowsHost, WindowsHostState
from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.planner import Host, hosts, profile_for
from provisioner.runner import gather_request

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "manifests" / "examples" / "client-tapi"
TEST_SERVER = ROOT / "examples" / "first-contact" / "tapitest.yaml"
DOCTOR_MESSAGES = 8
CONFORMANCE_BUDGET_S = {"in-process": 1.0, "over WS-Management": 20.0}


def load(manifests: Path) -> Estate:
    estate, errors = load_estate([manifests])
    if errors:
        raise SystemExit(f"{manifests} does not validate: {errors[0]}")
    return estate


def apply(lab: Lab, manifests: Path, work: Path) -> None:
    environment = os.environ | {
        "PROVISIONER_INVENTORY": str(lab.inventory_path),
        "PROVISIONER_STATE_DIR": str(work / "state"),
    }
    command = [sys.executable, "-m", "provisioner", "apply", "--auto-approve", str(manifests)]
    applied = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if applied.returncode != 0:
        raise SystemExit(f"the apply failed:\n{(applied.stdout + applied.stderr)[-2000:]}")


def doctor_costs(work: Path, problems: list[str]) -> None:
    with Lab(work / "doctor-lab", [EXAMPLE]) as lab:
        apply(lab, EXAMPLE, work)
        estate, inventory = load(EXAMPLE), load_inventory(lab.inventory_path)
        for host in [h for h in hosts(estate) if h.name in ("tapi01", "ws-0101")]:
            counters = lab.hosts[host.name].server.counters
            counters.reset()
            endpoint = endpoint_for(estate, inventory, host)
            report = diagnose(estate, host, endpoint, over_winrm(estate, inventory))
            each = ", ".join(f"{action} {n}" for action, n in sorted(counters.messages.items()))
            print(
                f"doctor {host.name}: {counters.commands} command, {counters.total_messages} "
                f"messages ({each}); {'passed' if report.passed else 'FAILED'}"
            )
            if counters.commands != 1 or counters.total_messages > DOCTOR_MESSAGES:
                problems.append(
                    f"doctor {host.name}: {counters.commands} commands, "
                    f"{counters.total_messages} messages"
                )


def conformance_times(work: Path, runs: int, problems: list[str]) -> None:
    manifests = work / "testbed"
    manifests.mkdir()
    shutil.copy(EXAMPLE / "site.yaml", manifests)
    shutil.copy(TEST_SERVER, manifests)
    estate = load(manifests)
    host = Host("server/tapitest", "tapitest", "server")
    request, profile = gather_request(estate, host), profile_for(estate, host)
    with Lab(work / "conformance-lab", [manifests]) as lab:
        apply(lab, manifests, work)
        built = lab.hosts["tapitest"].windows.state.to_json()
        model = WindowsHost(WindowsHostState.from_json(built))
        connects: dict[str, Connect] = {
            "in-process": in_process({"tapitest": model}),
            "over WS-Management": over_winrm(estate, load_inventory(lab.inventory_path)),
        }
        counters = lab.hosts["tapitest"].server.counters
        for name, connect in connects.items():
            walls = []
            for _ in range(runs):
                counters.reset()
                started = time.perf_counter()
                with connect(host) as connector:
                    results = run_cases(connector, request, profile)
                walls.append(time.perf_counter() - started)
                failed = [r.name for r in results if not r.passed]
                if failed:
                    problems.append(f"conformance {name}: failed {', '.join(failed)}")
            median = statistics.median(walls)
            sent = f", {counters.commands} commands, {counters.total_messages} messages per run"
            print(
                f"conformance {name}: {len(results)} cases, median {median:.3f} s "
                f"(min {min(walls):.3f}, max {max(walls):.3f}, {runs} runs)"
                + (sent if counters.commands else "")
            )
            if median > CONFORMANCE_BUDGET_S[name]:
                problems.append(f"conformance {name}: {median:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="conformance runs per connector")
    options = parser.parse_args()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-first-contact-") as temporary:
        doctor_costs(Path(temporary), problems)
        conformance_times(Path(temporary), options.runs, problems)
    for problem in problems:
        print(f"over budget: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
