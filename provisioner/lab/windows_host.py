"""A simulated Windows host: the command handler behind the lab's WS-Management server.

It cannot run PowerShell. It recognises the provisioner's constant bootstrap command line and
each shipped script by its identity (header + hash, :func:`provisioner.remote.scripts.load`),
and performs that script's contract (:mod:`provisioner.remote.contract`) on a modelled state::

    host = WindowsHost.fresh("TAPI01", pbx_lines=lambda k_account: [("100", "Anna Schmidt")])
    command, arguments = scripts.command_line()
    payload = scripts.stdin_payload(scripts.load("gather"), GatherRequest(role="server", ...))
    result = host(command, arguments, payload)          # CommandResult(stdout=b'{"contract":1,...')
    facts = scripts.parse_output(result.stdout, HostFacts)

The model fails the way Windows fails. Each behaviour comes from a public source listed in
:mod:`provisioner.lab.windows_rules` and is cited by name beside the code that enforces it
(``# rule: SECOND_HOP``): a UNC share is out of reach from a WinRM session, Win32_Service.Change
answers its documented codes, a service whose account cannot log on as a service does not start
(1069), new registry keys inherit HKLM\\SOFTWARE's "Users: Read", msiexec answers 1638 for a
same-ProductCode upgrade without REINSTALL, verpatch.exe is not in the package, tools can hang,
powershell.exe in ConstrainedLanguage mode fails before any script runs, a firewall rule counts
only in the profiles active now, the lock file is kept open by the command that holds the lock
and every other writer is refused.

Like Windows, it runs each command as its own process would, concurrently with the others: its
own lock (:attr:`WindowsHost.lock`) is held per step of a batch and per part of a gather, never
for a whole command, so two commands on one host interleave; the one atomicity it grants beyond
that is what Windows grants, an open of the lock file that another handle's sharing refuses
(:class:`OpenFiles`).
Beyond the rules: a sealed secret is opened with the host's RSA key, checked against its
fingerprint and kept sealed (the state never holds a clear secret, nor an account's password:
only a salted digest of it). :class:`WindowsHostState` is plain data that round-trips through
JSON, so the lab can keep a host between commands.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TypeVar

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, TypeAdapter, ValidationError

from provisioner.lab.wsman_server import (
    MAX_ENVELOPE_KB,
    MAX_OPERATIONS_PER_USER,
    MAX_SHELLS_PER_USER,
    clixml_error,
)
from provisioner.manifest.models import TapiServer, domain_user_key
from provisioner.platform import Profile, default_profile
from provisioner.remote import scripts
from provisioner.remote.contract import (
    AceFacts,
    ApplyRequest,
    ApplyResponse,
    FirewallRemove,
    FirewallRuleFacts,
    FirewallUpsert,
    GatherRequest,
    HostFacts,
    KeyAclFacts,
    LocationFacts,
    LocationSet,
    LockInfo,
    LockRefusal,
    LockRequest,
    LogonRightGrant,
    Operation,
    PackageFacts,
    PackageInstall,
    ProviderFacts,
    SealedSecret,
    SealKey,
    ServiceConfigure,
    ServiceControl,
    ServiceFacts,
    StepResult,
    SystemFacts,
    TapiClientFacts,
    TapiClientSet,
    TelephonyConfigure,
    TelephonyFacts,
    Timeouts,
    ToolFacts,
    TsecimpImport,
    TspInstanceConfigure,
    TspInstanceCreate,
    TspInstanceFacts,
    TspInstanceRemove,
    TspSettingsFacts,
    UploadRequest,
    UploadResponse,
    WinRMConfigFacts,
)
from provisioner.remote.contract import Fingerprint as FingerprintModel
from provisioner.remote.tsecimp import (
    ListedLine,
    ListedProvider,
    TsecimpError,
    format_listing,
    parse_xml,
)
from provisioner.resources.tsp_instance import line_name
from provisioner.secrets import Secret

Role = Literal["server", "client"]
PbxLines = Callable[[str], Sequence[tuple[str, str]]]
"""``pbx_lines(k_account) -> [(extension number, display name), ...]``: a tenant's PBX data."""
Web = Callable[[str], bytes | None]
"""``web(url) -> content``, None for a URL no server answers: what the host can download."""

TELEPHONY_SERVICE = "TapiSrv"
FIREWALL_SERVICE = "MpsSvc"
_LOCAL_SERVICE = "NT AUTHORITY\\LocalService"
_WINDOWS_TOOLS = ("tsecimp.exe", "tcmsetup.exe")  # in System32 of every Windows Server
_WINDOWS_TOOLS_BY_NAME = {tool.removesuffix(".exe"): tool for tool in _WINDOWS_TOOLS}
LAB_CTI_ENGINE_SERVICE = default_profile().cti_engine_service  # what lab packages install
LAB_TSP_FILE = "NFONTSP.TSP"
_STATE_DIR = "C:\\ProgramData\\NFON-Provisioner"
LOCK_FILE = f"{_STATE_DIR}\\lock.json"
_SYSTEM32 = "C:\\Windows\\System32"
SYSTEM_SID, ADMINISTRATORS_SID = "S-1-5-18", "S-1-5-32-544"
# Built-in service accounts by every spelling, with their SIDs and their names as a host prints
# them; they have no password.
_BUILTIN_SIDS = {
    "localsystem": "S-1-5-18",
    ".\\localsystem": "S-1-5-18",
    "nt authority\\system": "S-1-5-18",
    "nt authority\\networkservice": "S-1-5-20",
    "nt authority\\network service": "S-1-5-20",
    "nt authority\\localservice": "S-1-5-19",
    "nt authority\\local service": "S-1-5-19",
}
_SID_NAMES = {
    "S-1-5-18": "NT AUTHORITY\\SYSTEM",
    "S-1-5-19": "NT AUTHORITY\\LOCAL SERVICE",
    "S-1-5-20": "NT AUTHORITY\\NETWORK SERVICE",
    "S-1-5-32-544": "BUILTIN\\Administrators",
    "S-1-5-32-545": "BUILTIN\\Users",
    "S-1-3-0": "CREATOR OWNER",
    "S-1-15-2-1": "APPLICATION PACKAGE AUTHORITY\\ALL APPLICATION PACKAGES",
}
# rule: LOGON_RIGHT (LocalSystem needs none; Local Service and Network Service hold it).
_LOGON_BY_DEFINITION = frozenset({"S-1-5-18", "S-1-5-19", "S-1-5-20"})
_FULL_CONTROL, _READ_KEY = 0xF003F, 0x20019
_CHANGE_CODES = {  # rule: SERVICE_CHANGE_CODES, as the script names them
    2: "Access Denied: the WinRM user needs an elevated administrator token (a local account "
    "other than Administrator is filtered by remote UAC)",
    15: "Service Logon Failed: the account's password is wrong, or the account cannot log on",
    21: "Status Invalid Parameter: a built-in account takes an empty password, never none",
    22: "Status Invalid Service Account: the account does not exist or may not run the service",
}
_MSI_CODES = {  # rule: MSI_EXIT_CODES, as the script names them
    1603: "ERROR_INSTALL_FAILURE: a fatal error during installation (a newer version "
    "installed, a failed custom action: the log says)",
    1605: "ERROR_UNKNOWN_PRODUCT: the product is not installed",
    1620: "ERROR_INSTALL_PACKAGE_INVALID: the file is not a valid Windows Installer package",
    1638: "ERROR_PRODUCT_VERSION: another version of this product is already installed",
}
_CONSTRAINED = [  # what the bootstrap's first method call meets in ConstrainedLanguage mode
    "Cannot invoke method. Method invocation is supported only on core types in this language "
    "mode.",
    "    + CategoryInfo          : InvalidOperation: (:) [], RuntimeException",
    "    + FullyQualifiedErrorId : MethodInvocationNotSupportedInConstrainedLanguage",
]
_TIMEOUT_KEYS = {
    "msiexec": "msiexec_timeout_seconds",
    "command": "command_timeout_seconds",
    "service": "service_timeout_seconds",
}
_OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
_CLIENT_OPERATIONS = frozenset({"tapi_client.set", "firewall.upsert", "firewall.remove"})
# COM's spelling of the RemoteAddresses keywords.
_ADDRESS_KEYWORDS = {
    word.casefold(): word
    for word in ("LocalSubnet", "DNS", "DHCP", "WINS", "DefaultGateway", "Intranet", "Internet")
}
# Providers every Windows Server has, with the lines they show in the listing.
_BUILTIN_PROVIDERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kmddsp.tsp", "TAPI Kernel-Mode Service Provider", ()),
    (
        "ndptsp.tsp",
        "NDIS Proxy TAPI Service Provider",
        ("WAN Miniport (L2TP)", "WAN Miniport (PPTP)"),
    ),
    ("unimdm.tsp", "Unimodem 5 Service Provider", ()),
)


