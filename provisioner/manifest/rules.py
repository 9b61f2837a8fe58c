"""Rules that span documents: references, duplicates, line sharing, tenant isolation, firewalls.

Each rule reports at the value that breaks it, e.g. the second tenant that names a user::

    manifests/k7001.yaml:14:11: NFON\\jdoe is already a user of tenant k6732
    (manifests/k6732.yaml:9:11); list the account in the Site's cross_tenant_users to allow it
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from string import Formatter

from provisioner.manifest.expand import ExpandedRule, client_rules, preset_peer_needs, server_rules
from provisioner.manifest.loader import Document
from provisioner.manifest.models import (
    FirewallPreset,
    Package,
    Protocol,
    TapiClients,
    TapiServer,
    Tenant,
    WinRMSettings,
    domain_user_key,
)
from provisioner.manifest.validate import Estate, Problems
from provisioner.platform import TIMEOUT_KEYS, Profile

_PORTED = (Protocol.tcp, Protocol.udp)


def check_estate(estate: Estate, problems: Problems) -> None:
    _check_sites(estate, problems)
    _check_references(estate, problems)
    _check_tenants(estate, problems)
    _check_lines(estate, problems)
    _check_isolation(estate, problems)
    _check_firewalls(estate, problems)
    _check_winrm(estate, problems)
    _check_hosts(estate, problems)
    _check_platform(estate, problems)
    _check_users_groups(estate, problems)
    _check_packages(estate, problems)


def _check_sites(estate: Estate, problems: Problems) -> None:
    hosts: list[tuple[str, TapiServer | TapiClients]] = [
        *(("TapiServer", s) for s in estate.servers.values()),
        *(("TapiClients", c) for c in estate.clients.values()),
    ]
    for kind, doc in hosts:
        where = estate.origin[(kind, doc.name)]
        if doc.site is not None:
            if not estate.has("Site", doc.site):
                problems.add(
                    where, ("site",), f"site {doc.site!r} is not defined{_known(estate.sites)}"
                )
        elif not estate.sites:
            if not estate.any_invalid("Site"):
                problems.add(where, ("name",), f"{kind} {doc.name!r} needs a Site: none is defined")
        elif len(estate.sites) > 1:
            problems.add(
                where, ("name",), f"there are {len(estate.sites)} Sites: say which in 'site'"
            )


def _check_references(estate: Estate, problems: Problems) -> None:
    for tenant in estate.tenants.values():
        if not estate.has("TapiServer", tenant.server):
            problems.add(
                estate.origin[("Tenant", tenant.name)],
                ("server",),
                f"server {tenant.server!r} is not defined{_known(estate.servers)}",
            )
    for clients in estate.clients.values():
        seen: set[str] = set()
        for i, server in enumerate(clients.servers):
            where = estate.origin[("TapiClients", clients.name)]
            if not estate.has("TapiServer", server):
                problems.add(
                    where,
                    ("servers", i),
                    f"server {server!r} is not defined{_known(estate.servers)}",
                )
            elif server in seen:
                problems.add(where, ("servers", i), f"server {server!r} is listed twice")
            seen.add(server)


def _check_tenants(estate: Estate, problems: Problems) -> None:
    instances: dict[tuple[str, str], str] = {}
    for tenant in estate.tenants.values():
        doc = estate.origin[("Tenant", tenant.name)]
        key = (tenant.server, tenant.k_account.upper())
        if key in instances:
            problems.add(
                doc,
                ("k_account",),
                f"tenant {instances[key]!r} already runs {tenant.k_account} on server "
                f"{tenant.server!r}: one TSP instance per K-account and server",
            )
        instances.setdefault(key, tenant.name)

        server = estate.servers.get(tenant.server)
        if server is not None and tenant.number_format.needs_location and server.location is None:
            problems.add(
                doc,
                ("number_format",),
                f"number format {tenant.number_format.value} needs Windows dialing rules: give "
                f"server {server.name!r} a 'location' (country code, area code, access codes)",
            )

        users: dict[str, int] = {}
        for i, assignment in enumerate(tenant.assignments):
            user_key = domain_user_key(assignment.user)
            if user_key in users:
                first = problems.source_map.locate(doc, ("assignments", users[user_key], "user"))
                problems.add(
                    doc,
                    ("assignments", i, "user"),
                    f"{assignment.user} already has an assignment at {first}: list all lines there",
                )
            users.setdefault(user_key, i)


def _check_lines(estate: Estate, problems: Problems) -> None:
    """A line of a PBX goes to one user unless every assignment that names it says ``shared``.

    One rule for one tenant and for tenants of one K-account on several servers: the lines are
    the PBX's extensions, whichever server's TSP instance offers them.
    """
    owners: dict[tuple[str, str], tuple[Tenant, int]] = {}
    for tenant in sorted(estate.tenants.values(), key=lambda t: t.name):
        doc = estate.origin[("Tenant", tenant.name)]
        for i, assignment in enumerate(tenant.assignments):
            listed: set[str] = set()
            for j, line in enumerate(assignment.lines):
                where = ("assignments", i, "lines", j)
                if line in listed:
                    problems.add(doc, where, f"line {line} is listed twice")
                    continue
                listed.add(line)
                owner_tenant, owner_i = owners.setdefault(
                    (tenant.k_account.upper(), line), (tenant, i)
                )
                owner = owner_tenant.assignments[owner_i]
                same_user = domain_user_key(owner.user) == domain_user_key(assignment.user)
                if same_user or (owner.shared and assignment.shared):
                    continue
                elsewhere = ""
                if owner_tenant is not tenant:
                    first = problems.source_map.locate(
                        estate.origin[("Tenant", owner_tenant.name)],
                        ("assignments", owner_i, "user"),
                    )
                    elsewhere = f" in tenant {owner_tenant.name!r} of {tenant.k_account} ({first})"
                problems.add(
                    doc,
                    where,
                    f"line {line} is already assigned to {owner.user}{elsewhere}: set "
                    "'shared: true' on both assignments to give it to several users",
                )


def _check_isolation(estate: Estate, problems: Problems) -> None:
    """A domain user belongs to one tenant only, unless the Site allows that account across tenants.

    The manual: a client of one customer must never get access to another customer's lines.
    """
    first_seen: dict[str, tuple[str, int]] = {}
    for tenant in estate.tenants.values():
        if estate.incomplete(tenant):
            continue  # which accounts its Site allows across tenants is not known
        doc = estate.origin[("Tenant", tenant.name)]
        server = estate.servers.get(tenant.server)
        site = estate.site_of(server) if server is not None else None
        allowed = {domain_user_key(u) for u in site.directory.cross_tenant_users} if site else set()
        for i, assignment in enumerate(tenant.assignments):
            key = domain_user_key(assignment.user)
            if key in allowed:
                continue
            if key in first_seen and first_seen[key][0] != tenant.name:
                other, other_i = first_seen[key]
                where = problems.source_map.locate(
                    estate.origin[("Tenant", other)], ("assignments", other_i, "user")
                )
                problems.add(
                    doc,
                    ("assignments", i, "user"),
                    f"{assignment.user} is already a user of tenant {other!r} ({where}); tenants "
                    "are isolated: list the account in the Site's cross_tenant_users to allow it",
                )
            first_seen.setdefault(key, (tenant.name, i))


def _check_firewalls(estate: Estate, problems: Problems) -> None:
    for server in estate.servers.values():
        if estate.site_of(server) is None:
            continue
        doc = estate.origin[("TapiServer", server.name)]
        for p, preset in enumerate(server.firewall.presets):
            if preset is FirewallPreset.client:
                problems.add(
                    doc, ("firewall", "presets", p), "preset nfon-tapi-client is for TapiClients"
                )
            elif "clients" in preset_peer_needs(preset) and not server.client_subnets:
                problems.add(
                    doc,
                    ("firewall", "presets", p),
                    "preset nfon-tapi-server opens the server to client_subnets, and there are "
                    "none: add client_subnets (or drop the preset)",
                )
        _check_rules(server_rules(estate, server), doc, problems)
    for clients in estate.clients.values():
        doc = estate.origin[("TapiClients", clients.name)]
        for p, preset in enumerate(clients.firewall.presets):
            if preset is FirewallPreset.server:
                problems.add(
                    doc, ("firewall", "presets", p), "preset nfon-tapi-server is for a TapiServer"
                )
        _check_rules(client_rules(estate, clients), doc, problems)


def _check_rules(rules: list[ExpandedRule], doc: Document, problems: Problems) -> None:
    by_name: dict[str, ExpandedRule] = {}
    by_match: dict[tuple[object, ...], ExpandedRule] = {}
    for expanded in rules:
        rule = expanded.rule
        if expanded.index is not None:
            base = ("firewall", "rules", expanded.index)
            if rule.protocol not in _PORTED:
                for field in ("local_ports", "remote_ports"):
                    if getattr(rule, field):
                        problems.add(
                            doc,
                            (*base, field),
                            f"protocol {rule.protocol.value} has no ports: "
                            f"drop {field} or use tcp/udp",
                        )
        if rule.name.lower() in by_name:
            if expanded.index is not None:
                problems.add(
                    doc,
                    ("firewall", "rules", expanded.index, "name"),
                    f"rule name {rule.name!r} is already used by "
                    f"{_origin(by_name[rule.name.lower()])}",
                )
            continue
        by_name[rule.name.lower()] = expanded
        match = (
            rule.direction,
            rule.action,
            rule.protocol,
            tuple(sorted(rule.local_ports)),
            tuple(sorted(rule.remote_ports)),
            tuple(sorted(rule.remote_addresses)),
            rule.profiles if isinstance(rule.profiles, str) else tuple(sorted(rule.profiles)),
        )
        if match in by_match and expanded.index is not None:
            problems.add(
                doc,
                ("firewall", "rules", expanded.index),
                f"rule {rule.name!r} matches the same traffic as {_origin(by_match[match])}",
            )
        by_match.setdefault(match, expanded)


def _origin(expanded: ExpandedRule) -> str:
    if expanded.preset is not None:
        return f"rule {expanded.rule.name!r} of preset {expanded.preset.value}"
    return f"rules[{expanded.index}] ({expanded.rule.name!r})"


def _check_winrm(estate: Estate, problems: Problems) -> None:
    hosts: list[tuple[str, TapiServer | TapiClients]] = [
        *(("TapiServer", s) for s in estate.servers.values()),
        *(("TapiClients", c) for c in estate.clients.values()),
    ]
    for kind, doc in hosts:
        site = estate.site_of(doc)
        if site is None:
            continue
        insecure = estate.winrm_for(doc).insecurity()
        if insecure is None:
            continue
        field, message = insecure
        path = ("winrm", field) if doc.winrm != WinRMSettings() else ("name",)
        problems.add(estate.origin[(kind, doc.name)], path, message)


def _check_hosts(estate: Estate, problems: Problems) -> None:
    addresses: dict[str, str] = {}
    for server in estate.servers.values():
        key = str(server.address)
        if key in addresses:
            problems.add(
                estate.origin[("TapiServer", server.name)],
                ("address",),
                f"address {key} is already the address of server {addresses[key]!r}",
            )
        addresses.setdefault(key, server.name)
    seen: dict[str, str] = {}
    for clients in estate.clients.values():
        for i, host in enumerate(clients.hosts):
            key = host.lower()
            if key in seen:
                problems.add(
                    estate.origin[("TapiClients", clients.name)],
                    ("hosts", i),
                    f"host {host!r} is already in TapiClients {seen[key]!r}",
                )
            seen.setdefault(key, clients.name)


def _check_users_groups(estate: Estate, problems: Problems) -> None:
    """A users group must live in the Site's domain, or it could be neither read nor managed."""
    for tenant in estate.tenants.values():
        server = estate.servers.get(tenant.server)
        site = estate.site_of(server) if server else None
        if tenant.users_group is None or site is None:
            continue
        domain = tenant.users_group.split("\\")[0]
        if domain.upper() != site.directory.netbios_domain.upper():
            problems.add(
                estate.origin[("Tenant", tenant.name)],
                ("users_group",),
                f"users_group {tenant.users_group} is not in the Site's domain "
                f"{site.directory.netbios_domain}: the provisioner reads and manages groups there",
            )


