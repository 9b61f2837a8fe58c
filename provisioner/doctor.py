"""``provisioner doctor``: the preflight before the first apply, from ONE gather, read-only.

Each check is one small function beside the facts it reads, registered with :func:`check`; it
returns ``(status, message)``, the message one line of what was found or what to do, or None
where it does not concern the host (a workstation has no Telephony server)::

    @check("PowerShell")
    def powershell_version(subject: Subject) -> Verdict:
        version = subject.system.powershell_version
        ...

The transport check (reachable, TLS verified) comes first and from the connection itself; when
the gather fails, it or the language mode says why and nothing else is checked. ``--capture``
keeps what was read, without secrets or user names (:mod:`provisioner.capture`).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import click

from provisioner.commands import EXIT_ERROR, EXIT_OK, Options, load, load_inventory_for
from provisioner.connectors import Connect, endpoint_for, over_winrm
from provisioner.errors import ProvisionerError
from provisioner.host_locks import holder_text, lapsed
from provisioner.manifest.validate import Estate
from provisioner.planner import Host, PlanInputs, context, hosts
from provisioner.remote.contract import RPC_PORTS, GatherRequest, HostFacts, SystemFacts
from provisioner.remote.host import HostError
from provisioner.remote.scripts import RemoteScriptError
from provisioner.resources import line_assignment, package, tsp_instance
from provisioner.resources.base import HostContext
from provisioner.runner import gather_request
from provisioner.transports.winrm import MAX_ENVELOPE_BYTES, WinRMEndpoint

Status = Literal["passed", "warning", "failed"]
Verdict = tuple[Status, str]
PASSED: Status = "passed"
WARNING: Status = "warning"
FAILED: Status = "failed"
MB = 2**20


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    message: str


@dataclass
class Report:
    host: Host
    findings: list[Finding]
    facts: HostFacts | None = None  # None when the gather failed

    @property
    def passed(self) -> bool:
        return all(finding.status != FAILED for finding in self.findings)

    def summary(self) -> str:
        counts = {status: 0 for status in (PASSED, WARNING, FAILED)}
        for finding in self.findings:
            counts[finding.status] += 1
        warnings = "warning" if counts[WARNING] == 1 else "warnings"
        return (
            f"{self.host.name}: {counts[PASSED]} passed, {counts[WARNING]} {warnings}, "
            f"{counts[FAILED]} failed"
        )


@dataclass(frozen=True)
class Subject:
    """What the checks read: one gather's facts, and the host's plan context (its manifests,
    platform profile and tenants)."""

    host: Host
    facts: HostFacts
    ctx: HostContext
    package_bytes: int | None = None  # the size of a workstation package, when there is one

    @property
    def system(self) -> SystemFacts:
        assert self.facts.system is not None, "a contract 2 gather always reports the system"
        return self.facts.system


CheckFunction = Callable[[Subject], Verdict | None]
Role = Literal["server", "client"]


@dataclass(frozen=True)
class Check:
    name: str
    role: Role | None  # None: both
    run: CheckFunction


CHECKS: list[Check] = []


def check(name: str, role: Role | None = None) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check, in the order of the report."""

    def register(function: CheckFunction) -> CheckFunction:
        CHECKS.append(Check(name, role, function))
        return function

    return register


# --- the host itself ---------------------------------------------------------------------------

OLDEST_WINDOWS = (10, 0, 14393)  # Windows Server 2016: Windows PowerShell 5.1 in the box


@check("Windows")
def windows_version(subject: Subject) -> Verdict:
    system = subject.system
    name = f"{system.windows_product or 'Windows'} ({system.windows_version})"
    if package.version_key(system.windows_version) < OLDEST_WINDOWS:
        return FAILED, f"{name} is older than Windows Server 2016 (10.0.14393): use a newer server"
    return PASSED, name


@check("PowerShell")
def powershell_version(subject: Subject) -> Verdict:
    version = subject.system.powershell_version
    if package.version_key(version)[:2] < (5, 1):
        return FAILED, (
            f"Windows PowerShell {version}: the scripts need 5.1 (Windows Management Framework "
            "5.1, or Windows Server 2016 and later)"
        )
    return PASSED, f"Windows PowerShell {version}"


FULL_LANGUAGE = (
    "the scripts need FullLanguage: exempt the WinRM user or powershell.exe from the "
    "application control policy (AppLocker, WDAC)"
)


