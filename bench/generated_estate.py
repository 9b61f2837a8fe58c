"""Manifests of a generated estate that the in-process lab can serve (the benches share them).

``write_estate(directory, EstateShape(servers=5, tenants=50, users_per_tenant=100))`` writes::

    site.yaml          the Site (WinRM and AD settings; the lab's inventory overrides WinRM)
    srv01.yaml ...     TapiServers: package, Telephony, CTI engine, location, firewall preset
                       plus ``extra_rules`` rules of their own
    t00000.yaml ...    Tenants, spread round-robin over the servers, each user with one line:
                       BENCH\\t7u42 gets extension "1042" of PBX K10007

Every tenant gets its own TSP instance (its K-account), so a server with 50 tenants ends up
with 50 instances and 5,000 line assignments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.lab.cti_api import BASE_PATH
from provisioner.lab.windows_host import lab_package_sha256

FIRST_EXTENSION = 1000
PRESET_RULES = 9  # rules the nfon-tapi-server preset expands to

SITE = """\
kind: Site
name: bench
directory:
  netbios_domain: BENCH
  ldap_url: ldaps://dc1.bench.test
  bind_user: svc-provisioner@bench.test
  bind_password: {env: BENCH_AD_BIND_PASSWORD}
domain_controllers: [10.0.0.10]
dns_servers: [10.0.0.10]
winrm:
  scheme: https
  auth: ntlm
  user: BENCH\\svc-deploy
  password: {env: BENCH_WINRM_PASSWORD}
"""

SERVER = """\
kind: TapiServer
name: srv{n:02d}
address: 10.0.1.{n}
client_subnets: [10.{n}.0.0/16]
telephony:
  server_mode: true
  administrators: [BENCH\\tapi-admins]
package:
  version: "1.0.0"
  source: https://files.bench.test/software/NFONTAPI-1.0.0.msi
  sha256: {sha256}
cti_engine:
  start_mode: auto
  state: running
location:
  name: Dresden
  country_code: 49
  area_code: "351"
  outside_access: "0"
firewall:
  presets: [nfon-tapi-server]
"""

RULE = """\
    - name: bench-in-{r:04d}
      direction: in
      protocol: tcp
      local_ports: [{port}]
      remote_addresses: [10.{n}.{third}.0/24]
      description: bench rule {r}
"""


@dataclass(frozen=True)
class EstateShape:
    servers: int
    tenants: int
    users_per_tenant: int
    extra_rules: int = 0  # firewall rules per server on top of the preset's

    @property
    def assignments(self) -> int:
        return self.tenants * self.users_per_tenant


def write_estate(directory: Path, shape: EstateShape) -> Path:
    """Write the manifests of ``shape`` into ``directory`` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "site.yaml").write_text(SITE)
    sha256 = lab_package_sha256("1.0.0")
    for n in range(1, shape.servers + 1):
        text = SERVER.format(n=n, sha256=sha256)
        if shape.extra_rules:
            text += "  rules:\n" + "".join(
                RULE.format(r=r, n=n, port=20_000 + r, third=r % 256)
                for r in range(shape.extra_rules)
            )
        (directory / f"srv{n:02d}.yaml").write_text(text)
    for t in range(shape.tenants):
        parts = [
            f"kind: Tenant\nname: t{t:05d}\nk_account: K{10_000 + t}\n"
            f"server: srv{t % shape.servers + 1:02d}\n"
            f"cti_password: {{env: K{10_000 + t}_CTI_PASSWORD}}\n"
            "number_format: international\nassignments:\n"
        ]
        for u in range(shape.users_per_tenant):
            parts.append(
                f"  - user: BENCH\\t{t}u{u}\n    friendly_name: User {u} of tenant {t}\n"
                f'    lines: ["{FIRST_EXTENSION + u}"]\n'
            )
        (directory / f"t{t:05d}.yaml").write_text("".join(parts))
    return directory


def span(values: list[int]) -> str:
    """``[2, 2, 2]`` → ``"2"``, ``[1, 3]`` → ``"1-3"``: a figure across hosts or tenants."""
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def cti_counts(requests: Iterable[Any]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Per tenant, the CTI API simulator's recorded requests: all calls, logins, listings."""
    calls: Counter[str] = Counter()
    logins: Counter[str] = Counter()
    listings: Counter[str] = Counter()
    for request in requests:
        tenant = request.tenant or "(none)"
        calls[tenant] += 1
        if request.method == "POST" and request.path == BASE_PATH + "/login":
            logins[tenant] += 1
        if request.method == "GET" and request.path == BASE_PATH + "/extensions/phone/data":
            listings[tenant] += 1
    return calls, logins, listings
