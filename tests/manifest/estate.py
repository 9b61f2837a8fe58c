"""A small valid estate as YAML text, for tests that break one thing at a time."""

from __future__ import annotations

from pathlib import Path

SITE = """\
kind: Site
name: lab
directory:
  netbios_domain: NFON
  ldap_url: ldaps://dc1.nfon.test
  bind_user: svc@nfon.test
  bind_password: {env: AD_PW}
domain_controllers: [10.0.0.10]
dns_servers: [10.0.0.10]
winrm:
  scheme: https
  auth: ntlm
  user: NFON\\deploy
  password: {env: WINRM_PW}
"""

SERVER = """\
kind: TapiServer
name: tapi01
address: 10.0.1.20
client_subnets: [10.0.2.0/24]
firewall:
  presets: [nfon-tapi-server]
"""

TENANT = """\
kind: Tenant
name: k6732
k_account: K6732
server: tapi01
cti_password: {env: K6732_PW}
assignments:
  - user: NFON\\alice
    lines: ["100"]
  - user: NFON\\bob
    lines: ["101", "102"]
"""

CLIENTS = """\
kind: TapiClients
name: office
hosts: [ws1, ws2]
servers: [tapi01]
"""

FILES = {"site.yaml": SITE, "tapi01.yaml": SERVER, "k6732.yaml": TENANT, "clients.yaml": CLIENTS}


def write_estate(directory: Path, **replace: str | bytes) -> Path:
    """Write the estate to ``directory``; keyword arguments replace files (``k6732_yaml=...``)."""
    files: dict[str, str | bytes] = dict(FILES)
    for key, text in replace.items():
        files[key.replace("_yaml", ".yaml")] = text
    for name, text in files.items():
        path = directory / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return directory