@dataclass(frozen=True)
class CommandResult:
    """What a command printed and returned (the fields the WS-Management server reads)."""

    stdout: bytes
    stderr: bytes = b""
    exit_code: int = 0


@dataclass(frozen=True)
class RecordedCommand:
    """One command as received; stdin holds only sealed secrets, never clear ones."""

    command: str
    arguments: list[str]
    stdin: bytes


@dataclass(frozen=True)
class LabPackage:
    """An MSI the lab knows by its sha256: what Windows Installer would read from the file."""

    name: str
    version: str
    product_code: str
    sha256: str
    upgrade_code: str = "{6A1B3C5D-0F00-4E10-9A00-0000000000FF}"
    files: tuple[str, ...] = (LAB_TSP_FILE,)
    services: tuple[str, ...] = (LAB_CTI_ENGINE_SERVICE,)


def lab_package_bytes(version: str) -> bytes:
    """The content of the lab's NFONTAPI.msi of ``version`` (a stand-in, not an MSI)."""
    return f"NFONTAPI.msi {version} (lab)".encode()


def lab_package_sha256(version: str) -> str:
    """The sha256 the lab gives NFONTAPI.msi of ``version`` (manifests for the lab use it)."""
    return hashlib.sha256(lab_package_bytes(version)).hexdigest()


def _lab_package(version: str, product_code: str) -> LabPackage:
    return LabPackage("NFON TAPI", version, product_code, lab_package_sha256(version))


LAB_PACKAGES: tuple[LabPackage, ...] = (
    _lab_package("1.0.0", "{6A1B3C5D-0F00-4E10-9A00-000000010000}"),
    # a minor upgrade of 1.0.0: the same ProductCode
    _lab_package("1.0.1", "{6A1B3C5D-0F00-4E10-9A00-000000010000}"),
    _lab_package("1.1.0", "{6A1B3C5D-0F00-4E10-9A00-000000011000}"),
    _lab_package("1.9.0", "{6A1B3C5D-0F00-4E10-9A00-000000019000}"),
    _lab_package("1.10.0", "{6A1B3C5D-0F00-4E10-9A00-000000110000}"),
)


@dataclass
class AdminSetup:
    """What an admin does on a server before the provisioner's first run, learnt from its
    manifests: verpatch.exe downloaded (the package does not ship it), the service accounts
    created in the domain, the package published where an https source points."""

    files: set[str] = field(default_factory=set)
    accounts: dict[str, str] = field(default_factory=dict)  # account → variable of its password
    downloads: dict[str, bytes] = field(default_factory=dict)  # https URL → content

    def learn(self, server: TapiServer, profile: Profile) -> None:
        self.files.add(profile.verpatch_path)
        telephony = server.telephony
        account, password = telephony.service_account, telephony.service_password
        if account and password and password.env:
            self.accounts[account] = password.env
        package = server.package
        if package is not None and package.fetch == "https":
            self.downloads[package.source] = lab_package_bytes(package.version)

    def prepare(self, host: WindowsHost, values: Mapping[str, str]) -> None:
        for path in sorted(self.files):
            host.add_file(path)
        for account, variable in self.accounts.items():
            if variable in values:
                host.add_account(account, Secret(values[variable]))


# --- the state: plain data, JSON both ways ----------------------------------------------------


@dataclass
class StoredFingerprint:
    salt: str
    hmac: str


@dataclass
class AccountRecord:
    """A domain or local account the host can resolve; its password only as a salted digest."""

    name: str
    sid: str
    password: StoredFingerprint


@dataclass
class AceRecord:
    sid: str
    rights: int
    allow: bool = True


@dataclass
class AclRecord:
    protected: bool
    entries: list[AceRecord] = field(default_factory=list)


def inherited_software_acl() -> AclRecord:
    """What a key created under HKLM\\SOFTWARE without an ACL of its own gets."""
    # rule: HKLM_SOFTWARE_DEFAULT_ACL (CREATOR OWNER's entry is for subkeys only: not listed)
    return AclRecord(
        protected=False,
        entries=[
            AceRecord("S-1-5-32-545", _READ_KEY),
            AceRecord(ADMINISTRATORS_SID, _FULL_CONTROL),
            AceRecord(SYSTEM_SID, _FULL_CONTROL),
            AceRecord("S-1-15-2-1", _READ_KEY),
        ],
    )


@dataclass
class SystemRecord:
    """What a preflight reads about the host: a freshly installed Windows Server 2019."""

    windows_version: str = "10.0.17763"
    windows_product: str = "Windows Server 2019 Standard"
    powershell_version: str = "5.1.17763.1"
    language_mode: str = "FullLanguage"
    elevated: bool = True
    pending_reboot: list[str] = field(default_factory=list)
    system_drive_free_bytes: int = 40 * 2**30


@dataclass
class WinRMConfigRecord:
    """winrm/config as the WSMan: drive shows it; the lab's listener enforces the first three."""

    # rule: WINRM_DEFAULTS
    max_envelope_size_kb: int = MAX_ENVELOPE_KB
    max_shells_per_user: int = MAX_SHELLS_PER_USER
    max_concurrent_operations_per_user: int = MAX_OPERATIONS_PER_USER
    max_memory_per_shell_mb: int = 1024


@dataclass
class ServiceRecord:
    name: str
    state: str = "stopped"  # running | stopped
    start_mode: str = "manual"
    account: str = "LocalSystem"
    password_sealed: str | None = None  # the modelled setting, sealed to this host's key
    password_fingerprint: StoredFingerprint | None = None


@dataclass
class ProductRecord:
    product_code: str
    name: str
    version: str


@dataclass
class SystemFile:
    """A file in System32; ``description`` is its FileDescription (a provider's display name)."""

    name: str
    description: str = ""
    instance: str | None = None  # set on a TSP instance's copy


@dataclass
class ProviderRecord:
    id: int
    file: str


@dataclass
class TspSettingsRecord:
    """An instance's settings key; the password is kept as it arrived: sealed."""

    key: str
    instance: str
    k_account: str
    number_format: str
    line_name_format: str
    debug_level: int
    password_sealed: str | None = None
    password_fingerprint: StoredFingerprint | None = None
    acl: AclRecord = field(default_factory=inherited_software_acl)


@dataclass
class LoadedProvider:
    """A provider as TapiSrv loaded it at its last start (what the line listing shows)."""

    id: int
    file: str
    name: str
    instance: str | None = None
    k_account: str | None = None
    line_name_format: str | None = None


@dataclass
class LocationRecord:
    id: int
    name: str
    country_code: int
    area_code: str
    outside_access: str
    long_distance_access: str
    international_access: str = ""


@dataclass
class FirewallRuleRecord:
    name: str
    description: str
    group: str
    direction: int
    action: int
    protocol: int
    local_ports: str
    remote_ports: str
    remote_addresses: str
    profiles: int
    enabled: bool
    local_addresses: str = "*"
    application: str = ""
    service: str = ""


@dataclass
class TsecUser:
    """A user's entry in the TAPI server security file: the permanent ids it may use."""

    domain_user: str
    friendly_name: str | None = None
    lines: list[str] = field(default_factory=list)


@dataclass
class TapiClientRecord:
    enabled: bool = False
    servers: list[str] = field(default_factory=list)
    connection_oriented: bool = False


@dataclass
class LockRecord:
    owner: str
    acquired: str
    expires: str


