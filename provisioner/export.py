"""``provisioner export``: adopt a server that exists, by writing manifests from what it is now.

One gather of the server, then its tenants' users from Active Directory and their extensions from
the NFON CTI API. Every value written comes from the resource modules' canonical forms of the live
server (the forms a plan compares), read back into the manifest language, so that a plan right
after is empty::

    out/site.yaml       the Site (unless PATHs gave one): directory, domain controllers, DNS
    out/tapi01.yaml     the TapiServer: Telephony, CTI engine, dialing location, firewall rules
    out/k6732.yaml ...  one Tenant per TSP instance, with its users' line assignments

Secrets are ``{env: NAME}`` references. A value the export had to guess carries a ``GUESS``
comment; what the manifests could not carry (a user the directory does not know or has disabled, a
firewall rule the manifest language cannot say) is written commented out, with the reason. The
written manifests are validated before the command succeeds.
"""

from __future__ import annotations

import io
import ipaddress
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from provisioner.directory.model import DirectoryFacts
from provisioner.directory.reader import read_directory
from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory, load_inventory
from provisioner.manifest import load_estate
from provisioner.manifest.models import (
    NAME_PATTERN,
    Assignment,
    CtiEngine,
    DialingLocation,
    Directory,
    FirewallRule,
    Package,
    SecretRef,
    Site,
    TapiServer,
    Tenant,
    domain_user_key,
)
from provisioner.manifest.validate import Estate
from provisioner.pbx import PbxFacts, read_pbx
from provisioner.planner import Host, PlanInputs, context
from provisioner.remote.contract import HostFacts
from provisioner.resources import (
    firewall,
    line_assignment,
    location,
    package,
    services,
    tsp_instance,
)
from provisioner.resources.base import HostContext, KindProblem, Resource
from provisioner.runner import Run

PLACEHOLDER_ADDRESS = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never a real host
GUESS = "GUESS: "
TENANT_FIELDS = ("kind", "name", "k_account", "server", "cti_password")
INSTANCE_SETTINGS = ("number_format", "line_name_format", "debug_level")  # TSP instance settings


@dataclass
class Manifest:
    """One file to write: a document, and lines written commented out below it."""

    name: str
    document: CommentedMap
    commented_out: list[str] = field(default_factory=list)

    def text(self) -> str:
        yaml = YAML()
        yaml.indent(mapping=2, sequence=4, offset=2)
        yaml.width = 100
        stream = io.StringIO()
        yaml.dump(self.document, stream)
        return stream.getvalue() + "".join(f"{line}\n" for line in self.commented_out)


@dataclass
class Adopted:
    """What the export found: the manifests, and what the operator should read first."""

    manifests: list[Manifest]
    notes: list[str] = field(default_factory=list)


def export_command(
    paths: Sequence[Path],
    inventory_path: str | None,
    *,
    server: str,
    out: Path,
    domain: str | None = None,
) -> list[str]:
    """Export ``server`` into ``out``; returns the lines to print. Refuses to overwrite."""
    base = _load(paths)
    inventory = load_inventory(inventory_path)
    adopted = adopt(base, inventory, server, domain)
    written = write(adopted.manifests, out)
    sites = sorted({doc.file for (kind, _), doc in base.origin.items() if kind == "Site"})
    estate, errors = load_estate([*sites, *written])
    if errors:
        raise ProvisionerError(
            f"the exported manifests do not validate ({errors[0]}): this is a bug in export; "
            "the files are left in place to look at"
        )
    lines = [f"wrote {path}" for path in written]
    lines += [f"note: {note}" for note in adopted.notes]
    tenants = len([t for t in estate.tenants.values() if t.server == server])
    lines.append(
        f"Exported server {server} with {tenants} tenant{'s' if tenants != 1 else ''} to {out}: "
        f"review the GUESS comments, then run 'provisioner plan {out} --detailed-exitcode'."
    )
    return lines


def _load(paths: Sequence[Path]) -> Estate:
    if not paths:
        return Estate()
    estate, errors = load_estate(paths)
    if errors:
        raise ProvisionerError(f"{errors[0]} (export reads the Site from these manifests)")
    return estate


