"""What sending a package from the workstation costs over WinRM: commands, Sends, bytes, time.

    .venv/bin/python bench/package_upload.py
    .venv/bin/python bench/package_upload.py --megabytes 5,20 --latency-ms 0,20

A package given as a file on the admin workstation reaches the host through the upload script,
before the batch that installs it: ONE command whose stdin carries the file in base64, in
Sends below the envelope limit. The bench times :meth:`RemoteHost.upload` of a random file of
each size against the lab's WinRM listener for the client-tapi example's server (real pywinrm,
HTTPS, NTLM), at each simulated latency per WSMan message:

    MB  latency  cmds  sends  stdin bytes     wall
     5    20 ms     1     70      6990000    2.1 s

Budget: one command per upload, and Sends that grow only with the file (one per ~100 KB of
stdin). The time is printed, not budgeted (it depends on the machine and the network).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from provisioner.connectors import over_winrm
from provisioner.inventory import load_inventory
from provisioner.lab.estate import Lab
from provisioner.manifest import load_estate
from provisioner.planner import Host

EXAMPLE = Path(__file__).resolve().parents[1] / "manifests" / "examples" / "client-tapi"
SERVER = "tapi01"
SEND_BYTES = 100_000  # the most stdin the provisioner puts in one Send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", default="1,10", help="file sizes, comma-separated")
    parser.add_argument("--latency-ms", default="0,20", help="latencies per WSMan message")
    options = parser.parse_args()
    sizes = [float(x) for x in options.megabytes.split(",")]
    latencies = [int(x) for x in options.latency_ms.split(",")]
    estate, errors = load_estate([EXAMPLE])
    if errors:
        raise SystemExit(f"the example does not validate: {errors[0]}")
    problems = []
    print(f"{'MB':>6} {'latency':>8} {'cmds':>5} {'sends':>6} {'stdin bytes':>12} {'wall':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as temporary:
        work = Path(temporary)
        with Lab(work / "lab", [EXAMPLE]) as lab:
            server = lab.hosts[SERVER].server
            host = Host(f"server/{SERVER}", SERVER, "server")
            connect = over_winrm(estate, load_inventory(lab.inventory_path))
            for size in sizes:
                package = work / "NFONTAPI.msi"
                package.write_bytes(os.urandom(int(size * 2**20)))
                sha256 = hashlib.sha256(package.read_bytes()).hexdigest()
                for latency in latencies:
                    server.faults.latency_s = latency / 1000
                    server.counters.reset()
                    with connect(host) as remote:
                        started = time.perf_counter()
                        response = remote.upload(package, sha256)
                        wall = time.perf_counter() - started
                    counters = server.counters
                    stdin = sum(len(p) for p in counters.stdin_payloads)
                    sends = counters.messages.get("Send", 0)
                    print(
                        f"{size:>6g} {latency:>5} ms {counters.commands:>5} {sends:>6} "
                        f"{stdin:>12} {wall:>6.1f} s"
                    )
                    if response.sha256 != sha256:
                        problems.append(f"{size} MB: the host kept {response.sha256}")
                    if counters.commands != 1:
                        problems.append(f"{size} MB: {counters.commands} commands, budget 1")
                    if sends > math.ceil(stdin / SEND_BYTES):
                        problems.append(f"{size} MB: {sends} Sends for {stdin} bytes of stdin")
    for problem in problems:
        print(f"over budget: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
