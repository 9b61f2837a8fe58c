"""Generated estates: a Site, 1-2 TapiServers, 1-4 tenants, written in many valid spellings.

:func:`estates` is a hypothesis strategy of :class:`EstateSpec`; :func:`write_estate` turns one
into manifest files. The spellings vary where a canonical form must absorb the difference (or
plans would show perpetual diffs): ports out of order and overlapping, ``10.0.0.5`` next to
``10.0.0.5-10.0.0.5``, a range that is exactly a network, all three profiles instead of
``any``, ``NT AUTHORITY\\SYSTEM`` for ``LocalSystem``, user names in either case, an upper-case
sha256::

    spec = EstateSpec(servers=[ServerSpec("tapi01", 1)], tenants=[TenantSpec("k1001", ...)])
    write_estate(spec, Path("manifests"))   # site.yaml, tapi01.yaml, k1001.yaml
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from ruamel.yaml import YAML

from provisioner.lab.windows_host import lab_package_bytes, lab_package_sha256

DOMAIN = "NFON"
NUMBER_FORMATS = ("international", "international_no_plus", "phonebook", "phonebook_international")
LINE_NAME_FORMATS = (
    "{extension} {name}",
    "{k_account} {extension} {name}",
    "{extension}",
    "Line {extension} ({name})",
    "{name} - {extension} @ {k_account}",
)
# A small pool, so that tenants on one server share extension numbers as real PBXs do.
EXTENSIONS = ("100", "101", "102", "200", "310", "311", "1254", "1255", "1256", "4711")
DESCRIPTIONS = ("", "Admin access", 'Zugriff für "Büro" & <Co>', "O'Brien's tools; 50% off")
COUNTRY_CODES = (1, 33, 41, 43, 44, 49, 420)


@dataclass(frozen=True)
class RuleSpec:
    name: str
    direction: str
    protocol: str
    local_ports: list[int | str]
    remote_ports: list[int | str]
    remote_addresses: list[str]
    profiles: str | list[str]
    action: str
    enabled: bool
    description: str


@dataclass(frozen=True)
class ServerSpec:
    name: str
    number: int  # gives the server its own address space: 10.<number>.x.x
    client_subnets: list[str] = field(default_factory=lambda: ["10.1.2.0/24"])
    preset: bool = True
    rules: list[RuleSpec] = field(default_factory=list)
    location: dict[str, Any] | None = None
    package_version: str | None = "1.0.0"
    sha256_upper: bool = False
    sha256: str | None = None  # instead of the lab's checksum of the version (a wrong one)
    package_from: str = "https"  # or "workstation": a file beside the manifests, uploaded
    administrators: list[str] = field(default_factory=list)
    service_account: str | None = None
    engine: dict[str, str] | None = field(default_factory=dict)  # None: no cti_engine
    prune: bool = False


@dataclass(frozen=True)
class AssignmentSpec:
    user: str
    lines: list[str]
    shared: bool = False
    friendly_name: str | None = None


@dataclass(frozen=True)
class TenantSpec:
    name: str
    k_account: str
    server: str
    number_format: str = "international"
    line_name_format: str = "{extension} {name}"
    debug_level: int = 0
    assignments: list[AssignmentSpec] = field(default_factory=list)


@dataclass(frozen=True)
class EstateSpec:
    servers: list[ServerSpec]
    tenants: list[TenantSpec]
    cross_tenant_users: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # workstation names, using the first server


# --- writing -------------------------------------------------------------------------------------


def write_estate(spec: EstateSpec, directory: Path) -> Path:
    """One YAML file per document; returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    documents: dict[str, dict[str, Any]] = {"site.yaml": _site(spec)}
    for server in spec.servers:
        documents[f"{server.name}.yaml"] = _server(server, spec)
        if server.package_version and server.package_from == "workstation":
            package = directory / f"NFONTAPI-{server.package_version}.msi"
            package.write_bytes(lab_package_bytes(server.package_version))
    for tenant in spec.tenants:
        documents[f"{tenant.name}.yaml"] = _tenant(tenant)
    if spec.clients:
        documents["workstations.yaml"] = {
            "kind": "TapiClients",
            "name": "workstations",
            "hosts": list(spec.clients),
            "servers": [spec.servers[0].name],
            "firewall": {"presets": ["nfon-tapi-client"]},
        }
    yaml = YAML()
    yaml.default_flow_style = False
    for name, document in documents.items():
        with (directory / name).open("w", encoding="utf-8") as stream:
            yaml.dump(document, stream)
    return directory