@dataclass
class WindowsHostState:
    """Everything the simulated host remembers. Dictionary keys are case-folded names."""

    computer_name: str
    role: Role
    seal_key_pem: str  # the machine key container's RSA key (PKCS#8 PEM)
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    products: list[ProductRecord] = field(default_factory=list)
    system32: dict[str, SystemFile] = field(default_factory=dict)
    providers: list[ProviderRecord] = field(default_factory=list)
    next_provider_id: int = 1
    loaded_providers: list[LoadedProvider] = field(default_factory=list)
    tsp_settings: dict[str, TspSettingsRecord] = field(default_factory=dict)
    telephony_server_mode: bool = False
    telephony_administrators: list[str] = field(default_factory=list)
    locations: list[LocationRecord] = field(default_factory=list)
    current_location_id: int = 0
    next_location_id: int = 1
    firewall_rules: list[FirewallRuleRecord] = field(default_factory=list)
    tsec_users: dict[str, TsecUser] = field(default_factory=dict)  # by domain_user_key
    tapi_client: TapiClientRecord = field(default_factory=TapiClientRecord)
    lock: LockRecord | None = None
    backups: dict[str, str] = field(default_factory=dict)
    accounts: dict[str, AccountRecord] = field(default_factory=dict)
    logon_rights: list[str] = field(default_factory=list)  # SIDs granted SeServiceLogonRight
    files: list[str] = field(default_factory=list)  # other files that exist, case-folded paths
    readable_shares: list[str] = field(default_factory=list)  # UNC prefixes read without creds
    package_cache: list[str] = field(default_factory=list)  # sha256 of the packages held
    hung: list[str] = field(default_factory=list)  # tools, or "stop <service>", that hang
    system: SystemRecord = field(default_factory=SystemRecord)
    winrm: WinRMConfigRecord = field(default_factory=WinRMConfigRecord)
    firewall_profiles: int = 1  # the profiles active now: a domain-joined host's Domain profile

    def tsec_user(self, domain_user: str) -> TsecUser | None:
        """The user tsecimp holds for this account, in any spelling Windows takes for it."""
        return self.tsec_users.get(domain_user_key(domain_user))

    @classmethod
    def fresh(cls, computer_name: str, role: Role = "server") -> WindowsHostState:
        """A just-installed host: built-in TAPI providers, Telephony stopped, a new seal key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        state = cls(computer_name=computer_name, role=role, seal_key_pem=pem)
        # rule: TAPISRV_DEFAULTS
        state.services[TELEPHONY_SERVICE.casefold()] = ServiceRecord(
            name=TELEPHONY_SERVICE, account="NT AUTHORITY\\NetworkService"
        )
        state.services["winrm"] = ServiceRecord(
            name="WinRM", state="running", start_mode="auto", account="NT AUTHORITY\\NetworkService"
        )
        state.services[FIREWALL_SERVICE.casefold()] = ServiceRecord(
            name=FIREWALL_SERVICE, state="running", start_mode="auto", account=_LOCAL_SERVICE
        )
        for tool in _WINDOWS_TOOLS:
            state.system32[tool.casefold()] = SystemFile(name=tool)
        for file, description, _lines in _BUILTIN_PROVIDERS:
            state.system32[file.casefold()] = SystemFile(name=file, description=description)
            state.providers.append(ProviderRecord(id=state.next_provider_id, file=file))
            state.next_provider_id += 1
        return state

    def to_json(self) -> str:
        return _STATE_ADAPTER.dump_json(self, indent=1).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> WindowsHostState:
        return _STATE_ADAPTER.validate_json(text)


_STATE_ADAPTER = TypeAdapter(WindowsHostState)


# --- helpers ----------------------------------------------------------------------------------


class StepFailure(Exception):
    """An operation failed the way the real script's ``throw`` would; the message is shown."""