def write(manifests: list[Manifest], out: Path) -> list[Path]:
    targets = [out / f"{m.name}.yaml" for m in manifests]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise ProvisionerError(
            f"{existing[0]} exists: export into an empty directory, then merge what you need"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        for manifest, target in zip(manifests, targets, strict=True):
            target.write_text(manifest.text(), encoding="utf-8")
    except OSError as exc:
        raise ProvisionerError(f"{out}: cannot write the manifests: {exc.strerror}") from None
    return targets


# --- reading the estate ---------------------------------------------------------------------------


def adopt(base: Estate, inventory: Inventory, name: str, domain: str | None = None) -> Adopted:
    """Gather the server once, read its PBXs and AD, and turn it all into manifests."""
    probe = _probe_estate(base, inventory, name)
    host = Host(f"server/{name}", name, "server")
    with Run(probe, inventory, only=[name]) as run:
        gathered, problems = run.gather([host])
    if problems:
        raise ProvisionerError(problems[0].message)
    facts = gathered[host.key]
    notes: list[str] = []
    ctx = _live_context(probe, host, facts)
    tenants = _tenants(ctx, name, notes)
    site = probe.sites[_site_name(probe, name)]
    if not base.sites:
        site = _site(site, inventory, domain or _domain(ctx, inventory), ctx)
    server = probe.servers[name]
    estate = Estate(
        sites={site.name: site}, servers={name: server}, tenants={t.name: t for t in tenants}
    )
    pbx = read_pbx(estate, inventory, estate.tenants)  # the line names tell the users apart
    ctx = _live_context(estate, host, facts, pbx.extensions)
    assignments = _assignments(ctx, site)
    if not base.sites:
        directory_settings = site.directory.model_copy(
            update={"cross_tenant_users": _cross_tenant(assignments)}
        )
        site = site.model_copy(update={"directory": directory_settings})
    estate.sites = {site.name: site}
    estate.tenants = {
        t.name: t.model_copy(update={"assignments": _listed(t, assignments)}) for t in tenants
    }
    directory = read_directory(estate, inventory)
    notes += _reading_notes(directory, pbx)
    manifests = []
    if not base.sites:
        manifests.append(_site_manifest(site, inventory))
    manifests.append(_server_manifest(server, base, ctx, notes))
    for tenant in tenants:
        manifests.append(tenant_manifest(tenant, assignments, directory))
    return Adopted(manifests, notes)


def _assignments(ctx: HostContext, site: Site) -> list[Resource]:
    try:
        return line_assignment.live(ctx)
    except KindProblem as exc:
        raise ProvisionerError(
            f"{exc}; where several users share a line, their NetBIOS domain tells them apart: "
            f"it is {site.directory.netbios_domain} now, name another with --domain"
        ) from None


def _domain(ctx: HostContext, inventory: Inventory) -> str:
    """The users' NetBIOS domain: the Telephony administrators', else the inventory's bind
    account's (``DOMAIN\\account``), else a placeholder."""
    overlay = inventory.directory
    accounts = [*_administrators(ctx), (overlay and overlay.bind_user) or ""]
    domains = [a.split("\\", 1)[0] for a in accounts if "\\" in a]
    return domains[0].upper() if domains else "DOMAIN"


def _probe_estate(base: Estate, inventory: Inventory, name: str) -> Estate:
    """An estate that reaches the server and manages everything the server has, so that each
    resource module's ``live()`` reports all of it (the probe's own values are never written)."""
    site = next(iter(base.sites.values()), None) or Site.model_validate(
        {
            "kind": "Site",
            "name": "site",
            "directory": {
                "netbios_domain": "PROBE",
                "ldap_url": "ldaps://probe.invalid",
                "bind_user": "probe",
                "bind_password": {"env": "PROBE"},
            },
            "domain_controllers": [PLACEHOLDER_ADDRESS],
            "dns_servers": [PLACEHOLDER_ADDRESS],
        }
    )
    server = base.servers.get(name) or TapiServer.model_validate(
        {"kind": "TapiServer", "name": name, "address": _address(inventory, name)}
    )
    server = server.model_copy(
        update={
            "cti_engine": server.cti_engine or CtiEngine(),
            "package": server.package or Package(version="0", source="probe", sha256="0" * 64),
        }
    )
    return Estate(sites={site.name: site}, servers={name: server})


def _live_context(
    estate: Estate,
    host: Host,
    facts: HostFacts,
    extensions: Mapping[str, Mapping[str, str]] | None = None,
) -> HostContext:
    inputs = PlanInputs(facts={host.key: facts}, extensions=extensions or {})
    ctx = context(estate, host, inputs)
    current = next((loc for loc in facts.locations if loc.current), None)
    if current is not None and ctx.server is not None:  # manage the current dialing location
        probe_location = DialingLocation.model_construct(
            name=current.name, country_code=current.country_code, area_code=current.area_code
        )
        ctx.server = ctx.server.model_copy(update={"location": probe_location})
    return ctx


def _site_name(estate: Estate, server: str) -> str:
    site = estate.site_of(estate.servers[server])
    if site is None:
        raise ProvisionerError(
            f"server {server} names no Site of the given manifests: give the one it belongs to"
        )
    return site.name


def _address(inventory: Inventory, name: str) -> str:
    """The inventory's WinRM host of the server if it is an IP address, else a placeholder."""
    entry = inventory.hosts.get(name)
    try:
        return (
            str(ipaddress.ip_address(entry.host)) if entry and entry.host else PLACEHOLDER_ADDRESS
        )
    except ValueError:
        return PLACEHOLDER_ADDRESS


# --- tenants and their users ----------------------------------------------------------------------


def _tenants(ctx: HostContext, server: str, notes: list[str]) -> list[Tenant]:
    """One Tenant per configured TSP instance, from the instance's canonical live form."""
    tenants = []
    for resource in tsp_instance.live(ctx):
        attributes = resource.attributes
        if "k_account" not in attributes:
            notes.append(f"{resource.detail} has no settings: not exported")
            continue
        k_account = str(attributes["k_account"])
        name = k_account.lower() if re.fullmatch(NAME_PATTERN, k_account.lower()) else None
        if name is None:
            notes.append(f"{resource.detail}: {k_account} makes no manifest name: not exported")
            continue
        tenants.append(
            Tenant(
                kind="Tenant",
                name=name,
                k_account=k_account,
                server=server,
                cti_password=SecretRef(env=f"{k_account.upper()}_CTI_PASSWORD"),
                number_format=attributes["number_format"],
                line_name_format=str(attributes["line_name_format"]),
                debug_level=int(attributes["debug_level"]),
            )
        )
    return sorted(tenants, key=lambda t: t.name)


def _user(resource: Resource) -> str:
    """The user of a line-assignment resource (its address ends in the user's key)."""
    return resource.address.split("/", 3)[3]


def _listed(tenant: Tenant, assignments: list[Resource]) -> list[Assignment]:
    """Every user the host lists for the tenant (to be looked up in AD and the PBX)."""
    return [
        Assignment(user=_user(r), lines=list(r.attributes["lines"]))
        for r in assignments
        if r.tenant == tenant.name
    ]


def _reading_notes(directory: DirectoryFacts, pbx: PbxFacts) -> list[str]:
    notes = [f"not checked: {p.message}" for p in directory.problems + pbx.problems]
    return notes + [n for n in directory.notes if "is not read" in n]


# --- the Site -------------------------------------------------------------------------------------


def _site(probe: Site, inventory: Inventory, netbios: str, ctx: HostContext) -> Site:
    overlay = inventory.directory
    rules = [r.attributes for r in firewall.live(ctx)]
    return probe.model_copy(
        update={
            "name": netbios.lower() if re.fullmatch(NAME_PATTERN, netbios.lower()) else "site",
            "directory": Directory(
                netbios_domain=netbios,
                ldap_url=(overlay and overlay.ldap_url) or f"ldaps://{netbios.lower()}",
                bind_user=(overlay and overlay.bind_user) or f"{netbios}\\svc-provisioner",
                bind_password=(overlay and overlay.bind_password)
                or SecretRef(env=f"{netbios}_AD_BIND_PASSWORD"),
            ),
            "domain_controllers": _outbound_to(rules, "389") or [PLACEHOLDER_ADDRESS],
            "dns_servers": _outbound_to(rules, "53") or [PLACEHOLDER_ADDRESS],
        }
    )


def _administrators(ctx: HostContext) -> list[str]:
    found = [r for r in services.live(ctx) if r.kind == services.TELEPHONY]
    return list(found[0].attributes["administrators"]) if found else []


def _cross_tenant(assignments: list[Resource]) -> list[str]:
    tenants: dict[str, set[str]] = {}
    for resource in assignments:
        tenants.setdefault(_user(resource), set()).add(str(resource.tenant))
    return sorted(user for user, names in tenants.items() if len(names) > 1)


def _outbound_to(rules: list[Any], port: str) -> list[str]:
    """Addresses of outbound rules to ``port``: where the server reaches AD (389) or DNS (53)."""
    found: list[str] = []
    for rule in rules:
        if rule["direction"] != "out" or port not in rule["remote_ports"]:
            continue
        for text in rule["remote_addresses"]:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            if network.num_addresses <= 16:
                found += [str(a) for a in network if str(a) not in found]
    return found


def _site_manifest(site: Site, inventory: Inventory) -> Manifest:
    document = _document(
        site,
        "The Site of the exported server. The directory settings come from the inventory\n"
        "where it has them; a value marked GUESS was found nowhere: check it.",
    )
    directory = document["directory"]
    overlay = inventory.directory
    for key, found in (
        ("ldap_url", overlay and overlay.ldap_url),
        ("bind_user", overlay and overlay.bind_user),
        ("bind_password", overlay and overlay.bind_password),
    ):
        directory.yaml_add_eol_comment(
            "from the inventory used for the export"
            if found
            else f"{GUESS}not in the inventory: the directory's real {key}",
            key,
        )
    directory.yaml_add_eol_comment(
        f"{GUESS}the Telephony administrators' or the bind account's domain, or --domain",
        "netbios_domain",
    )
    if site.directory.cross_tenant_users:
        directory.yaml_add_eol_comment(
            "each is assigned lines of several tenants on the server", "cross_tenant_users"
        )
    for key, port in (("domain_controllers", "389"), ("dns_servers", "53")):
        source = (
            f"the addresses the server's outbound port-{port} rule allows"
            if PLACEHOLDER_ADDRESS not in [str(a) for a in getattr(site, key)]
            else f"{GUESS}not found on the server (a placeholder; only firewall presets use it)"
        )
        document.yaml_add_eol_comment(source, key)
    return Manifest("site", document)


# --- the server -----------------------------------------------------------------------------------


def _server_manifest(
    server: TapiServer, base: Estate, ctx: HostContext, notes: list[str]
) -> Manifest:
    live = {r.kind: r for module in (services, location, package) for r in module.live(ctx)}
    data: dict[str, Any] = {"kind": "TapiServer", "name": server.name}
    if server.site is not None:
        data["site"] = server.site
    data["address"] = str(server.address)
    if server.winrm.model_dump(exclude_none=True):
        data["winrm"] = server.winrm.model_dump(mode="json", exclude_none=True)
    telephony = live.get(services.TELEPHONY)
    if telephony is not None:
        data["telephony"] = _telephony(telephony.attributes, services.telephony_account(ctx), notes)
    engine = live.get(services.CTI_ENGINE)
    data["cti_engine"] = _cti_engine(engine.attributes, server) if engine else None
    dialing = live.get(location.KIND)
    if dialing is not None:
        data["location"] = {k: v for k, v in dialing.attributes.items() if k != "current"}
    rules, left_out = firewall_rules(firewall.live(ctx))
    if rules:
        data["firewall"] = {"rules": rules}
    document = _mapping(data)
    document.yaml_set_start_comment(
        f"Exported from the live server {server.name}: each value is what the server has now."
    )
    if base.servers.get(server.name) is None:
        document.yaml_add_eol_comment(
            "from the inventory's WinRM host"
            if str(server.address) != PLACEHOLDER_ADDRESS
            else f"{GUESS}a placeholder: the server's IP address (firewall presets use it)",
            "address",
        )
    if dialing is not None:
        document.yaml_add_eol_comment("the current dialing location", "location")
    commented = list(left_out)
    version = live.get(package.KIND)
    if version is not None:
        commented += [
            "# package:  (NFON TAPI is installed; to manage it, write where its MSI is and its",
            "#           SHA-256: a host does not record either)",
            f'#   version: "{version.attributes["version"]}"',
            f"#   source: NFONTAPI-{version.attributes['version']}.msi  # or an https:// URL",
            "#   sha256: <SHA-256 of that MSI>",
        ]
    return Manifest(server.name, document, commented)


def _telephony(attributes: Any, account: str, notes: list[str]) -> dict[str, Any]:
    """A built-in account is left out: without service_account TapiSrv keeps the one it has."""
    result: dict[str, Any] = {"server_mode": attributes["server_mode"]}
    if services.builtin_sid(account) is None:
        result["service_account"] = account
        notes.append(
            f"TapiSrv runs as {account}: add telephony.service_password ({{env: NAME}}) to let "
            "apply change the account"
        )
    if attributes["administrators"]:
        result["administrators"] = list(attributes["administrators"])
    if attributes["start_mode"] != "auto":
        notes.append(
            f"TapiSrv starts {attributes['start_mode']}; a server needs it automatic, so the "
            "first plan changes that"
        )
    return result


def _cti_engine(attributes: Any, server: TapiServer) -> dict[str, Any]:
    engine: dict[str, Any] = {}
    if server.cti_engine is not None and server.cti_engine.name:
        engine["name"] = server.cti_engine.name
    return engine | {k: attributes[k] for k in ("start_mode", "state", "account")}


def firewall_rules(live: list[Resource]) -> tuple[list[dict[str, Any]], list[str]]:
    """The managed group's rules in the manifest language; a rule the language cannot say exactly
    is written commented out, with the reason."""
    rules: list[dict[str, Any]] = []
    left_out: list[str] = []
    for resource in sorted(live, key=lambda r: r.address):
        name = resource.address.rsplit("/", 1)[1]
        attributes = dict(resource.attributes)
        rule = {
            "name": name,
            "direction": attributes["direction"],
            "action": attributes["action"],
            "protocol": attributes["protocol"],
            "local_ports": _ports(attributes["local_ports"]),
            "remote_ports": _ports(attributes["remote_ports"]),
            "remote_addresses": list(attributes["remote_addresses"]),
            "profiles": "any" if attributes["profiles"] == ["any"] else attributes["profiles"],
            "description": attributes["description"],
            "enabled": attributes["enabled"],
        }
        reason = _unsayable(rule, attributes)
        if reason:
            left_out += [f"# firewall rule {name!r} not exported: {reason}"]
            continue
        rules.append({k: v for k, v in rule.items() if v not in ([], "")})
    return rules, left_out


def _ports(values: list[str]) -> list[int | str]:
    if values == ["any"]:
        return []
    return [int(v) if v.isdigit() else v for v in values]


def _unsayable(rule: dict[str, Any], attributes: dict[str, Any]) -> str:
    try:
        parsed = FirewallRule.model_validate(rule)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
    if firewall.from_manifest(parsed) != attributes:
        return "the manifest language cannot say it exactly"
    return ""


# --- tenants --------------------------------------------------------------------------------------


def tenant_manifest(
    tenant: Tenant, assignments: list[Resource], directory: DirectoryFacts
) -> Manifest:
    """A tenant's file: its instance settings and the users the host lists for it; a user the
    directory does not know or has disabled is written commented out, with the reason."""
    kept: list[dict[str, Any]] = []
    commented: list[str] = []
    for resource in (r for r in assignments if r.tenant == tenant.name):
        user = _user(resource)
        lines = list(resource.attributes["lines"])
        reason = _user_problem(user, directory)
        if reason:
            commented += [
                f"#   - user: {user}  # not exported: {reason}",
                f"#     lines: [{', '.join(repr(x) for x in lines)}]",
            ]
            continue
        kept.append({"user": _spelling(user, directory), "lines": lines})
    owners = Counter(line for entry in kept for line in entry["lines"])
    for entry in kept:
        if any(owners[line] > 1 for line in entry["lines"]):
            entry["shared"] = True
    data = tenant.model_dump(mode="json", exclude={"assignments"}, exclude_none=True)
    data = {k: data[k] for k in (*TENANT_FIELDS, *INSTANCE_SETTINGS)} | {"assignments": kept}
    document = _mapping(data)
    document.yaml_set_start_comment(
        f"Exported from the TSP instance {tenant.k_account} on {tenant.server}."
    )
    document.yaml_add_eol_comment(f"{GUESS}the K-account in lower case", "name")
    document.yaml_add_eol_comment(f"{GUESS}the variable's name", "cti_password")
    for key in INSTANCE_SETTINGS:
        document.yaml_add_eol_comment(f"{GUESS}read from the settings key the profile assumes", key)
    if commented:
        commented.insert(0, "# Found on the server, not exported (uncomment once resolved):")
    return Manifest(tenant.name, document, commented)


def _user_problem(user: str, directory: DirectoryFacts) -> str:
    key = domain_user_key(user)
    if key not in directory.users:
        return ""  # not checked: the directory was not read, or the user is of another domain
    found = directory.users[key]
    if found is None:
        return "the directory does not know this user (assigned by hand?)"
    return "the user is disabled in the directory" if found.disabled else ""


def _spelling(user: str, directory: DirectoryFacts) -> str:
    """The user as the directory spells the account, where it was read."""
    found = directory.users.get(domain_user_key(user))
    return found.account if found is not None else user


# --- YAML -----------------------------------------------------------------------------------------


def _document(model: BaseModel, comment: str) -> CommentedMap:
    data = model.model_dump(mode="json", exclude_defaults=True)
    document: CommentedMap = _mapping({"kind": data.pop("kind", None), **data})
    document.yaml_set_start_comment(comment)
    return document


def _mapping(data: Any) -> Any:
    """Plain data as round-trip YAML: short lists and secret references on one line."""
    if isinstance(data, dict):
        mapping = CommentedMap((k, _mapping(v)) for k, v in data.items())
        if set(data) in ({"env"}, {"file"}):
            mapping.fa.set_flow_style()
        return mapping
    if isinstance(data, list):
        sequence = CommentedSeq(_mapping(v) for v in data)
        if all(not isinstance(v, dict | list) for v in data) and len(str(data)) < 60:
            sequence.fa.set_flow_style()
        return sequence
    return data
