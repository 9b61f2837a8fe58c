"""Load and validate a generated estate of 1,000 tenant files with 100,000 line assignments.

    python bench/validate_scale.py [--tenants 1000] [--users 100]

Prints wall time for load+validate and the peak memory of the process that did it (measured in
a fresh child process, so generation does not count). Target: 100,000 assignments under 10 s.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SITE = """\
kind: Site
name: bench
directory:
  netbios_domain: BENCH
  ldap_url: ldaps://dc1.bench.test
  bind_user: svc@bench.test
  bind_password: {env: BENCH_AD}
domain_controllers: [10.0.0.10]
dns_servers: [10.0.0.10]
"""

SERVER = """\
kind: TapiServer
name: srv{n:02d}
address: 10.0.1.{host}
client_subnets: [10.0.{n}.0/24]
firewall: {{presets: [nfon-tapi-server]}}
"""


def generate(directory: Path, tenants: int, users: int, servers: int = 20) -> None:
    (directory / "site.yaml").write_text(SITE)
    for n in range(servers):
        (directory / f"srv{n:02d}.yaml").write_text(SERVER.format(n=n + 2, host=n + 10))
    for t in range(tenants):
        parts = [
            f"kind: Tenant\nname: t{t:05d}\nk_account: K{t + 10000}\n"
            f"server: srv{t % servers + 2:02d}\n"
            f"cti_password: {{env: K{t + 10000}_CTI}}\nnumber_format: international\n"
            "assignments:\n"
        ]
        for u in range(users):
            parts.append(
                f"  - user: BENCH\\t{t}u{u}\n    friendly_name: User {u} of tenant {t}\n"
                f'    lines: ["{1000 + u}"]\n'
            )
        (directory / f"t{t:05d}.yaml").write_text("".join(parts))


def measure(directory: Path) -> None:
    from provisioner.manifest import load_estate

    start = time.perf_counter()
    estate, errors = load_estate([directory])
    elapsed = time.perf_counter() - start
    assignments = sum(len(t.assignments) for t in estate.tenants.values())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"files:        {len(estate.files)}")
    print(f"assignments:  {assignments}")
    print(f"problems:     {len(errors)}")
    print(f"load+validate {elapsed:.2f} s")
    print(f"peak RSS      {peak_mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        generate(directory, args.tenants, args.users)
        size = sum(p.stat().st_size for p in directory.iterdir()) / 1e6
        print(
            f"generated {args.tenants} tenants x {args.users} users, {size:.1f} MB "
            f"in {time.perf_counter() - started:.1f} s"
        )
        subprocess.run([sys.executable, __file__, "--measure", str(directory)], check=True)


if __name__ == "__main__":
    main()