def _site(spec: EstateSpec) -> dict[str, Any]:
    directory: dict[str, Any] = {
        "netbios_domain": DOMAIN,
        "ldap_url": "ldaps://dc1.nfon.test",
        "bind_user": "svc-provisioner@nfon.test",
        "bind_password": {"env": "GEN_AD_BIND_PASSWORD"},
    }
    if spec.cross_tenant_users:
        directory["cross_tenant_users"] = list(spec.cross_tenant_users)
    return {
        "kind": "Site",
        "name": "generated",
        "directory": directory,
        "domain_controllers": ["10.0.0.10", "10.0.0.11"],
        "dns_servers": ["10.0.0.10"],
        "winrm": {
            "scheme": "https",
            "auth": "ntlm",
            "user": f"{DOMAIN}\\svc-deploy",
            "password": {"env": "GEN_WINRM_PASSWORD"},
        },
    }


def _server(server: ServerSpec, spec: EstateSpec) -> dict[str, Any]:
    document: dict[str, Any] = {
        "kind": "TapiServer",
        "name": server.name,
        "address": f"10.{server.number}.1.20",
        "winrm": {"host": f"{server.name}.nfon.test"},
        "client_subnets": list(server.client_subnets),
    }
    telephony: dict[str, Any] = {"server_mode": True}
    if server.administrators:
        telephony["administrators"] = list(server.administrators)
    if server.service_account:
        telephony["service_account"] = server.service_account
        telephony["service_password"] = {"env": f"GEN_{server.name.upper()}_SERVICE_PASSWORD"}
    document["telephony"] = telephony
    if server.package_version:
        sha256 = server.sha256 or lab_package_sha256(server.package_version)
        file = f"NFONTAPI-{server.package_version}.msi"
        document["package"] = {
            "version": server.package_version,
            "source": file
            if server.package_from == "workstation"
            else f"https://files.nfon.test/software/{file}",
            "sha256": sha256.upper() if server.sha256_upper else sha256,
        }
    if server.engine is not None:
        document["cti_engine"] = dict(server.engine)
    else:
        document["cti_engine"] = None
    if server.location is not None:
        document["location"] = dict(server.location)
    firewall: dict[str, Any] = {}
    if server.preset:
        firewall["presets"] = ["nfon-tapi-server"]
    if server.rules:
        firewall["rules"] = [_rule(rule) for rule in server.rules]
    if server.prune:
        firewall["prune"] = True
    document["firewall"] = firewall
    return document


def _rule(rule: RuleSpec) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": rule.name,
        "direction": rule.direction,
        "action": rule.action,
        "protocol": rule.protocol,
    }
    if rule.local_ports:
        document["local_ports"] = list(rule.local_ports)
    if rule.remote_ports:
        document["remote_ports"] = list(rule.remote_ports)
    document["remote_addresses"] = list(rule.remote_addresses)
    document["profiles"] = rule.profiles if isinstance(rule.profiles, str) else list(rule.profiles)
    document["enabled"] = rule.enabled
    if rule.description:
        document["description"] = rule.description
    return document


def _tenant(tenant: TenantSpec) -> dict[str, Any]:
    assignments = []
    for assignment in tenant.assignments:
        entry: dict[str, Any] = {"user": assignment.user, "lines": list(assignment.lines)}
        if assignment.friendly_name:
            entry["friendly_name"] = assignment.friendly_name
        if assignment.shared:
            entry["shared"] = True
        assignments.append(entry)
    return {
        "kind": "Tenant",
        "name": tenant.name,
        "k_account": tenant.k_account,
        "server": tenant.server,
        "cti_password": {"env": f"GEN_{tenant.k_account}_CTI_PASSWORD"},
        "number_format": tenant.number_format,
        "line_name_format": tenant.line_name_format,
        "debug_level": tenant.debug_level,
        "assignments": assignments,
    }


# --- generating ----------------------------------------------------------------------------------