class ScriptThrow(Exception):
    """The whole script failed (the bootstrap prints an error document and exits 1)."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _registry_key(path: str) -> str:
    """``HKLM\\``, ``HKLM:\\`` and ``HKEY_LOCAL_MACHINE\\`` paths in one case-folded spelling."""
    match = re.match(r"^(?:HKLM:?|HKEY_LOCAL_MACHINE)\\+(.+?)\\*$", path, re.IGNORECASE)
    if match is None:
        raise StepFailure(f"registry path '{path}' is not under HKLM")
    return "HKLM\\" + re.sub(r"\\+", r"\\", match[1]).casefold()


def _check(value: str, pattern: str, what: str) -> None:
    if not re.fullmatch(pattern, value):
        raise StepFailure(f"{what} '{value}' is not valid")


def _check_tsp_file(file: str) -> None:
    _check(file, r"(?i)[A-Z0-9][A-Z0-9_.\-]*\.tsp", "TSP file name")


def _rule_facts(rule: FirewallRuleRecord) -> FirewallRuleFacts:
    return FirewallRuleFacts(display_name=rule.name, **vars(rule))


def _ports_reach(local_ports: str, wanted: Sequence[str]) -> bool:
    """Whether LocalPorts (``135,5000-5010``, ``RPC``, ``*``) reach a wanted port or range."""
    if local_ports in ("", "*"):
        return True
    for part in (piece.strip() for piece in local_ports.split(",")):
        if part.casefold() in ("rpc", "rpc-epmap"):  # dynamic RPC ports, the endpoint mapper
            return True
        ends = part.split("-")
        if not (ends[0].isdigit() and ends[-1].isdigit()):
            continue
        for limits in (range_.split("-") for range_ in wanted):
            if int(ends[0]) <= int(limits[-1]) and int(ends[-1]) >= int(limits[0]):
                return True
    return False


def _permanent_id(*parts: str) -> str:
    """A stable line id (a DWORD, like TAPI's) for an (instance, extension) pair."""
    digest = hashlib.sha256("/".join(part.casefold() for part in parts).encode()).digest()
    return str(int.from_bytes(digest[:4], "big"))


def com_address_spelling(addresses: str) -> str:
    """``RemoteAddresses`` as ``INetFwRule`` returns it: IPv4 with a dotted mask, keywords cased.

    >>> com_address_spelling("10.0.2.0/24, 10.0.9.7,localsubnet")
    '10.0.2.0/255.255.255.0,10.0.9.7/255.255.255.255,LocalSubnet'
    """
    # rule: FIREWALL_COM_SPELLING
    spelled: list[str] = []
    for part in (piece.strip() for piece in addresses.split(",")):
        if part == "*" or part.casefold() in _ADDRESS_KEYWORDS:
            spelled.append(_ADDRESS_KEYWORDS.get(part.casefold(), part))
            continue
        try:
            if "-" in part:
                first, last = (ipaddress.ip_address(end.strip()) for end in part.split("-", 1))
                spelled.append(f"{first}-{last}")
            elif ":" in part:
                spelled.append(str(ipaddress.ip_network(part, strict=False)))
            else:
                address, _, mask = part.partition("/")
                host = ipaddress.IPv4Address(address)
                netmask = ipaddress.IPv4Network(f"0.0.0.0/{mask or '32'}").netmask
                spelled.append(f"{host}/{netmask}")
        except ValueError:
            raise StepFailure(
                f"RemoteAddresses '{addresses}': value does not fall within the expected range"
            ) from None
    return ",".join(spelled)


# --- the host ---------------------------------------------------------------------------------


def _builtin_sid(account: str) -> str | None:
    return _BUILTIN_SIDS.get(account.strip().casefold())


def _domain_sid(name: str) -> str:
    """A stable SID for a lab account (a domain's SID prefix and a RID from the name)."""
    rid = int.from_bytes(hashlib.sha256(domain_user_key(name).encode()).digest()[:3], "big") + 1000
    return f"S-1-5-21-1004336348-1177238915-682003330-{rid}"


def _salted(password: str, salt: str) -> str:
    return hmac.new(bytes.fromhex(salt), password.encode(), hashlib.sha256).hexdigest()


def _timeout(what: str, kind: str, timeouts: Timeouts) -> StepFailure:
    """What the scripts say when a native command or a service outlives its timeout."""
    seconds = getattr(timeouts, kind)
    return StepFailure(
        f"{what} did not finish within {seconds} s and was stopped: raise the platform profile "
        f"key {_TIMEOUT_KEYS[kind]} (platform: in the TapiServer or Site manifest)"
    )


def _msi_version(text: str) -> tuple[int, int, int]:
    """A ProductVersion as Windows Installer compares it: major.minor.build as numbers, a
    fourth field ignored (learn.microsoft.com/windows/win32/msi/productversion)."""
    numbers = [int(part) for part in re.findall(r"\d+", text)[:3]]
    major, minor, build = numbers + [0] * (3 - len(numbers))
    return major, minor, build


_Request = TypeVar("_Request", bound=BaseModel)


def _request(model: type[_Request], data: dict[str, object]) -> _Request:
    """The script's parameter as its contract model; the script throws if it is not one."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        article = "an" if model.__name__[0] in "AEIOU" else "a"
        raise ScriptThrow(
            f"the request is not {article} {model.__name__}: {exc.error_count()} errors"
        ) from None


def _no_pbx_lines(k_account: str) -> Sequence[tuple[str, str]]:
    return ()


def _no_web(url: str) -> bytes | None:
    return None


def _utc_now() -> datetime:
    return datetime.now(UTC)


READ, WRITE = "read", "write"
Sharing = frozenset[str]  # of READ and WRITE: what a handle asks for, or lets others do


class Handle:
    """One open handle of a file: what it may do, and what it lets later opens do."""

    def __init__(self, path: str, access: Sharing, share: Sharing) -> None:
        self.path, self.access, self.share = path, access, share


class OpenFiles:
    """The handles open on the host's files, and the check every open makes against them.

    # rule: FILE_SHARING
    An open fails (a sharing violation) when it asks for what an open handle does not share,
    or shares less than an open handle does; it succeeds, whole, or not at all.
    """

    def __init__(self) -> None:
        self._handles: list[Handle] = []
        self._guard = threading.Lock()  # the check and the new handle are one step in Windows

    def open(self, path: str, access: Sharing, share: Sharing) -> Handle | None:
        with self._guard:
            for held in self._handles:
                if held.path == path.casefold() and (access - held.share or held.access - share):
                    return None
            handle = Handle(path.casefold(), access, share)
            self._handles.append(handle)
            return handle

    def close(self, handle: Handle) -> None:
        with self._guard:
            self._handles = [h for h in self._handles if h is not handle]


@dataclass
class _Entered:
    """What entering the lock gave: taken (with the handle kept open) or refused (the holder)."""

    taken: bool
    lock: LockRecord | None
    handle: Handle | None = None


def _moment(text: str) -> datetime | None:
    """An ISO 8601 time as [DateTime]::Parse reads it (UTC when no zone is given)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class WindowsHost:
    """One simulated Windows host; call it as the WS-Management server's command handler."""

    def __init__(
        self,
        state: WindowsHostState,
        pbx_lines: PbxLines = _no_pbx_lines,
        *,
        packages: Sequence[LabPackage] = LAB_PACKAGES,
        clock: Callable[[], datetime] = _utc_now,
        web: Web = _no_web,
    ) -> None:
        self.state = state
        self.record: list[RecordedCommand] = []
        self._pbx_lines = pbx_lines
        self._packages = {package.sha256: package for package in packages}
        self._clock = clock
        self._web = web
        # rule: CONCURRENT_COMMANDS: commands run at once, each as its own process would; the
        # state is one, so this is held per step of a batch and per part of a gather only
        self.lock = threading.RLock()
        self.open_files = OpenFiles()
        self._command = threading.local()  # what the command running in this thread asked
        seal_key = serialization.load_pem_private_key(state.seal_key_pem.encode(), None)
        assert isinstance(seal_key, rsa.RSAPrivateKey)
        self._seal_key: rsa.RSAPrivateKey = seal_key
        self._scripts: dict[str, Callable[[dict[str, object]], BaseModel]] = {
            scripts.load("gather").identity: self._run_gather,
            scripts.load("apply").identity: self._run_apply,
            scripts.load("upload").identity: self._run_upload,
        }

    @classmethod
    def fresh(
        cls,
        computer_name: str,
        role: Role = "server",
        pbx_lines: PbxLines = _no_pbx_lines,
        *,
        packages: Sequence[LabPackage] = LAB_PACKAGES,
        clock: Callable[[], datetime] = _utc_now,
        web: Web = _no_web,
    ) -> WindowsHost:
        """A just-installed host (see :meth:`WindowsHostState.fresh`)."""
        state = WindowsHostState.fresh(computer_name, role)
        return cls(state, pbx_lines, packages=packages, clock=clock, web=web)

    # --- what the host has besides a fresh install (the lab and tests set it up) ---------------

    def add_account(self, name: str, password: Secret) -> None:
        """An account the host resolves (a domain or local user), with its password."""
        salt = secrets.token_hex(16)
        self.state.accounts[domain_user_key(name)] = AccountRecord(
            name=name,
            sid=_domain_sid(name),
            password=StoredFingerprint(salt=salt, hmac=_salted(password.reveal(), salt)),
        )

    def add_file(self, path: str) -> None:
        """A file outside System32, e.g. the verpatch.exe an admin downloaded."""
        if path.casefold() not in self.state.files:
            self.state.files.append(path.casefold())

    # --- the command handler ------------------------------------------------------------------

    def __call__(self, command: str, arguments: list[str], stdin: bytes) -> CommandResult:
        with self.lock:
            self.record.append(RecordedCommand(command, list(arguments), bytes(stdin)))
            language_mode = self.state.system.language_mode
        if language_mode != "FullLanguage":
            # rule: CONSTRAINED_LANGUAGE (powershell.exe fails before the bootstrap runs)
            return CommandResult(stdout=b"", stderr=clixml_error(_CONSTRAINED), exit_code=1)
        if not scripts.is_command_line(command, arguments):
            return CommandResult(
                stdout=b"",
                stderr=f"'{command}': the lab host runs only the provisioner's bootstrap "
                "command line\r\n".encode(),
                exit_code=1,
            )
        try:
            text, data = scripts.parse_payload(stdin)
        except (scripts.RemoteScriptError, ValueError) as exc:
            return CommandResult(stdout=scripts.failure_document(str(exc)), exit_code=1)
        identity = scripts.identity_of(text)
        run = self._scripts.get(identity or "")
        if run is None:
            what = identity or "without a '# provisioner-contract:' header"
            return CommandResult(
                stdout=b"",
                stderr=f"unknown script {what}: the lab host runs only the shipped "
                "templates\r\n".encode(),
                exit_code=1,
            )
        try:
            document = run(data)
        except ScriptThrow as exc:
            return CommandResult(stdout=scripts.failure_document(str(exc)), exit_code=1)
        return CommandResult(stdout=document.model_dump_json().encode())

    handler = __call__

    def _run_gather(self, data: dict[str, object]) -> BaseModel:
        try:
            return self.gather(_request(GatherRequest, data))
        except StepFailure as exc:
            raise ScriptThrow(str(exc)) from None

    def _run_apply(self, data: dict[str, object]) -> BaseModel:
        return self.apply(_request(ApplyRequest, data))

    def _run_upload(self, data: dict[str, object]) -> BaseModel:
        return self.upload(_request(UploadRequest, data))

    @property
    def _timeouts(self) -> Timeouts:
        """The timeouts of the batch running in this thread."""
        timeouts: Timeouts = getattr(self._command, "timeouts", Timeouts())
        return timeouts

    # --- the lock ------------------------------------------------------------------------------

    def _enter_lock(self, request: LockRequest, *, may_take: bool) -> _Entered:
        """What ``Enter-Lock`` does: take or renew the lock and keep the file open, or refuse."""
        # rule: FILE_SHARING: opened for writing and kept so, others may only read it
        handle = self.open_files.open(LOCK_FILE, frozenset({READ, WRITE}), frozenset({READ}))
        if handle is None:
            running = self.lock_holder()  # readable: a command of the holder runs now
            if running is None:
                raise ScriptThrow(f"the lock file {LOCK_FILE} stays open in another process")
            return _Entered(False, running)
        # The handle is the only writer's: the record is read and written under it alone.
        held, now = self.state.lock, self._clock()
        since = now
        if held is not None:
            expires = _moment(held.expires)
            lapsed = expires is None or expires <= now
            if held.owner == request.owner:
                since = _moment(held.acquired) or now
            elif request.replaces != held.owner and not (lapsed and may_take):
                self.open_files.close(handle)
                return _Entered(False, held)
        elif not may_take:
            self.open_files.close(handle)
            return _Entered(False, None)
        expiry = _iso(now + timedelta(seconds=request.ttl_seconds))
        self.state.lock = LockRecord(owner=request.owner, acquired=_iso(since), expires=expiry)
        return _Entered(True, self.state.lock, handle)

    def _exit_lock(self, entered: _Entered, request: LockRequest) -> None:
        """What ``Exit-Lock`` does: renew the lock from now, or give it back; close the file."""
        assert entered.handle is not None and entered.lock is not None
        try:
            if request.release:
                self.state.lock = None
            else:
                expiry = _iso(self._clock() + timedelta(seconds=request.ttl_seconds))
                self.state.lock = LockRecord(entered.lock.owner, entered.lock.acquired, expiry)
        finally:
            self.open_files.close(entered.handle)

    def lock_holder(self) -> LockRecord | None:
        """What ``Get-LockHolder`` reads: the lock, through a handle that lets a writer be; None
        when another program keeps even readers out."""
        # rule: FILE_SHARING
        looker = self.open_files.open(LOCK_FILE, frozenset({READ}), frozenset({READ, WRITE}))
        if looker is None:
            return None
        try:
            return self.state.lock
        finally:
            self.open_files.close(looker)

    def upload(self, request: UploadRequest) -> UploadResponse:
        """What ``upload.ps1`` does: keep the package under its sha256 if what arrived has it."""
        sha256 = request.sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ScriptThrow(f"sha256 '{sha256}' is not valid")
        try:
            content = base64.b64decode(request.content, validate=True)
        except ValueError:
            raise ScriptThrow("the content is not base64") from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != sha256:
            raise ScriptThrow(
                f"the package {request.name} arrived with sha256 {actual}, not {sha256}; "
                "nothing was kept"
            )
        if sha256 not in self.state.package_cache:
            self.state.package_cache.append(sha256)
        return UploadResponse(sha256=sha256, size=len(content), path=self._cached(sha256))

    @staticmethod
    def _cached(sha256: str) -> str:
        return f"{_STATE_DIR}\\packages\\{sha256}.msi"

    # --- gather ---------------------------------------------------------------------------------

    def gather(self, request: GatherRequest) -> HostFacts | LockRefusal:
        """What ``gather.ps1`` would return for this state: with a lock request, taken first,
        or refused (and nothing else read)."""
        if request.lock is None:
            return self._facts(request, self.lock_holder())
        entered = self._enter_lock(request.lock, may_take=True)
        if not entered.taken:
            assert entered.lock is not None  # a gather refuses only a lock someone holds
            return LockRefusal(locked=LockInfo(**vars(entered.lock)))
        try:
            return self._facts(request, entered.lock)
        finally:
            self._exit_lock(entered, request.lock)

    def _facts(self, request: GatherRequest, lock: LockRecord | None) -> HostFacts:
        """The facts, read in parts (a batch's steps may run between them, as on Windows)."""
        with self.lock:
            facts = self._system_facts(request, lock)
        with self.lock:
            facts |= self._role_facts(request)
        return HostFacts.model_validate(facts)

    def _system_facts(self, request: GatherRequest, lock: LockRecord | None) -> dict[str, object]:
        state = self.state
        services = [
            self._service_facts(service)
            for name in request.services
            if (service := state.services.get(name.casefold())) is not None
        ]
        firewall = state.services.get(FIREWALL_SERVICE.casefold())
        facts: dict[str, object] = {
            "computer_name": state.computer_name,
            "role": request.role,
            "seal_key": self.seal_key(),
            "lock": LockInfo(**vars(lock)) if lock else None,
            "firewall_rules": [
                _rule_facts(rule)
                for rule in state.firewall_rules
                if rule.group == request.firewall_group
            ],
            "open_rpc_rules": [
                _rule_facts(rule)
                for rule in state.firewall_rules
                if self._opens_rpc(rule, request.rpc_ports, request.telephony_service)
            ],
            "services": services,
            "system": SystemFacts(
                **vars(state.system),
                firewall_service_running=firewall is not None and firewall.state == "running",
            ),
            "tools": ToolFacts(
                tsecimp="tsecimp.exe" in state.system32,
                tcmsetup="tcmsetup.exe" in state.system32,
                verpatch=bool(request.verpatch_path)
                and request.verpatch_path.casefold() in state.files,
            ),
            "package_cache": list(state.package_cache),
            "winrm": WinRMConfigFacts(**vars(state.winrm)),
            "package_source_readable": (
                self._reads_share(request.package_source) if request.package_source else None
            ),
        }
        return facts

    def _role_facts(self, request: GatherRequest) -> dict[str, object]:
        state = self.state
        facts: dict[str, object] = {}
        if request.role == "server":
            stops = "tsecimp" in state.hung or request.timeouts.command == 0
            if stops and "tsecimp.exe" in state.system32:  # rule: HANGING_TOOLS
                raise ScriptThrow(str(_timeout("tsecimp.exe", "command", request.timeouts)))
            facts |= {
                "telephony": self._telephony_facts(request.telephony_service),
                "packages": [
                    PackageFacts(**vars(product))
                    for product in state.products
                    if request.package_name
                    and product.name.casefold() == request.package_name.casefold()
                ],
                "providers": [
                    ProviderFacts(id=p.id, file=p.file, name=self._file_description(p.file))
                    for p in state.providers
                ],
                "tsp_instances": self._tsp_instance_facts(request),
                "locations": [
                    LocationFacts(
                        **vars(location), current=location.id == state.current_location_id
                    )
                    for location in state.locations
                ],
                "tsecimp_listing": self.tsecimp_listing(),
            }
        else:
            client = state.tapi_client
            facts["tapi_client"] = TapiClientFacts(
                enabled=client.enabled,
                servers=list(client.servers),
                connection_oriented=client.connection_oriented,
            )
        return facts

    def seal_key(self) -> SealKey:
        numbers = self._seal_key.public_key().public_numbers()

        def big_endian(value: int) -> str:
            return base64.b64encode(value.to_bytes((value.bit_length() + 7) // 8, "big")).decode()

        return SealKey(modulus=big_endian(numbers.n), exponent=big_endian(numbers.e))

    def _service_facts(self, service: ServiceRecord) -> ServiceFacts:
        sid = self.sid_of(service.account)
        return ServiceFacts.model_validate(
            {
                "name": service.name,
                "state": service.state,
                "start_mode": service.start_mode,
                "account": service.account,
                "account_sid": sid,
                "logon_right": None if sid is None else self._may_log_on_as_service(sid),
            }
        )

    def sid_of(self, account: str) -> str | None:
        """The SID a name translates to here, None when it does not (unknown account)."""
        builtin = _builtin_sid(account)
        if builtin is not None:
            return builtin
        if re.fullmatch(r"S-1-[0-9-]+", account):
            return account
        name = account.strip()
        if name.startswith(".\\"):
            name = self.state.computer_name + name[1:]
        found = self.state.accounts.get(domain_user_key(name))
        return found.sid if found else None

    def _name_of(self, sid: str) -> str:
        if sid in _SID_NAMES:
            return _SID_NAMES[sid]
        found = next((a for a in self.state.accounts.values() if a.sid == sid), None)
        return found.name if found else ""

    def _may_log_on_as_service(self, sid: str) -> bool:
        # rule: LOGON_RIGHT
        return sid in _LOGON_BY_DEFINITION or sid in self.state.logon_rights

    def _telephony_facts(self, name: str) -> TelephonyFacts | None:
        service = self.state.services.get(name.casefold())
        if service is None:
            return None
        fingerprint = service.password_fingerprint
        return TelephonyFacts(
            service=self._service_facts(service),
            server_mode=self.state.telephony_server_mode,
            administrators=list(self.state.telephony_administrators),
            account_password=FingerprintModel(**vars(fingerprint)) if fingerprint else None,
        )

    def _file_description(self, file: str) -> str:
        found = self.state.system32.get(file.casefold())
        return found.description if found else ""

    def _tsp_instance_facts(self, request: GatherRequest) -> list[TspInstanceFacts]:
        # As gather.ps1: instances from System32 files matching the pattern, then from the
        # subkeys of the settings key's parent when {instance} is its last part.
        pattern = request.instance_file_pattern
        if not pattern:
            return []
        file_regex = re.compile(
            re.escape(pattern).replace(re.escape("{instance}"), "(?P<instance>.+)"), re.IGNORECASE
        )
        names: dict[str, str] = {}
        for system_file in self.state.system32.values():
            if match := file_regex.fullmatch(system_file.name):
                names.setdefault(match["instance"].upper(), match["instance"])
        settings_pattern = request.instance_settings_key
        parent = re.fullmatch(r"(.+)\\\{instance\}\\*", settings_pattern)
        if parent is not None:
            prefix = _registry_key(parent[1]) + "\\"
            for key, found in self.state.tsp_settings.items():
                if key.startswith(prefix) and "\\" not in key[len(prefix) :]:
                    name = found.key.rstrip("\\").rsplit("\\", 1)[-1]
                    names.setdefault(name.upper(), name)
        facts = []
        for _, instance in sorted(names.items()):
            file = pattern.replace("{instance}", instance)
            record = None
            if settings_pattern:
                record = self.state.tsp_settings.get(
                    _registry_key(settings_pattern.replace("{instance}", instance))
                )
            settings = acl = None
            if record is not None:
                acl = KeyAclFacts(
                    protected=record.acl.protected,
                    entries=[
                        AceFacts(
                            sid=e.sid, name=self._name_of(e.sid), rights=e.rights, allow=e.allow
                        )
                        for e in record.acl.entries
                    ],
                )
                fingerprint = record.password_fingerprint
                settings = TspSettingsFacts(
                    k_account=record.k_account,
                    number_format=record.number_format,
                    line_name_format=record.line_name_format,
                    debug_level=record.debug_level,
                    password=FingerprintModel(**vars(fingerprint)) if fingerprint else None,
                )
            facts.append(
                TspInstanceFacts(
                    instance=instance,
                    file=file,
                    file_present=file.casefold() in self.state.system32,
                    settings=settings,
                    settings_acl=acl,
                )
            )
        return facts

    # --- TAPI: providers loaded at the last start, lines from the PBX ---------------------------

    def _start_telephony(self) -> None:
        """TapiSrv starts: it loads the registered providers with their current settings."""
        # rule: PROVIDERS_LOAD_AT_START
        state = self.state
        loaded = []
        for provider in state.providers:
            file = state.system32.get(provider.file.casefold())
            entry = LoadedProvider(
                id=provider.id, file=provider.file, name=file.description if file else ""
            )
            if file is not None and file.instance is not None:
                entry.instance = file.instance
                settings = self.settings_of(file.instance)
                if settings is not None:
                    entry.k_account = settings.k_account
                    entry.line_name_format = settings.line_name_format
            loaded.append(entry)
        state.loaded_providers = loaded
        service = state.services.get(TELEPHONY_SERVICE.casefold())
        if service is not None:
            service.state = "running"

    def settings_of(self, instance: str) -> TspSettingsRecord | None:
        for record in self.state.tsp_settings.values():
            if record.instance.casefold() == instance.casefold():
                return record
        return None

    def listed_providers(self) -> list[ListedProvider]:
        """The providers and lines TAPI shows now, with the users assigned to each line."""
        users_by_line: dict[str, list[str]] = {}
        for user in self.state.tsec_users.values():
            for line_id in user.lines:
                users_by_line.setdefault(line_id, []).append(user.domain_user)
        builtin = {file.casefold(): lines for file, _, lines in _BUILTIN_PROVIDERS}
        listed = []
        for provider in self.state.loaded_providers:
            lines: list[ListedLine] = []
            if provider.instance is not None and provider.k_account:
                line_format = provider.line_name_format or "{extension} {name}"
                for extension, name in self._pbx_lines(provider.k_account):
                    line_id = _permanent_id(provider.instance, extension)
                    lines.append(
                        ListedLine(
                            name=line_name(line_format, extension, name, provider.k_account),
                            permanent_id=line_id,
                            addresses=[extension],
                            users=sorted(users_by_line.get(line_id, []), key=str.casefold),
                        )
                    )
            for name in builtin.get(provider.file.casefold(), ()):
                line_id = _permanent_id(provider.file, name)
                lines.append(
                    ListedLine(
                        name=name,
                        permanent_id=line_id,
                        users=sorted(users_by_line.get(line_id, []), key=str.casefold),
                    )
                )
            listed.append(ListedProvider(name=provider.name, lines=lines))
        return listed

    def tsecimp_listing(self) -> str | None:
        """``tsecimp /d``: as any TAPI client, it starts a stopped (not disabled) TapiSrv."""
        if self.state.role != "server" or "tsecimp.exe" not in self.state.system32:
            return None
        service = self.state.services.get(TELEPHONY_SERVICE.casefold())
        if service is None:
            return ""  # TAPI cannot initialise: no providers, no lines
        if service.state != "running":
            if self._start_failure(service) is not None:
                return ""
            self._start_telephony()
        return format_listing(self.listed_providers())

    def _start_failure(self, service: ServiceRecord) -> str | None:
        """Why the service would not start, in the apply script's words; None if it would."""
        if service.start_mode == "disabled":
            return (
                f"{service.name} did not start: The service cannot be started, either because it "
                "is disabled or because it has no enabled devices associated with it."
            )
        sid = self.sid_of(service.account)
        # rule: LOGON_RIGHT (no right, or a stored password the account no longer has: 1069)
        if sid is not None and sid in _LOGON_BY_DEFINITION:
            return None
        account = self.state.accounts.get(domain_user_key(service.account))
        stored = self._open_stored(service.password_sealed)
        password_ok = (
            account is not None
            and stored is not None
            and _salted(stored.reveal(), account.password.salt) == account.password.hmac
        )
        if sid is None or not self._may_log_on_as_service(sid) or not password_ok:
            return (
                f"{service.name} did not start: its account {service.account} cannot log on as a "
                "service (error 1069: it lacks 'Log on as a service', or the stored password is "
                "no longer the account's)"
            )
        return None

    # --- secrets --------------------------------------------------------------------------------

    def _accept_sealed(self, secret: SealedSecret) -> tuple[str, StoredFingerprint]:
        """Open, check against the fingerprint, and keep sealed: ``(sealed, fingerprint)``."""
        try:
            clear = self._seal_key.decrypt(base64.b64decode(secret.sealed), _OAEP_SHA1)
        except ValueError:
            raise StepFailure(
                "a sealed secret cannot be opened with this host's seal key "
                "(sealed to another key?)"
            ) from None
        try:
            salt = bytes.fromhex(secret.fingerprint.salt)
        except ValueError:
            raise StepFailure("a fingerprint salt is not hex") from None
        digest = hmac.new(salt, clear, hashlib.sha256).hexdigest()
        del clear
        if not hmac.compare_digest(digest, secret.fingerprint.hmac.lower()):
            raise StepFailure("a sealed secret does not match its fingerprint")
        return secret.sealed, StoredFingerprint(salt=secret.fingerprint.salt, hmac=digest)

    def _open_stored(self, sealed: str | None) -> Secret | None:
        if sealed is None:
            return None
        return Secret(self._seal_key.decrypt(base64.b64decode(sealed), _OAEP_SHA1).decode())

    def instance_password(self, instance: str) -> Secret | None:
        """The CTI password a TSP instance would use (for lab parts that check credentials)."""
        record = self.settings_of(instance)
        return self._open_stored(record.password_sealed) if record else None

    def service_password(self, name: str) -> Secret | None:
        service = self.state.services.get(name.casefold())
        return self._open_stored(service.password_sealed) if service else None

    # --- apply ----------------------------------------------------------------------------------

    def apply(self, request: ApplyRequest) -> ApplyResponse:
        """What ``apply.ps1`` would do: renew the lock (the plan's gather took it; a lock lost
        meanwhile runs nothing), the steps in order until the first failure, each one at a time
        on the host's state, then renew the lock or give it back."""
        entered = self._enter_lock(request.lock, may_take=False)
        if not entered.taken:
            holder = LockInfo(**vars(entered.lock)) if entered.lock else None
            return ApplyResponse(status="locked", lock=holder)
        self._command.timeouts = request.timeouts
        status: Literal["ok", "failed"] = "ok"
        results: list[StepResult] = []
        try:
            for step in request.steps:
                if status != "ok":
                    results.append(StepResult(id=step.id, status="not-run"))
                    continue
                try:
                    data = self._step(step.operation)
                except StepFailure as exc:
                    status = "failed"
                    results.append(StepResult(id=step.id, status="failed", message=str(exc)))
                else:
                    strings = {key: str(value) for key, value in data.items()}
                    results.append(StepResult(id=step.id, status="ok", data=strings))
        finally:
            self._exit_lock(entered, request.lock)
        return ApplyResponse(status=status, results=results)

    def _step(self, operation: Operation) -> dict[str, object]:
        """One step, alone on the host's state; other commands' parts run before and after."""
        with self.lock:
            return self._perform(operation)

    def _perform(self, operation: Operation) -> dict[str, object]:
        op = operation.op
        if self.state.role == "client" and op not in _CLIENT_OPERATIONS:
            raise StepFailure(f"operation '{op}' is not available on a workstation (role client)")
        perform: Callable[[Operation], dict[str, object]] = getattr(self, _OPERATIONS[op])
        return perform(operation)

    def _service(self, name: str) -> ServiceRecord:
        _check(name, r"[A-Za-z0-9_.\- ]+", "service name")
        service = self.state.services.get(name.casefold())
        if service is None:
            raise StepFailure(f"Cannot find any service with service name '{name}'.")
        return service

    def _run_tool(self, tool: str, kind: str = "command") -> None:
        """A native command starts; one the lab was told hangs, or any under a timeout of 0 s,
        runs into its timeout. A Windows tool that is not in System32 does not start."""
        windows_tool = _WINDOWS_TOOLS_BY_NAME.get(tool)
        if windows_tool is not None and windows_tool not in self.state.system32:
            raise StepFailure(
                f"{_SYSTEM32}\\{tool}.exe cannot be started: The system cannot find the file "
                "specified"
            )
        if tool in self.state.hung or getattr(self._timeouts, kind) == 0:  # rule: HANGING_TOOLS
            raise _timeout(f"{tool}.exe", kind, self._timeouts)

    def _reads_share(self, source: str) -> bool:
        """Whether a WinRM session on this host reads a file on another machine's share."""
        # rule: SECOND_HOP (no credentials go on to the share; only shares the host reads itself)
        return any(
            source.casefold().startswith(share.casefold()) for share in self.state.readable_shares
        )

    def _opens_rpc(self, rule: FirewallRuleRecord, ports: Sequence[str], telephony: str) -> bool:
        """What gather.ps1's Test-OpensRpc decides: an enabled inbound allow rule for TCP or any
        protocol, in a profile active now, not limited to another program or service, whose local
        ports reach TapiSrv's."""
        # rule: FIREWALL_PROFILES
        if not (rule.enabled and rule.direction == 1 and rule.action == 1):
            return False
        if rule.protocol not in (6, 256) or not rule.profiles & self.state.firewall_profiles:
            return False
        program = rule.application
        if program and program != "System" and not program.casefold().endswith("\\svchost.exe"):
            return False
        services = {"*", telephony.casefold(), "rpcss"}
        return (not rule.service or rule.service.casefold() in services) and _ports_reach(
            rule.local_ports, ports
        )

    def _package_file(self, op: PackageInstall) -> LabPackage | None:
        """The package as the host gets it, its sha256 checked; None: not a Windows Installer
        package (msiexec will say so)."""
        sha256 = op.sha256.lower()
        _check(sha256, r"[0-9a-f]{64}", "sha256")
        if op.fetch == "upload":
            if sha256 not in self.state.package_cache:
                raise StepFailure(
                    f"the package {op.source} ({sha256}) was not uploaded to this host; nothing "
                    "was installed"
                )
            actual = sha256
        elif op.fetch == "https":
            if not re.match(r"(?i)https://", op.source):
                raise StepFailure(f"the package source '{op.source}' is not an https:// URL")
            content = self._web(op.source)
            if content is None:  # rule: WEB_DOWNLOAD
                raise StepFailure(
                    f"the host cannot download {op.source}: The remote server returned an "
                    "error: (404) Not Found."
                )
            actual = hashlib.sha256(content).hexdigest()
        else:
            if not self._reads_share(op.source):
                raise StepFailure(
                    f"the host cannot read {op.source} (access denied): over WinRM it has no "
                    "credentials for another machine (the second hop), so the share must grant "
                    "this host access by itself; or send the package from your workstation (a "
                    "file path as package.source)"
                )
            actual = sha256  # the lab's shares hold what the manifest says
        if actual != sha256:
            raise StepFailure(
                f"the package from {op.source} has sha256 {actual}, not {sha256}; nothing was "
                "installed"
            )
        if sha256 not in self.state.package_cache:
            self.state.package_cache.append(sha256)
        return self._packages.get(sha256)

    def _msiexec(self, package: LabPackage | None, reinstall: bool) -> int:
        """Windows Installer's answer to ``msiexec /i`` of this package on this host."""
        state = self.state
        if package is None:
            return 1620  # rule: MSI_EXIT_CODES
        same = next(
            (p for p in state.products if p.product_code.upper() == package.product_code.upper()),
            None,
        )
        if same is not None:  # rule: MSI_SAME_PRODUCT_CODE
            if same.version == package.version:
                return 0  # a maintenance run: nothing changes
            if not reinstall:
                return 1638
            same.version = package.version
            return 0
        if reinstall:
            return 1605  # REINSTALL of a product that is not installed
        family = {
            p.product_code.upper()
            for p in self._packages.values()
            if p.upgrade_code == package.upgrade_code
        }
        older = [p for p in state.products if p.product_code.upper() in family]
        # rule: MSI_MAJOR_UPGRADE (the lab's packages refuse a downgrade: 1603)
        if any(_msi_version(p.version) > _msi_version(package.version) for p in older):
            return 1603
        state.products = [p for p in state.products if p not in older]
        state.products.append(ProductRecord(package.product_code, package.name, package.version))
        return 0

    def _package_install(self, op: PackageInstall) -> dict[str, object]:
        package = self._package_file(op)
        self._run_tool("msiexec", "msiexec")
        log = f"{_STATE_DIR}\\packages\\{op.sha256.lower()}.install.log"
        code = self._msiexec(package, op.reinstall)
        if code != 0:
            hint = ""
            if code == 1638:
                hint = "; this package has the ProductCode of the installed version"
                if op.installed_product_code:
                    hint += (
                        f" (set package.product_code: '{op.installed_product_code}' to upgrade it "
                        "as a reinstall)"
                    )
                else:
                    hint += " (set package.product_code to upgrade it as a reinstall)"
            raise StepFailure(f"msiexec exited with {code} ({_MSI_CODES[code]}){hint}; see {log}")
        assert package is not None
        for file in package.files:
            self.state.system32[file.casefold()] = SystemFile(
                name=file, description="NFON Third Party TAPI"
            )
        for name in package.services:
            self.state.services.setdefault(name.casefold(), ServiceRecord(name=name))
        return {"exit_code": 0, "reboot_required": False, "reinstall": op.reinstall, "log": log}

    def _grant_logon_right(self, account: str) -> str:
        """What the scripts' Grant-LogonRight does (LsaAddAccountRights)."""
        if _builtin_sid(account) is not None:
            return "not needed"
        sid = self.sid_of(account)
        if sid is None:  # rule: LSA_ADD_ACCOUNT_RIGHTS
            raise StepFailure(
                f"the account '{account}' does not exist here (it does not translate to a SID): "
                "check the account's name and domain"
            )
        if sid in self.state.logon_rights:
            return "held"
        self.state.logon_rights.append(sid)
        return "granted"

    def _change(self, service: ServiceRecord, name: str, password: str | None) -> int:
        """Win32_Service.Change(StartName=name, StartPassword=password): its return value."""
        # rule: CHANGE_NEEDS_ADMIN
        if not self.state.system.elevated:
            return 2
        builtin = _builtin_sid(name)
        if builtin is not None:
            # rule: BUILTIN_ACCOUNT_PASSWORD
            if password is None and builtin != self.sid_of(service.account):
                return 21
            return 0
        account = self.state.accounts.get(domain_user_key(name.strip()))
        if account is None:  # rule: SERVICE_ACCOUNT_PASSWORD (an unknown account)
            return 22
        if password is None:
            # keeping the password is only possible for the account the service already has
            return 0 if service.account.casefold() == name.strip().casefold() else 15
        if _salted(password, account.password.salt) != account.password.hmac:
            return 15  # rule: SERVICE_ACCOUNT_PASSWORD
        return 0

    def _service_configure(self, op: ServiceConfigure) -> dict[str, object]:
        service = self._service(op.name)
        data: dict[str, object] = {}
        sealed = self._accept_sealed(op.password) if op.password is not None else None
        if op.start_mode is not None:
            self._run_tool("sc")
            service.start_mode = op.start_mode
            data["start_mode"] = op.start_mode
        if op.account is not None or sealed is not None:
            clear = self._open_stored(sealed[0]) if sealed else None
            password = clear.reveal() if clear else None
            if op.account is not None:
                data["logon_right"] = self._grant_logon_right(op.account)
                if _builtin_sid(op.account) is not None:
                    password = ""  # what the script passes for a built-in account
            code = self._change(service, op.account or service.account, password)
            if code != 0:  # rule: SERVICE_CHANGE_CODES
                meaning = _CHANGE_CODES.get(code, "Other")
                raise StepFailure(
                    f"Win32_Service.Change for {service.name} returned {code} ({meaning})"
                )
            if op.account is not None:
                service.account = op.account
                data["account"] = op.account
            if sealed is not None:
                service.password_sealed, service.password_fingerprint = sealed
                data["password"] = "set"
        return data

    def _logon_right_grant(self, op: LogonRightGrant) -> dict[str, object]:
        return {"account": op.account, "logon_right": self._grant_logon_right(op.account)}

    def _service_control(self, op: ServiceControl) -> dict[str, object]:
        service = self._service(op.name)
        telephony = service.name.casefold() == TELEPHONY_SERVICE.casefold()
        if op.op != "service.start" and service.state == "running":
            if f"stop {service.name}".casefold() in (h.casefold() for h in self.state.hung):
                # rule: HANGING_TOOLS
                raise _timeout(f"{service.name} (stopped)", "service", self._timeouts)
            service.state = "stopped"
        if op.op != "service.stop" and service.state != "running":
            failure = self._start_failure(service)
            if failure is not None:
                raise StepFailure(failure)
            if telephony:
                self._start_telephony()
            service.state = "running"
        return {"state": "Running" if service.state == "running" else "Stopped"}

    def _telephony_configure(self, op: TelephonyConfigure) -> dict[str, object]:
        self.state.telephony_server_mode = op.server_mode
        self.state.telephony_administrators = list(op.administrators)
        return {"server_mode": op.server_mode, "administrators": len(op.administrators)}

    def _tsp_instance_create(self, op: TspInstanceCreate) -> dict[str, object]:
        _check_tsp_file(op.file)
        _check_tsp_file(op.tsp_file)
        state = self.state
        data: dict[str, object] = {"file": op.file, "copied": False, "registered": False}
        if op.file.casefold() not in state.system32:
            if op.tsp_file.casefold() not in state.system32:
                raise StepFailure(
                    f"{_SYSTEM32}\\{op.tsp_file} is missing: install the NFON TAPI package first"
                )
            if op.verpatch_path.casefold() not in state.files:  # rule: VERPATCH_SEPARATE
                raise StepFailure(
                    f"verpatch.exe is not at {op.verpatch_path}: download it (the NFON manual's "
                    "section on TSP instances) and copy it there, or set platform.verpatch_path"
                )
            self._run_tool("verpatch")
            state.system32[op.file.casefold()] = SystemFile(
                name=op.file, description=op.provider_name, instance=op.instance
            )
            data["copied"] = True
        provider = next(
            (p for p in state.providers if p.file.casefold() == op.file.casefold()), None
        )
        if provider is None:
            provider = ProviderRecord(id=state.next_provider_id, file=op.file)
            state.providers.append(provider)
            state.next_provider_id += 1
            data["registered"] = True
        data["provider_id"] = provider.id
        return data

    def _tsp_instance_configure(self, op: TspInstanceConfigure) -> dict[str, object]:
        key = op.settings_key.replace("{instance}", op.instance)
        normalized = _registry_key(key)
        sealed = self._accept_sealed(op.password) if op.password is not None else None
        reader = self.sid_of(op.reader)
        if reader is None:  # rule: LSA_ADD_ACCOUNT_RIGHTS (the same translation to a SID)
            raise StepFailure(
                f"the account '{op.reader}' does not exist here (it does not translate to a "
                "SID): check the account's name and domain"
            )
        previous = self.state.tsp_settings.get(normalized)
        record = TspSettingsRecord(
            key=key,
            instance=op.instance,
            k_account=op.k_account,
            number_format=op.number_format,
            line_name_format=op.line_name_format,
            debug_level=op.debug_level,
            acl=AclRecord(
                protected=True,
                entries=[
                    AceRecord(SYSTEM_SID, _FULL_CONTROL),
                    AceRecord(ADMINISTRATORS_SID, _FULL_CONTROL),
                    AceRecord(reader, _READ_KEY),
                ],
            ),
        )
        if sealed is not None:
            record.password_sealed, record.password_fingerprint = sealed
        elif previous is not None:
            record.password_sealed = previous.password_sealed
            record.password_fingerprint = previous.password_fingerprint
        self.state.tsp_settings[normalized] = record
        return {"settings_key": key, "password": "set" if sealed else "unchanged"}

    def _tsp_instance_remove(self, op: TspInstanceRemove) -> dict[str, object]:
        _check_tsp_file(op.file)
        state = self.state
        data: dict[str, object] = {"file": op.file, "unregistered": False, "file_removed": False}
        before = len(state.providers)
        state.providers = [p for p in state.providers if p.file.casefold() != op.file.casefold()]
        data["unregistered"] = len(state.providers) != before
        if state.system32.pop(op.file.casefold(), None) is not None:
            data["file_removed"] = True
        prefix = _registry_key(op.settings_key.replace("{instance}", op.instance))
        for key in [k for k in state.tsp_settings if k == prefix or k.startswith(prefix + "\\")]:
            del state.tsp_settings[key]
        return data

    def _location_set(self, op: LocationSet) -> dict[str, object]:
        if not 1 <= op.country_code <= 998:
            raise StepFailure(f"no country in the Country List dials +{op.country_code}")
        state = self.state
        location = next(
            (x for x in state.locations if x.name.casefold() == op.name.casefold()), None
        )
        created = location is None
        if location is None:
            location = LocationRecord(
                id=state.next_location_id,
                name=op.name,
                country_code=0,
                area_code="",
                outside_access="",
                long_distance_access="",
            )
            state.next_location_id += 1
            state.locations.append(location)
        location.name = op.name
        location.country_code = op.country_code
        location.area_code = op.area_code
        location.outside_access = op.outside_access
        location.long_distance_access = op.long_distance_access
        location.international_access = op.international_access
        state.current_location_id = location.id
        return {"id": location.id, "created": created}

    def _remove_rules_named(self, name: str) -> int:
        before = len(self.state.firewall_rules)
        self.state.firewall_rules = [r for r in self.state.firewall_rules if r.name != name]
        return before - len(self.state.firewall_rules)

    def _firewall_upsert(self, op: FirewallUpsert) -> dict[str, object]:
        spec = op.rule
        with_ports = spec.protocol in (6, 17)
        if (spec.local_ports != "*" or spec.remote_ports != "*") and not with_ports:
            raise StepFailure(
                f"rule '{spec.name}': ports need protocol 6 (TCP) or 17 (UDP), not {spec.protocol}"
            )
        rule = FirewallRuleRecord(
            name=spec.name,
            description=spec.description,
            group=spec.group,
            direction=spec.direction,
            action=spec.action,
            protocol=spec.protocol,
            local_ports=spec.local_ports.replace(" ", "") if with_ports else "*",
            remote_ports=spec.remote_ports.replace(" ", "") if with_ports else "*",
            remote_addresses=com_address_spelling(spec.remote_addresses),
            profiles=spec.profiles,
            enabled=spec.enabled,
        )
        replaced = self._remove_rules_named(spec.name)
        self.state.firewall_rules.append(rule)
        return {"name": spec.name, "replaced": replaced}

    def _firewall_remove(self, op: FirewallRemove) -> dict[str, object]:
        return {"name": op.name, "removed": self._remove_rules_named(op.name)}

    def _tsecimp_import(self, op: TsecimpImport) -> dict[str, object]:
        _check(op.backup_name, r"[A-Za-z0-9][A-Za-z0-9_.\-]*", "backup file name")
        self._run_tool("tsecimp")
        state = self.state
        state.backups[op.backup_name] = self.tsecimp_listing() or ""
        try:
            users = parse_xml(op.xml)
        except TsecimpError as exc:
            raise StepFailure(f"tsecimp /v rejected the XML (1): {exc}") from None
        lines = [line for provider in self.listed_providers() for line in provider.lines]
        by_id = {line.permanent_id: line for line in lines if line.permanent_id}
        by_address: dict[str, list[str]] = {}
        for line in lines:
            for address in line.addresses:
                by_address.setdefault(address, []).append(str(line.permanent_id))
        for user in users:
            key = domain_user_key(user.domain_user)  # one account: Windows' comparison
            entry = state.tsec_users.setdefault(key, TsecUser(domain_user=user.domain_user))
            if user.friendly_name is not None:
                entry.friendly_name = user.friendly_name
            if user.no_merge or user.lines is None:
                entry.lines = []
            for wanted in user.lines or []:
                if wanted.permanent_id is not None:
                    found = [wanted.permanent_id] if wanted.permanent_id in by_id else []
                else:
                    found = by_address.get(str(wanted.address), [])
                if len(found) != 1:
                    continue  # rule: TSECIMP_SILENT
                if wanted.remove:
                    entry.lines = [x for x in entry.lines if x != found[0]]
                elif found[0] not in entry.lines:
                    entry.lines.append(found[0])
        return {
            "exit_code": 0,
            "output": "",
            "backup": f"{_STATE_DIR}\\backups\\{op.backup_name}",
        }

    def _tapi_client_set(self, op: TapiClientSet) -> dict[str, object]:
        for server in op.servers:
            _check(server, r"[A-Za-z0-9][A-Za-z0-9.\-]*", "TAPI server name")
        self._run_tool("tcmsetup")
        client = self.state.tapi_client
        client.enabled = bool(op.servers)
        client.servers = list(op.servers)
        client.connection_oriented = bool(op.servers) and op.connection_oriented
        return {"exit_code": 0, "servers": " ".join(op.servers)}


_OPERATIONS: dict[str, str] = {
    "package.install": "_package_install",
    "service.configure": "_service_configure",
    "logon_right.grant": "_logon_right_grant",
    "service.start": "_service_control",
    "service.stop": "_service_control",
    "service.restart": "_service_control",
    "telephony.configure": "_telephony_configure",
    "tsp_instance.create": "_tsp_instance_create",
    "tsp_instance.configure": "_tsp_instance_configure",
    "tsp_instance.remove": "_tsp_instance_remove",
    "location.set": "_location_set",
    "firewall.upsert": "_firewall_upsert",
    "firewall.remove": "_firewall_remove",
    "tsecimp.import": "_tsecimp_import",
    "tapi_client.set": "_tapi_client_set",
}
SIMULATED_OPERATIONS: frozenset[str] = frozenset(_OPERATIONS)
"""The operations the simulated host performs (a test holds it equal to the contract's)."""
