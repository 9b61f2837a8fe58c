"""How lookup_users scales: create many users in a real Samba AD DC, then resolve them all.

Run from the repository root (as root, Samba's ports are privileged)::

    .venv/bin/python bench/ldap_scale.py               # 10,000 users, batches of 300
    .venv/bin/python bench/ldap_scale.py --users 2000 --batch-size 500

It joins a lab DC that is already running (e.g. under a test session) or starts its own in a
temporary directory, and prints one line per phase:

    create   10000 users     10000 LDAP operations    64.2 s
    lookup   10000 found        37 LDAP operations      36 searches     2.6 s  (batches of 300; ...)

Users it creates in a DC it joined stay there until that DC stops (its data is thrown away then).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from provisioner.directory.facts import lookup_users, resolve_domain
from provisioner.lab.samba import LabUser, SambaDC, create_users, ensure_ou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ldap-scale-") as workdir:
        dc = SambaDC.start(Path(workdir), shared=True)
        try:
            run(dc, args.users, args.batch_size)
        finally:
            dc.stop()


def run(dc: SambaDC, count: int, batch_size: int) -> None:
    tag = secrets.token_hex(3)
    sams = [f"s{tag}{n:06d}" for n in range(count)]
    with dc.admin_connection() as conn:
        ou = ensure_ou(conn, f"OU=Scale {tag},{dc.domain_dn}")
        started, before = time.perf_counter(), conn.operations
        create_users(conn, ou, (LabUser(sam) for sam in sams), realm=dc.realm)
        elapsed = time.perf_counter() - started
        operations = conn.operations - before
        print(f"create  {count:6d} users  {operations:8d} LDAP operations  {elapsed:6.1f} s")

    started = time.perf_counter()
    with dc.admin_connection() as conn:
        domain = resolve_domain(conn, dc.netbios)
        users = lookup_users(conn, domain, sams, batch_size=batch_size)
        operations, searches = conn.operations, conn.searches
    elapsed = time.perf_counter() - started
    print(
        f"lookup  {len(users):6d} found  {operations:8d} LDAP operations  "
        f"{searches:6d} searches  {elapsed:6.1f} s  (batches of {batch_size}; bind + domain incl.)"
    )
    if len(users) != count:
        raise SystemExit(f"expected {count} users, found {len(users)}")


if __name__ == "__main__":
    main()