def _spelled_port(draw: st.DrawFn) -> int | str:
    low = draw(st.integers(1, 65000))
    kind = draw(st.sampled_from(["int", "text", "range", "same-range"]))
    if kind == "int":
        return low
    if kind == "text":
        return str(low)
    if kind == "same-range":
        return f"{low}-{low}"
    return f"{low}-{low + draw(st.integers(1, 500))}"


def _spelled_address(draw: st.DrawFn, server: int) -> str:
    third, fourth = draw(st.integers(0, 255)), draw(st.integers(1, 254))
    host = f"10.{server}.{third}.{fourth}"
    kind = draw(
        st.sampled_from(
            ["host", "host-range", "host-32", "network", "network-range", "span", "v6", "v6-net"]
        )
    )
    if kind == "host":
        return host
    if kind == "host-range":
        return f"{host}-{host}"
    if kind == "host-32":
        return f"{host}/32"
    prefix = draw(st.integers(22, 30))
    network = ipaddress.ip_network(f"{host}/{prefix}", strict=False)
    if kind == "network":
        return str(network)
    if kind == "network-range":
        return f"{network.network_address}-{network.broadcast_address}"
    if kind == "span":
        return f"{host}-10.{server}.{third}.{min(255, fourth + draw(st.integers(1, 40)))}"
    if kind == "v6":
        return f"fd00:{server}::{third:x}{fourth:02x}"
    return f"fd00:{server}:{third:x}::/64"


@st.composite
def rules(draw: st.DrawFn, server: int, index: int) -> RuleSpec:
    protocol = draw(st.sampled_from(["tcp", "udp", "tcp", "icmpv4", "icmpv6", "any"]))
    ported = protocol in ("tcp", "udp")
    direction = draw(st.sampled_from(["in", "out"]))
    local_ports: list[int | str] = []
    remote_ports: list[int | str] = []
    if ported:
        # a port of its own keeps two rules from matching the same traffic (a validation error)
        extra = [_spelled_port(draw) for _ in range(draw(st.integers(0, 2)))]
        local_ports = draw(st.permutations([20000 + index, *extra]))
        remote_ports = [_spelled_port(draw) for _ in range(draw(st.integers(0, 2)))]
    own_address = f"10.250.{server}.{index + 1}"
    addresses = [own_address] + [
        _spelled_address(draw, server) for _ in range(draw(st.integers(0, 2)))
    ]
    if draw(st.integers(0, 9)) == 0:
        addresses.append("any")
    profile_names = draw(st.lists(st.sampled_from(["domain", "private", "public"]), unique=True))
    return RuleSpec(
        name=f"extra-{index}-{protocol}",
        direction=direction,
        protocol=protocol,
        local_ports=local_ports,
        remote_ports=remote_ports,
        remote_addresses=draw(st.permutations(addresses)),
        profiles=profile_names or "any",
        action=draw(st.sampled_from(["allow", "block"])),
        enabled=draw(st.booleans()),
        description=draw(st.sampled_from(DESCRIPTIONS)),
    )


def _case(draw: st.DrawFn, text: str) -> str:
    return draw(st.sampled_from([text, text.lower(), text.upper()]))


@st.composite
def servers(draw: st.DrawFn, name: str, number: int, needs_location: bool) -> ServerSpec:
    base = ipaddress.ip_network(f"10.{number}.2.0/24")
    subnets = [str(base)]
    if draw(st.booleans()):  # a neighbour: the preset rules merge the two into one /23
        subnets.append(str(ipaddress.ip_network(f"10.{number}.3.0/24")))
    if draw(st.booleans()):
        subnets.append(f"10.{number}.{draw(st.integers(8, 200))}.0/26")
    location = None
    if needs_location or draw(st.booleans()):
        location = {
            "name": draw(st.sampled_from(["Dresden", "Köln Büro", "HQ"])),
            "country_code": draw(st.sampled_from(COUNTRY_CODES)),
            "area_code": draw(st.from_regex(r"[0-9]{0,5}", fullmatch=True)),
            "outside_access": draw(st.sampled_from(["", "0", "9"])),
        }
    engine: dict[str, str] | None = {
        "start_mode": draw(st.sampled_from(["auto", "manual", "delayed-auto"])),
        "state": draw(st.sampled_from(["running", "running", "stopped"])),
        "account": draw(st.sampled_from(["LocalSystem", "NT AUTHORITY\\SYSTEM", "localsystem"])),
    }
    if draw(st.integers(0, 5)) == 0:
        engine = None
    admins = draw(st.lists(st.sampled_from(["tapi-admins", "Helpdesk", "ops"]), max_size=2))
    extra_rules = [draw(rules(number, i)) for i in range(draw(st.integers(0, 4)))]
    return ServerSpec(
        name=name,
        number=number,
        client_subnets=draw(st.permutations(subnets)),
        preset=draw(st.booleans()) or not extra_rules,
        rules=extra_rules,
        location=location,
        package_version=draw(st.sampled_from(["1.0.0", "1.1.0", "1.0.0"])),
        sha256_upper=draw(st.booleans()),
        package_from=draw(st.sampled_from(["https", "workstation"])),
        administrators=[_case(draw, f"{DOMAIN}\\{a}") for a in admins],
        service_account=draw(st.sampled_from([None, f"{DOMAIN}\\svc-tapi", "nfon\\SVC-TAPI"])),
        engine=engine,
        prune=draw(st.booleans()),
    )


