"""A lab estate: simulated Windows hosts and a simulated CTI API for a set of manifests.

Every TapiServer and every TapiClients host of the manifests gets a simulated Windows host behind
its own WS-Management listener (HTTPS with a lab CA, NTLM); every tenant's K-account gets a PBX
in the simulated CTI API whose extensions are the lines the manifests assign, plus a spare. The
lab writes ``inventory.yaml``, which maps the manifest names to the lab endpoints and carries a
value for every ``{env: NAME}`` reference the manifests use, so they run against the lab
unchanged::

    with Lab(Path("lab"), [Path("manifests/examples/client-tapi")]) as lab:
        lab.inventory_path      # lab/inventory.yaml
        lab.hosts["tapi01"]     # LabHost(name="tapi01", role="server", ...)
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML

from provisioner.errors import ProvisionerError
from provisioner.lab.cti_api import PBX, CTIAPISimulator
from provisioner.lab.directory import LabDirectory, counted, start_lab_directory
from provisioner.lab.samba import Progress, SambaDC
from provisioner.lab.tls import ensure_lab_tls
from provisioner.lab.windows_host import AdminSetup, WindowsHost
from provisioner.lab.wsman_server import WSManServer
from provisioner.manifest import load_estate
from provisioner.manifest.models import SecretRef, Site, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.planner import Host, profile_for
from provisioner.secrets import Secret

LAB_USER = "lab-admin"
WINRM_PASSWORD_VARIABLE = "PROVISIONER_LAB_WINRM_PASSWORD"
DIRECTORY_PASSWORD_VARIABLE = "PROVISIONER_LAB_AD_PASSWORD"


@dataclass
class LabHost:
    name: str
    role: str
    windows: WindowsHost
    server: WSManServer

    @property
    def port(self) -> int:
        return self.server.port


@dataclass(frozen=True)
class LabDomain:
    """The AD domain a Site names: ``LabDomain(netbios="NFON", realm="NFON.TEST")``."""

    netbios: str
    realm: str


@dataclass
class LabPlan:
    """What the lab must simulate, read from the manifests."""

    servers: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    pbx_lines: dict[str, set[str]] = field(default_factory=dict)  # K-account → extensions
    cti_variables: dict[str, str] = field(default_factory=dict)  # env name → K-account
    other_variables: set[str] = field(default_factory=set)
    # user key → (DOMAIN\sam as the manifests first spell it, display name)
    users: dict[str, tuple[str, str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)  # group key → DOMAIN\group
    domains: list[LabDomain] = field(default_factory=list)  # in the order the Sites came
    setup: dict[str, AdminSetup] = field(default_factory=dict)  # server → its admin's work
    estates: dict[str, set[str]] = field(default_factory=dict)  # manifest path → its hosts

    @property
    def domain(self) -> LabDomain | None:
        """The domain the lab's DC serves: the first Site's (one DC fits in a lab)."""
        return self.domains[0] if self.domains else None

    @property
    def empty(self) -> bool:
        return not (self.servers or self.clients or self.pbx_lines)


def site_domain(site: Site) -> LabDomain:
    """The Site's NetBIOS domain, and a realm from its bind UPN or its LDAP URL's host name."""
    directory = site.directory
    upn_suffix = directory.bind_user.rpartition("@")[2] if "@" in directory.bind_user else ""
    host = urlsplit(directory.ldap_url).hostname or ""
    labels = [] if _is_address(host) else host.split(".")
    if upn_suffix:
        realm = upn_suffix
    elif len(labels) > 2:
        realm = ".".join(labels[1:])  # dc1.acme.test → acme.test
    elif len(labels) == 2:
        realm = host
    else:
        realm = f"{directory.netbios_domain}.test"
    return LabDomain(directory.netbios_domain.upper(), realm.upper())


def _is_address(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def read_manifests(paths: Iterable[Path]) -> LabPlan:
    """Each path is loaded as its own estate (the examples are separate estates)."""
    plan = LabPlan()
    for path in paths:
        estate, errors = load_estate([path])
        if errors:
            raise ProvisionerError(f"{errors[0]} (lab: the manifests must validate)")
        _add_estate(plan, estate)
        hosts = {h for clients in estate.clients.values() for h in clients.hosts}
        plan.estates[path.name or str(path)] = set(estate.servers) | hosts
    return plan


def _add_estate(plan: LabPlan, estate: Estate) -> None:
    for name, server in estate.servers.items():
        if name not in plan.servers:
            plan.servers.append(name)
        host = Host(f"server/{name}", name, "server")
        plan.setup.setdefault(name, AdminSetup()).learn(server, profile_for(estate, host))
    for clients in estate.clients.values():
        plan.clients.extend(h for h in clients.hosts if h not in plan.clients)
    for site in estate.sites.values():
        domain = site_domain(site)
        if domain.netbios not in {d.netbios for d in plan.domains}:
            plan.domains.append(domain)
    for tenant in estate.tenants.values():
        lines = plan.pbx_lines.setdefault(tenant.k_account, set())
        for assignment in tenant.assignments:
            lines.update(assignment.lines)
            plan.users.setdefault(
                domain_user_key(assignment.user),
                (assignment.user, assignment.friendly_name or assignment.user.split("\\")[1]),
            )
        if tenant.users_group:
            plan.groups.setdefault(domain_user_key(tenant.users_group), tenant.users_group)
        if tenant.cti_password.env:
            plan.cti_variables[tenant.cti_password.env] = tenant.k_account
    for ref in _secret_refs(estate):
        if ref.env and ref.env not in plan.cti_variables:
            plan.other_variables.add(ref.env)


def _secret_refs(estate: Estate) -> Iterable[SecretRef]:
    def walk(value: Any) -> Iterable[SecretRef]:
        if isinstance(value, SecretRef):
            yield value
        elif hasattr(type(value), "model_fields"):
            for name in type(value).model_fields:
                yield from walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                yield from walk(item)

    for registry in (estate.sites, estate.servers, estate.tenants, estate.clients):
        for document in registry.values():
            yield from walk(document)


class Lab:
    """Starts and stops the simulated estate; see the module docstring.

    With ``active_directory`` the lab starts a Samba AD DC of its own for the manifests' domain;
    ``dc`` hands it one that is already running instead (tests share one), which it only seeds.
    ``progress`` hears what is being started, for a user who waits.
    """

    def __init__(
        self,
        directory: Path,
        manifests: Sequence[Path] = (),
        *,
        extra_servers: int = 0,
        extra_clients: int = 0,
        active_directory: bool = False,
        dc: SambaDC | None = None,
        progress: Progress = lambda _: None,
    ) -> None:
        self.directory = directory
        self.plan = read_manifests(manifests)
        self.plan.servers += [f"lab-srv{n:02d}" for n in range(1, extra_servers + 1)]
        self.plan.clients += [f"lab-ws{n:02d}" for n in range(1, extra_clients + 1)]
        self.hosts: dict[str, LabHost] = {}
        self.cti: CTIAPISimulator | None = None
        self.winrm_password = Secret(secrets.token_urlsafe(18))
        self.values: dict[str, str] = {}
        self.want_directory = active_directory or dc is not None
        self.dc = dc
        self.progress = progress
        self.ad: LabDirectory | None = None  # the Samba AD DC, when the lab runs one
        self.directory_note = ""

    @property
    def inventory_path(self) -> Path:
        """The inventory of every host of the lab (of the one estate, when given one)."""
        return self.directory / "inventory.yaml"

    @property
    def estate_inventories(self) -> dict[str, Path]:
        """Given several estates, one inventory each (a run refuses one naming other hosts)."""
        if len(self.plan.estates) < 2:
            return {}
        return {name: self.directory / f"inventory-{name}.yaml" for name in self.plan.estates}

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Lab:
        """Start every part; whatever fails or interrupts the start stops what was started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tls = ensure_lab_tls(self.directory / "tls")
        pbxs = {}
        for k_account, lines in sorted(self.plan.pbx_lines.items()):
            numbers = sorted(lines, key=lambda x: (len(x), x))
            spare = str(int(numbers[-1]) + 1) if numbers else "100"
            extensions = [{"number": n, "name": f"Extension {n}"} for n in [*numbers, spare]]
            pbxs[k_account] = PBX(k_account, secrets.token_urlsafe(12), extensions)  # type: ignore[arg-type]
        self.progress(f"starting the simulated NFON CTI API ({counted(len(pbxs), 'PBX')})")
        self.cti = CTIAPISimulator(pbxs.values(), tls=(tls.cert_file, tls.key_file)).start()
        cti = self.cti

        def pbx_lines(k_account: str) -> list[tuple[str, str]]:
            try:
                pbx = cti.pbx(k_account)
            except KeyError:
                return []
            return [(e["number"], e["name"]) for e in pbx.extensions]

        self.values = {
            variable: pbxs[k].password for variable, k in self.plan.cti_variables.items()
        }
        self.values |= {v: secrets.token_urlsafe(18) for v in sorted(self.plan.other_variables)}
        downloads = {u: c for setup in self.plan.setup.values() for u, c in setup.downloads.items()}
        hosts = [(s, "server") for s in self.plan.servers]
        hosts += [(c, "client") for c in self.plan.clients]
        self.progress(f"starting {counted(len(hosts), 'simulated Windows host')}")
        for name, role in hosts:
            windows = WindowsHost.fresh(name.upper()[:15], role, pbx_lines, web=downloads.get)  # type: ignore[arg-type]
            self.plan.setup.get(name, AdminSetup()).prepare(windows, self.values)
            server = WSManServer(
                windows,
                username=LAB_USER,
                password=self.winrm_password,
                ssl_context=tls.server_context(),
            )
            server.start()
            self.hosts[name] = LabHost(name, role, windows, server)
        self.values[WINRM_PASSWORD_VARIABLE] = self.winrm_password.reveal()
        if self.want_directory:
            self._start_directory()
        self.write_inventory(tls.ca_file)

    def stop(self) -> None:
        """Stop every part that runs; safe to call again."""
        for host in self.hosts.values():
            host.server.stop()
        self.hosts.clear()
        if self.cti is not None:
            self.cti.stop()
            self.cti = None
        if self.ad is not None:
            self.ad.stop()
            self.ad = None

    def write_inventory(self, ca_file: Path) -> None:
        self._write_inventory(self.inventory_path, ca_file, set(self.hosts))
        for name, path in self.estate_inventories.items():
            self._write_inventory(path, ca_file, self.plan.estates[name])

    def _write_inventory(self, path: Path, ca_file: Path, hosts: set[str]) -> None:
        assert self.cti is not None
        inventory = {
            "winrm": {
                "scheme": "https",
                "auth": "ntlm",
                "user": LAB_USER,
                "password": {"env": WINRM_PASSWORD_VARIABLE},
                "ca_file": str(ca_file.resolve()),
            },
            "hosts": {
                name: {"host": "127.0.0.1", "port": host.port}
                for name, host in self.hosts.items()
                if name in hosts
            },
            "cti_api": {"base_url": self.cti.base_url, "ca_file": str(ca_file.resolve())},
            "directory": self._directory_overlay(),
            "secrets": dict(sorted(self.values.items())),
        }
        yaml = YAML()
        yaml.default_flow_style = False
        with path.open("w", encoding="utf-8") as stream:
            stream.write(
                "# Written by 'provisioner lab up': maps the manifests' names to the lab, and\n"
                "# holds lab-only values for their secret references. Not for production.\n"
            )
            yaml.dump(inventory, stream)
        path.chmod(0o600)

    def _directory_overlay(self) -> dict[str, Any]:
        if self.ad is None:
            return {"enabled": False}
        return {
            "ldap_url": self.ad.ldaps_url,
            "ca_file": str(Path(self.ad.ca_file).resolve()),
            "bind_user": self.ad.bind_user,
            "bind_password": {"env": DIRECTORY_PASSWORD_VARIABLE},
        }

    def _start_directory(self) -> None:
        if self.plan.domain is None and self.dc is None:
            self.directory_note = "no Active Directory in this lab: the manifests name no Site"
            return
        try:
            self.ad = start_lab_directory(
                self.directory / "ad", self.plan, dc=self.dc, progress=self.progress
            )
        except ProvisionerError as exc:
            self.directory_note = f"no Active Directory in this lab: {exc}"
            return
        others = [d.netbios for d in self.plan.domains if d.netbios != self.ad.dc.netbios]
        if others:
            self.directory_note = (
                f"{self.ad.ldaps_url} serves {self.ad.dc.netbios} only (one DC per lab): the "
                f"users of {', '.join(others)} are not simulated"
            )
        self.values[DIRECTORY_PASSWORD_VARIABLE] = self.ad.bind_password.reveal()

    def status(self) -> dict[str, Any]:
        return {
            "hosts": {
                name: {
                    "role": host.role,
                    "url": host.server.url,
                    "commands": host.server.counters.commands,
                    "messages": host.server.counters.total_messages,
                }
                for name, host in self.hosts.items()
            },
            "cti_api": self.cti.base_url if self.cti else None,
            "cti_requests": len(self.cti.requests) if self.cti else 0,
            "active_directory": _joined(self.ad.ldaps_url if self.ad else "", self.directory_note)
            or "off",
        }


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)