@check("language mode")
def language_mode(subject: Subject) -> Verdict:
    mode = subject.system.language_mode
    if mode != "FullLanguage":
        return FAILED, f"PowerShell runs in {mode}; {FULL_LANGUAGE}"
    return PASSED, "FullLanguage"


@check("elevation")
def elevated(subject: Subject) -> Verdict:
    if not subject.system.elevated:
        return FAILED, (
            "the WinRM user's token is not elevated (remote UAC filters local accounts other "
            "than Administrator): use a domain account in the local Administrators group, or set "
            "LocalAccountTokenFilterPolicy=1"
        )
    return PASSED, "the WinRM user holds an elevated administrator token"


# Commands one apply may run in one shell: gather, upload, batch, gather, second batch, owed
# restarts, verifying gather; Windows counts each (and the shell) until the shell is deleted.
OPERATIONS_PER_RUN = 8
# GUESS: the upload script holds the package as base64 text (UTF-16), its JSON and its bytes:
# about eight times the file, plus PowerShell itself.
UPLOAD_MEMORY_FACTOR, POWERSHELL_MB = 8, 200


@check("WinRM quotas")
def winrm_quotas(subject: Subject) -> Verdict:
    winrm = subject.facts.winrm
    if winrm is None or winrm.max_envelope_size_kb is None:
        return WARNING, (
            "winrm/config could not be read (the WSMan: drive needs an administrator): check "
            "MaxEnvelopeSizekb >= 150 with 'winrm get winrm/config' on the host"
        )
    envelope_kb = math.ceil(MAX_ENVELOPE_BYTES / 1024)
    if winrm.max_envelope_size_kb < envelope_kb:
        return FAILED, (
            f"MaxEnvelopeSizekb is {winrm.max_envelope_size_kb}, below the {envelope_kb} KB the "
            f'provisioner sends at once: winrm set winrm/config @{{MaxEnvelopeSizekb="500"}}'
        )
    operations = winrm.max_concurrent_operations_per_user
    if operations is not None and operations < OPERATIONS_PER_RUN:
        return FAILED, (
            f"MaxConcurrentOperationsPerUser is {operations}, below the {OPERATIONS_PER_RUN} "
            "commands one apply runs in its shell: winrm set winrm/config/service "
            '@{MaxConcurrentOperationsPerUser="1500"}'
        )
    if winrm.max_shells_per_user is not None and winrm.max_shells_per_user < 1:
        return FAILED, "MaxShellsPerUser is 0: no WinRS shell can be opened"
    memory = winrm.max_memory_per_shell_mb
    if subject.package_bytes is not None and memory:  # 0 is unlimited
        needed = math.ceil(subject.package_bytes * UPLOAD_MEMORY_FACTOR / MB) + POWERSHELL_MB
        if memory < needed:
            return WARNING, (
                f"MaxMemoryPerShellMB is {memory}; uploading the {subject.package_bytes // MB} "
                f"MB package may need about {needed}: raise it (winrm set winrm/config/winrs "
                '@{MaxMemoryPerShellMB="2048"}) or give package.source as an https URL'
            )
    return PASSED, (
        f"MaxEnvelopeSizekb {winrm.max_envelope_size_kb}, MaxShellsPerUser "
        f"{winrm.max_shells_per_user}, MaxConcurrentOperationsPerUser {operations}, "
        f"MaxMemoryPerShellMB {memory}"
    )


@check("firewall service")
def firewall_service(subject: Subject) -> Verdict:
    if not subject.system.firewall_service_running:
        return FAILED, (
            "the Windows Defender Firewall service (MpsSvc) is not running: firewall rules can "
            "be neither read nor written; start it (Start-Service MpsSvc)"
        )
    return PASSED, "MpsSvc running"


@check("pending reboot")
def pending_reboot(subject: Subject) -> Verdict:
    reasons = subject.system.pending_reboot
    if reasons:
        return FAILED, (
            f"a reboot is pending ({', '.join(reasons)}): reboot first; an install or a service "
            "change before it may fail or be undone by it"
        )
    return PASSED, "none pending"


@check("host lock")
def host_lock(subject: Subject) -> Verdict:
    lock = subject.facts.lock
    if lock is None or lapsed(lock):
        return PASSED, "no apply or rollout holds the host"
    return WARNING, (
        f"{holder_text(lock)}: an apply or rollout now fails on this host, or queues with --wait"
    )


# --- the Telephony server -----------------------------------------------------------------------