@st.composite
def tenants(draw: st.DrawFn, number: int, server: str, shared_user: str | None) -> TenantSpec:
    name = f"k{1000 + number}"
    pool = draw(st.lists(st.sampled_from(EXTENSIONS), min_size=1, max_size=5, unique=True))
    holders: dict[str, int] = {}
    drafts: list[tuple[str, list[str]]] = []
    users = [f"{DOMAIN}\\{name}-user{i}" for i in range(draw(st.integers(1, 4)))]
    if shared_user is not None:
        users.append(shared_user)
    for user in users:
        lines = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        drafts.append((_case(draw, user), lines))
        for line in lines:
            holders[line] = holders.get(line, 0) + 1
    assignments = [
        AssignmentSpec(
            user=user,
            lines=lines,
            shared=any(holders[line] > 1 for line in lines),
            friendly_name=draw(st.sampled_from([None, "Anna Schmidt", "Chloé Martin", "Desk <2>"])),
        )
        for user, lines in drafts
    ]
    number_format = draw(st.sampled_from(NUMBER_FORMATS))
    return TenantSpec(
        name=name,
        k_account=f"K{1000 + number}",
        server=server,
        number_format=number_format,
        line_name_format=draw(st.sampled_from(LINE_NAME_FORMATS)),
        debug_level=draw(st.integers(0, 9)),
        assignments=assignments,
    )


@dataclass(frozen=True)
class Layout:
    """The names an estate is made of: its servers, each tenant's server, its workstations."""

    servers: list[str]
    tenant_servers: list[str]
    clients: list[str]


@st.composite
def layouts(draw: st.DrawFn, *, with_clients: bool = True) -> Layout:
    server_names = [f"tapi{n:02d}" for n in range(1, draw(st.integers(1, 2)) + 1)]
    tenant_servers = draw(st.lists(st.sampled_from(server_names), min_size=1, max_size=4))
    clients = ["ws-0001"] if with_clients and draw(st.integers(0, 3)) == 0 else []
    return Layout(server_names, tenant_servers, clients)


def layout_of(spec: EstateSpec) -> Layout:
    return Layout([s.name for s in spec.servers], [t.server for t in spec.tenants], spec.clients)


@st.composite
def estates(draw: st.DrawFn, layout: Layout | None = None) -> EstateSpec:
    """An estate; with ``layout``, one with those names (a later version of the same estate)."""
    layout = layout or draw(layouts())
    server_names, tenant_servers = layout.servers, layout.tenant_servers
    shared_user = f"{DOMAIN}\\crm-service" if draw(st.booleans()) else None
    tenant_specs = [
        draw(tenants(i + 1, server, shared_user if draw(st.booleans()) else None))
        for i, server in enumerate(tenant_servers)
    ]
    needs_location = {t.server for t in tenant_specs if t.number_format.startswith("phonebook")}
    server_specs = [
        draw(servers(name, i + 1, name in needs_location)) for i, name in enumerate(server_names)
    ]
    cross = [_case(draw, shared_user)] if shared_user else []
    return EstateSpec(server_specs, tenant_specs, cross_tenant_users=cross, clients=layout.clients)