def _check_packages(estate: Estate, problems: Problems) -> None:
    """Where the host gets the package from, checked before anything reaches a host."""
    for server in estate.servers.values():
        package = server.package
        if package is None:
            continue
        where = estate.origin[("TapiServer", server.name)]
        message = _package_source_problem(package, where.file)
        if message:
            problems.add(where, ("package", "source"), message)
        elif package.host_reads_share and package.fetch != "unc":
            problems.add(
                where, ("package", "host_reads_share"), "host_reads_share is for UNC sources only"
            )


def _package_source_problem(package: Package, manifest_file: str) -> str:
    if package.fetch == "other":
        return (
            f"package.source '{package.source}': the host fetches only https:// URLs; or give a "
            "file on this workstation, which is sent over WinRM"
        )
    if package.fetch == "unc" and not package.host_reads_share:
        return (
            f"package.source '{package.source}': over WinRM the host cannot use your "
            "credentials to read a share (the second hop); give a file on this workstation or "
            "an https:// URL, or set host_reads_share: true if the host reads the share by itself"
        )
    if package.fetch != "upload":
        return ""
    path = package.local_path(manifest_file)
    try:
        digest = _sha256_of(path)
    except OSError as exc:
        return (
            f"package.source: {path} cannot be read ({exc.strerror}); a relative path is "
            "relative to this manifest's folder"
        )
    if digest != package.sha256.lower():
        return f"package.source: {path} has sha256 {digest}, not package.sha256 {package.sha256}"
    return ""


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_platform(estate: Estate, problems: Problems) -> None:
    """``platform:`` overrides may only name keys of the platform profile."""
    known = {f.name for f in fields(Profile)}
    for kind, registry in (("Site", estate.sites), ("TapiServer", estate.servers)):
        for name, document in registry.items():
            for key, value in document.platform.items():
                where = estate.origin[(kind, name)]
                if key not in known:
                    problems.add(
                        where,
                        ("platform", key),
                        f"platform: unknown key {key!r} (known: {', '.join(sorted(known))})",
                        key=True,
                    )
                elif (placeholders := _placeholder_problem(key, value)) is not None:
                    problems.add(where, ("platform", key), placeholders)
                elif not value.strip():
                    problems.add(where, ("platform", key), f"platform.{key} may not be empty")
                elif key in TIMEOUT_KEYS and not _seconds(value):
                    problems.add(
                        where,
                        ("platform", key),
                        f"platform.{key}: a number of seconds from 1 to 86400, not {value!r}",
                    )