@check("Telephony service", "server")
def telephony_service(subject: Subject) -> Verdict:
    telephony = subject.facts.telephony
    name = subject.ctx.profile.telephony_service
    if telephony is None:
        return FAILED, f"there is no service {name}: is this a Windows Server with TAPI?"
    service = telephony.service
    if service.start_mode == "disabled":
        return FAILED, (
            f"{service.name} is disabled: TAPI cannot start; set it to Manual "
            f"(sc.exe config {service.name} start= demand)"
        )
    if service.account_sid is None:
        return FAILED, (
            f"{service.name} runs as {service.account}, which does not resolve to an account "
            "here: set telephony.service_account (with its password) and apply"
        )
    if service.logon_right is False:
        return FAILED, (
            f"{service.name}'s account {service.account} lacks 'Log on as a service': the "
            "service would fail with error 1069; grant the right (apply grants it to the account "
            "the manifest names)"
        )
    return PASSED, f"{service.name} {service.state}, {service.start_mode}, as {service.account}"


@check("tsecimp", "server")
def tsecimp_present(subject: Subject) -> Verdict:
    tools = subject.facts.tools
    if tools is None or not tools.tsecimp:
        return FAILED, (
            "System32\\tsecimp.exe is missing: line assignments can be neither read nor written; "
            "it comes with Windows Server editions: is this one?"
        )
    return PASSED, "System32\\tsecimp.exe present"


@check("tcmsetup", "client")
def tcmsetup_present(subject: Subject) -> Verdict:
    tools = subject.facts.tools
    if tools is None or not tools.tcmsetup:
        return FAILED, "System32\\tcmsetup.exe is missing: the remote TAPI client cannot be set"
    return PASSED, "System32\\tcmsetup.exe present"


@check("NFON package", "server")
def nfon_package(subject: Subject) -> Verdict:
    wanted = subject.ctx.server.package if subject.ctx.server else None
    name = subject.ctx.profile.package_name
    have = package.installed(subject.ctx)
    if wanted is None:
        found = [p for p in subject.facts.packages if p.name.casefold() == name.casefold()]
        if found:
            return PASSED, f"{name} {found[0].version} installed (the manifest manages none)"
        return WARNING, f"{name} is not installed and the manifest names no package: add one"
    if have is None:
        return WARNING, f"{name} is not installed yet: apply installs {wanted.version}"
    if package.version_key(have.version) > package.version_key(wanted.version):
        return FAILED, (
            f"{name} {have.version} is installed, newer than package.version {wanted.version}: "
            "the provisioner does not downgrade; raise package.version (source, sha256)"
        )
    if package.version_key(have.version) < package.version_key(wanted.version):
        return WARNING, f"{name} {have.version} installed: apply upgrades it to {wanted.version}"
    return PASSED, f"{name} {have.version} installed, as the manifest says"


@check("verpatch", "server")
def verpatch_present(subject: Subject) -> Verdict:
    path = subject.ctx.profile.verpatch_path
    tools = subject.facts.tools
    if tools is None or not tools.verpatch:
        return FAILED, (
            f"verpatch.exe is not at {path}: creating a TSP instance needs it; download it (the "
            "NFON manual's section on TSP instances) and copy it there, or set "
            "platform.verpatch_path"
        )
    return PASSED, f"{path} present"


@check("instance keys", "server")
def instance_keys(subject: Subject) -> Verdict:
    instances = subject.facts.tsp_instances
    telephony = subject.facts.telephony
    allowed = {tsp_instance.principal(sid) for sid in ("S-1-5-18", "S-1-5-32-544")}
    service = telephony.service if telephony else None
    if service is not None and service.account_sid is not None:
        allowed.add(tsp_instance.principal(service.account_sid, service.account))
    for instance in instances:
        acl = instance.settings_acl
        if acl is None:
            continue  # no settings key yet: apply writes it with its ACL
        extra = sorted(set(tsp_instance.readers(acl)) - allowed)
        wrong = ([] if acl.protected else ["inherits HKLM\\SOFTWARE's permissions"]) + (
            [f"may be read by {', '.join(extra)}"] if extra else []
        )
        if wrong:
            return FAILED, (
                f"TSP instance {instance.instance}'s settings key (its CTI password) "
                f"{' and '.join(wrong)}: apply gives it a protected ACL (plan: acl_inherited, "
                "readers)"
            )
    keys = sum(1 for i in instances if i.settings_acl is not None)
    return (
        PASSED,
        f"{keys} instance settings keys read, each readable only by {', '.join(sorted(allowed))}",
    )


@check("RPC exposure", "server")
def rpc_exposure(subject: Subject) -> Verdict:
    subnets = [
        ipaddress.ip_network(str(n))
        for n in (subject.ctx.server.client_subnets if subject.ctx.server else [])
    ]
    opening = [
        rule.name
        for rule in subject.facts.open_rpc_rules
        if any(_outside(part.strip(), subnets) for part in rule.remote_addresses.split(","))
    ]
    ports = ", ".join(RPC_PORTS)
    if opening:
        named = ", ".join(repr(name) for name in opening[:3])
        more = f" and {len(opening) - 3} more" if len(opening) > 3 else ""
        return FAILED, (
            f"firewall rule {named}{more} opens TapiSrv's ports ({ports}) to addresses outside "
            "the client subnets: limit its remote addresses to client_subnets, or disable it"
        )
    within = ", ".join(str(n) for n in subnets) or "(none)"
    return PASSED, f"no enabled rule opens {ports} beyond the client subnets ({within})"


def _outside(
    address: str, subnets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether a RemoteAddresses entry (``*``, a keyword, a range, a subnet) reaches beyond the
    subnets; what cannot be read as addresses does."""
    low_text, _, high_text = address.partition("-")
    try:
        if high_text:
            low, high = ipaddress.ip_address(low_text), ipaddress.ip_address(high_text)
        else:
            network = ipaddress.ip_network(address, strict=False)
            low, high = network.network_address, network.broadcast_address
    except ValueError:
        return True  # *, LocalSubnet, Internet, ...
    spans = sorted(
        (int(subnet.network_address), int(subnet.broadcast_address))
        for subnet in subnets
        if subnet.version == low.version
    )
    reach = int(low)  # walk the subnets, adjacent ones joined, from the entry's first address
    for first, last in spans:
        if first <= reach <= last:
            reach = last + 1
    return reach <= int(high)


# GUESS: the package's cache copy, Windows Installer's own copy and the installed files, with
# room to spare; a package of unknown size (https, a share) counts as 100 MB.
DISK_FACTOR, DISK_SPARE_MB, UNKNOWN_PACKAGE_BYTES = 3, 200, 100 * MB


@check("free disk", "server")
def free_disk(subject: Subject) -> Verdict:
    free = subject.system.system_drive_free_bytes
    size = subject.package_bytes or UNKNOWN_PACKAGE_BYTES
    needed = DISK_FACTOR * size + DISK_SPARE_MB * MB
    if free < needed:
        return FAILED, (
            f"{free // MB} MB free on the system drive; installing the package needs about "
            f"{needed // MB} MB: free some space"
        )
    return PASSED, f"{free // MB} MB free on the system drive"


@check("tsecimp listing", "server")
def tsecimp_listing(subject: Subject) -> Verdict:
    text = subject.facts.tsecimp_listing
    if text is None:
        return WARNING, "there is no 'tsecimp /d' listing to read (see tsecimp)"
    if not text.strip():
        return WARNING, (
            "'tsecimp /d' printed nothing: TAPI did not initialise (see the Telephony service)"
        )
    read = line_assignment.listing(subject.ctx)
    if read.problems:
        more = f" (and {len(read.problems) - 1} more)" if len(read.problems) > 1 else ""
        return FAILED, (
            f"the 'tsecimp /d' listing does not read one way only: {read.problems[0]}{more}; "
            "line changes on this host are held back until it does ('doctor --capture' keeps it "
            "for a bug report)"
        )
    lines = sum(len(provider.lines) for provider in read.providers)
    return PASSED, f"{len(read.providers)} providers and {lines} lines read one way only"


@check("package source", "server")
def package_source(subject: Subject) -> Verdict | None:
    wanted = subject.ctx.server.package if subject.ctx.server else None
    if wanted is None or wanted.fetch != "unc":
        return None
    if not subject.facts.package_source_readable:
        return FAILED, (
            f"the host cannot read {wanted.source} by itself (over WinRM it has no credentials "
            "for another machine: the second hop): grant the server's computer account read "
            "access to the share, or give package.source as a file on this workstation"
        )
    return PASSED, f"the host reads {wanted.source} by itself"


# --- running the checks ------------------------------------------------------------------------


def doctor_request(estate: Estate, host: Host) -> GatherRequest:
    """The plan's gather request, and a UNC package source to try reading."""
    request = gather_request(estate, host)
    server = estate.servers.get(host.name) if host.role == "server" else None
    if server is not None and server.package is not None and server.package.fetch == "unc":
        request = request.model_copy(update={"package_source": server.package.source})
    return request


def package_size(estate: Estate, host: Host) -> int | None:
    server = estate.servers.get(host.name) if host.role == "server" else None
    if server is None or server.package is None or server.package.fetch != "upload":
        return None
    path = server.package.local_path(estate.origin[("TapiServer", server.name)].file)
    return path.stat().st_size if path.is_file() else None


def run_checks(subject: Subject) -> list[Finding]:
    findings = []
    for item in CHECKS:
        if item.role not in (None, subject.host.role):
            continue
        verdict = item.run(subject)
        if verdict is not None:
            findings.append(Finding(item.name, *verdict))
    return findings


def transport_finding(endpoint: WinRMEndpoint, error: ProvisionerError | None) -> Finding:
    """Reachable over WinRM, with TLS verified."""
    name = "WinRM"
    cause = error.cause if isinstance(error, HostError) else error
    if cause is not None and not isinstance(cause, RemoteScriptError):
        return Finding(name, FAILED, str(cause))
    if endpoint.scheme != "https":
        return Finding(
            name,
            FAILED,
            f"{endpoint.address} answered over http: the host's identity is not verified; use "
            "https with the CA that issued its certificate (winrm.ca_file)",
        )
    if not endpoint.verifies_certificate:
        return Finding(
            name,
            FAILED,
            f"{endpoint.address} answered over https without verifying its certificate "
            "(allow_insecure): set winrm.ca_file to the CA that issued it",
        )
    trusted = endpoint.ca_file or "the system's CAs"
    return Finding(name, PASSED, f"{endpoint.address} over https, certificate verified ({trusted})")


def gather_failure(error: HostError) -> Finding:
    """The command ran but the script did not: the language mode, or what the host said."""
    message = str(error.cause)
    if "language mode" in message:
        return Finding("language mode", FAILED, f"{message}; {FULL_LANGUAGE}")
    return Finding("gather", FAILED, message)


def diagnose(estate: Estate, host: Host, endpoint: WinRMEndpoint, connect: Connect) -> Report:
    """ONE gather, then every check on what it read."""
    try:
        with connect(host) as remote:
            facts = remote.gather(doctor_request(estate, host))
    except ProvisionerError as exc:  # unreachable, refused, or the script failed there
        findings = [transport_finding(endpoint, exc)]
        if isinstance(exc, HostError) and isinstance(exc.cause, RemoteScriptError):
            findings.append(gather_failure(exc))
        return Report(host, findings)
    findings = run_checks(subject_of(estate, host, facts))
    return Report(host, [transport_finding(endpoint, None), *findings], facts)


def subject_of(estate: Estate, host: Host, facts: HostFacts) -> Subject:
    """What the checks read of a host's facts (gathered now, or captured)."""
    ctx = context(estate, host, PlanInputs(facts={host.key: facts}))
    return Subject(host, facts, ctx, package_size(estate, host))


def find_host(estate: Estate, name: str) -> Host:
    matching = [h for h in hosts(estate) if h.name == name]
    if not matching:
        known = ", ".join(h.name for h in hosts(estate))
        raise ProvisionerError(f"no server or client host named {name!r} (known: {known})")
    return matching[0]


MARKS = {PASSED: "✓", WARNING: "!", FAILED: "✗"}


def render_text(report: Report) -> str:
    lines = [f"{report.host.name}: one gather, read-only"]
    lines += [f"  {MARKS[f.status]} {f.check}: {f.message}" for f in report.findings]
    return "\n".join([*lines, report.summary()])


def render_json(report: Report) -> str:
    document = {
        "host": report.host.name,
        "role": report.host.role,
        "passed": report.passed,
        "checks": [asdict(finding) for finding in report.findings],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def doctor_command(
    paths: Sequence[Path],
    options: Options,
    *,
    name: str,
    output_format: str,
    capture: Path | None = None,
) -> int:
    """Exit 0 when every check passed (warnings allowed), 1 otherwise."""
    estate = load(paths)
    host = find_host(estate, name)
    inventory = load_inventory_for(estate, options, only=[name])
    endpoint = endpoint_for(estate, inventory, host)
    report = diagnose(estate, host, endpoint, over_winrm(estate, inventory))
    options.echo(render_json(report) if output_format == "json" else render_text(report))
    if capture is not None:
        from provisioner.capture import write_capture

        written = write_capture(capture, estate, report)
        click.echo(
            f"Captured {len(written)} files in {capture}: read them before you attach them.",
            err=True,
        )
    return EXIT_OK if report.passed else EXIT_ERROR