# the keys that name one thing per TSP instance, and what goes wrong when they do not
_PATTERNS = {
    "instance_file_pattern": "every tenant on a server would copy the TSP to one file",
    "instance_provider_name": "every tenant on a server would register one provider name",
    "instance_settings_key": "every tenant on a server would write one registry key",
}


def _placeholder_problem(key: str, value: str) -> str | None:
    """The instance patterns hold ``{instance}`` and nothing else in braces; other keys none."""
    try:
        fields = [(f, spec, conv) for _, f, spec, conv in Formatter().parse(value) if f is not None]
    except ValueError:  # a lone brace
        fields = [("", "", "")]
    if key not in _PATTERNS:
        if not fields:
            return None
        names = ", ".join(_PATTERNS)
        return f"platform.{key} takes no placeholder: only {names} fill in {{instance}}"
    if any(name != "instance" or spec or conv for name, spec, conv in fields):
        return f"platform.{key}: the only placeholder allowed is {{instance}}"
    if not fields:
        return f"platform.{key} must contain {{instance}}: without it {_PATTERNS[key]}"
    return None


def _seconds(value: str) -> bool:
    return value.strip().isdigit() and 1 <= int(value) <= 86400


def _known(registry: Mapping[str, object]) -> str:
    if not registry:
        return " (none is)"
    return f" (known: {', '.join(sorted(registry))})"
