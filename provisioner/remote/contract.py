"""The versioned JSON contract between the provisioner and a Windows host.

Three scripts run on a host, all from ``templates/``, all fed by JSON on stdin:

* **gather** reads everything the provisioner manages in one command and prints one
  :class:`HostFacts` document;
* **apply** takes an :class:`ApplyRequest` (a lock request plus ordered operations), performs the
  operations in order, stops at the first failure and prints one :class:`ApplyResponse`;
* **upload** stores a package sent from the admin workstation (:class:`UploadRequest`) in the
  host's package cache, after checking its sha256, and prints one :class:`UploadResponse`. It runs
  only when a batch installs a workstation file the host does not hold yet.

Version 2 changed the package source (uploads, HTTPS, a UNC path only where the host reads the
share by itself), added native-command timeouts, the logon right, registry ACLs and the facts a
preflight reads (Windows, PowerShell, elevation, tools, WinRM's quotas, firewall rules of any
group that open TapiSrv's RPC ports, whether the host reads a UNC package source itself).

Values come back in the host's own spelling (firewall profiles as a bit mask, addresses as
``10.0.2.0/255.255.255.0``): turning them into one canonical form is the job of each resource
module, on the provisioner's side, where it is tested.

Secrets never travel in clear, not even on stdin: the gather returns the host's RSA public key
(:class:`SealKey`), the provisioner seals each secret to it (RSA-OAEP with SHA-1, the padding
Windows PowerShell 5.1 can open) and the host stores, beside the secret, a salted HMAC
(:class:`Fingerprint`) that lets a later plan see whether the secret changed without reading it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

CONTRACT_VERSION = 2
RPC_PORTS = ("135", "445", "49152-65535")
"""What remote TAPI listens on: the RPC endpoint mapper, SMB named pipes, dynamic RPC ports."""

StartMode = Literal["auto", "delayed-auto", "manual", "disabled"]
ServiceState = Literal["running", "stopped"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SealKey(_Strict):
    """The host's RSA public key, as .NET's ``RSAParameters`` export it (base64 big-endian)."""

    modulus: str
    exponent: str


class Fingerprint(_Strict):
    """``hmac`` = HMAC-SHA256(key=bytes.fromhex(salt), msg=secret UTF-8), lower-case hex."""

    salt: str
    hmac: str


class SealedSecret(_Strict):
    """A secret sealed to the host's :class:`SealKey`, with the fingerprint the host stores."""

    sealed: str  # base64 RSA-OAEP(SHA-1) ciphertext of the UTF-8 value
    fingerprint: Fingerprint


class LockInfo(_Strict):
    """The host's lock as ``lock.json`` holds it (the holder's words: untrusted text)."""

    owner: str  # "alice@ws17 pid 4711", "rollout 12 worker alice@ws17 pid 4711"
    acquired: str  # ISO 8601 UTC
    expires: str


LOCK_TTL_S = 900
"""How long a host's lock outlives its holder's last command: 15 minutes. Long enough for a
confirmation prompt, a pause between waves and the planning between a gather and its batch; a
holder that died (or waits longer) keeps others out that long. A lock that lapsed is lost only
when someone else takes it: until then its owner's next command renews it."""


class LockRequest(_Strict):
    """The host's lock for one apply or one rollout worker, kept on the host itself.

    The lock is ``lock.json`` in the provisioner's ProgramData folder. A command that carries
    this request opens that file for writing and keeps it open until it ends, letting others
    only read it (Windows refuses a second writer until the first closes the file): so only one
    command at a time can take, renew or give back the lock, and none can while a holder's
    command runs. A gather takes the lock when it is free, lapsed, already ``owner``'s or
    ``replaces``'s; otherwise it reads nothing else and answers :class:`LockRefusal`. A batch
    only renews it: a lock that is neither ``owner``'s nor ``replaces``'s (given back, or lapsed
    and taken by another) was lost since the plan's gather, and the batch runs nothing. At the
    end of the command the lock is renewed for ``ttl_seconds``, or given back when ``release``.
    """

    owner: str
    ttl_seconds: int = Field(default=LOCK_TTL_S, ge=1)
    replaces: str | None = None  # a rollout worker whose host this one takes over
    release: bool = False  # give the lock back at the end (the verifying gather)


class LockRefusal(_Strict):
    """A gather's answer when it asked for the lock and another owner holds it: nothing else
    was read (the holder's command may be running now)."""

    contract: Literal[2] = 2
    locked: LockInfo


class ServiceFacts(_Strict):
    name: str
    state: ServiceState
    start_mode: StartMode
    account: str  # the service's StartName as the service database holds it
    account_sid: str | None = None  # None: the name does not translate to a SID
    logon_right: bool | None = None  # may the account log on as a service; None: unknown SID


class TelephonyFacts(_Strict):
    """The Windows Telephony service (``TapiSrv``) and its server-mode settings."""

    service: ServiceFacts
    server_mode: bool
    administrators: list[str]
    account_password: Fingerprint | None = None  # set when the provisioner set the password


class PackageFacts(_Strict):
    """An installed MSI product, as Windows Installer lists it."""

    product_code: str
    name: str
    version: str


class ProviderFacts(_Strict):
    """One entry of the TAPI provider list (``lineGetProviderList``)."""

    id: int  # permanent provider id
    file: str  # NFONTSP_K6732.TSP
    name: str  # the provider's display name


class TspSettingsFacts(_Strict):
    k_account: str
    number_format: str
    line_name_format: str
    debug_level: int
    password: Fingerprint | None = None


class AceFacts(_Strict):
    """One access rule of a registry key that applies to the key itself (not inherit-only).

    ``rights`` is the RegistryRights mask (0x20019 ReadKey, 0xF003F FullControl); ``name`` is
    the principal as the host translates it (localised, so compare ``sid``).
    """

    sid: str
    name: str = ""
    rights: int
    allow: bool = True


class KeyAclFacts(_Strict):
    """A registry key's ACL: ``protected`` when it does not inherit from its parent."""

    protected: bool
    entries: list[AceFacts] = Field(default_factory=list)


class TspInstanceFacts(_Strict):
    """A TSP instance: its copied ``.tsp`` file in System32 and its settings (if any)."""

    instance: str  # K6732
    file: str  # NFONTSP_K6732.TSP
    file_present: bool
    settings: TspSettingsFacts | None = None
    settings_acl: KeyAclFacts | None = None  # None when there is no settings key


class LocationFacts(_Strict):
    """A dialing location (``HKLM\\...\\Telephony\\Locations\\Location<N>``)."""

    id: int
    name: str
    country_code: int  # the dialing code, e.g. 49
    area_code: str
    outside_access: str
    long_distance_access: str
    international_access: str = ""
    current: bool = False


class FirewallRuleFacts(_Strict):
    """A firewall rule as ``HNetCfg.FwPolicy2`` reports it (INetFwRule), unnormalised.

    Example: ``{"name": "nfon-tapi-in-rpc-epmap", "group": "NFON-TAPI-Provisioner",
    "direction": 1, "action": 1, "protocol": 6, "local_ports": "135", "remote_ports": "*",
    "remote_addresses": "10.0.2.0/255.255.255.0", "profiles": 2147483647, "enabled": true}``
    (direction 1 = in, 2 = out; action 1 = allow, 0 = block; protocol 256 = any).
    """

    name: str
    display_name: str = ""
    description: str = ""
    group: str = ""
    direction: int
    action: int
    protocol: int
    local_ports: str = "*"
    remote_ports: str = "*"
    local_addresses: str = "*"
    remote_addresses: str = "*"
    profiles: int
    enabled: bool
    application: str = ""  # the program the rule is limited to ("System" for SMB), "" any
    service: str = ""  # the service the rule is limited to, "" any


class TapiClientFacts(_Strict):
    """Remote-TAPI client settings of a workstation (what ``tcmsetup /c`` configured)."""

    enabled: bool
    servers: list[str]
    connection_oriented: bool


class SystemFacts(_Strict):
    """What a preflight reads about the host itself (read-only, cheap)."""

    windows_version: str  # 10.0.17763
    windows_product: str = ""  # Windows Server 2019 Standard
    powershell_version: str  # 5.1.17763.1
    language_mode: str  # FullLanguage | ConstrainedLanguage | ...
    elevated: bool  # the WinRM user's token holds Administrators (no remote UAC filtering)
    pending_reboot: list[str] = Field(default_factory=list)  # what says a reboot is pending
    system_drive_free_bytes: int
    firewall_service_running: bool  # MpsSvc


class ToolFacts(_Strict):
    """Whether the console tools the provisioner runs are where it runs them from."""

    tsecimp: bool
    tcmsetup: bool
    verpatch: bool  # at the request's verpatch_path (downloaded separately, never packaged)


class WinRMConfigFacts(_Strict):
    """The host's WinRM quotas as its ``WSMan:`` drive shows them (``winrm/config``); None
    where the WinRM user may not read one."""

    max_envelope_size_kb: int | None = None  # MaxEnvelopeSizekb
    max_shells_per_user: int | None = None  # Shell\MaxShellsPerUser
    max_concurrent_operations_per_user: int | None = None  # Service\...
    max_memory_per_shell_mb: int | None = None  # Shell\MaxMemoryPerShellMB


class HostFacts(_Strict):
    """Everything one gather returns. ``tsecimp_listing`` is the raw text of ``tsecimp /d``."""

    contract: Literal[2] = 2
    computer_name: str
    role: Literal["server", "client"]
    seal_key: SealKey
    lock: LockInfo | None = None  # as it stands (after this gather took it, when it asked)
    telephony: TelephonyFacts | None = None
    packages: list[PackageFacts] = Field(default_factory=list)
    providers: list[ProviderFacts] = Field(default_factory=list)
    tsp_instances: list[TspInstanceFacts] = Field(default_factory=list)
    services: list[ServiceFacts] = Field(default_factory=list)  # those the request named
    locations: list[LocationFacts] = Field(default_factory=list)
    firewall_rules: list[FirewallRuleFacts] = Field(default_factory=list)
    tsecimp_listing: str | None = None
    tapi_client: TapiClientFacts | None = None
    system: SystemFacts | None = None
    tools: ToolFacts | None = None
    package_cache: list[str] = Field(default_factory=list)  # sha256 of the packages it holds
    winrm: WinRMConfigFacts | None = None
    # enabled inbound allow rules of ANY group, in a profile active now, for TCP or any protocol,
    # not limited to another program or service, whose local ports reach the request's rpc_ports
    open_rpc_rules: list[FirewallRuleFacts] = Field(default_factory=list)
    package_source_readable: bool | None = None  # the request's package_source; None: not asked


class Timeouts(_Strict):
    """Seconds a native command may run before the script stops it (platform profile keys
    ``msiexec_timeout_seconds``, ``command_timeout_seconds``, ``service_timeout_seconds``)."""

    msiexec: int = 900
    command: int = 120  # tsecimp, tcmsetup, verpatch, sc.exe
    service: int = 120  # a service start, stop or restart


class GatherRequest(_Strict):
    """What the gather script needs to know: which names the platform profile gives things."""

    contract: Literal[2] = 2
    role: Literal["server", "client"]
    firewall_group: str  # only rules in this group are returned
    services: list[str] = Field(
        default_factory=list
    )  # extra services to report, e.g. the CTI engine
    telephony_service: str = "TapiSrv"
    package_name: str = ""  # MSI product name to look for
    tsp_file: str = ""  # NFONTSP.TSP, the original the instances are copied from
    instance_file_pattern: str = ""  # NFONTSP_{instance}.TSP
    instance_settings_key: str = ""  # registry path with {instance}
    verpatch_path: str = ""  # where verpatch.exe is expected (reported in tools)
    timeouts: Timeouts = Timeouts()  # tsecimp /d runs under ``command``
    rpc_ports: list[str] = Field(default_factory=lambda: list(RPC_PORTS))  # for open_rpc_rules
    package_source: str = ""  # a UNC package source: does the host read it by itself?
    lock: LockRequest | None = None  # apply and rollout: read under the host's lock


# --- operations -------------------------------------------------------------------------------


PackageFetch = Literal["upload", "https", "unc"]


class PackageInstall(_Strict):
    """Install (or upgrade to) the MSI with this sha256, checked before msiexec runs.

    ``fetch`` says where the host finds it: ``upload`` in its package cache (sent beforehand by
    the upload script; ``source`` is then only the file's name), ``https`` from the URL in
    ``source``, ``unc`` from a share the host reads by itself. ``reinstall`` adds
    ``REINSTALL=ALL REINSTALLMODE=vomus`` (the package keeps the installed product's ProductCode).
    """

    op: Literal["package.install"] = "package.install"
    fetch: PackageFetch
    source: str
    sha256: str
    version: str
    properties: dict[str, str] = Field(default_factory=dict)
    reinstall: bool = False
    installed_product_code: str | None = None  # the installed version's, named in messages


class ServiceConfigure(_Strict):
    """Start mode through sc.exe; account and password through Win32_Service.Change.

    A built-in ``account`` (LocalSystem, NT AUTHORITY\\NetworkService, NT AUTHORITY\\LocalService)
    is set with an empty password; any other account first gets the logon right.
    """

    op: Literal["service.configure"] = "service.configure"
    name: str
    start_mode: StartMode | None = None
    account: str | None = None
    password: SealedSecret | None = None


class LogonRightGrant(_Strict):
    """Grant an account the 'Log on as a service' right (SeServiceLogonRight)."""

    op: Literal["logon_right.grant"] = "logon_right.grant"
    account: str


class ServiceControl(_Strict):
    """Start, stop or restart a service (restart is the handler that runs once, last)."""

    op: Literal["service.start", "service.stop", "service.restart"]
    name: str


class TelephonyConfigure(_Strict):
    op: Literal["telephony.configure"] = "telephony.configure"
    server_mode: bool
    administrators: list[str]


class TspInstanceCreate(_Strict):
    """Copy the TSP to ``file``, set its display name, register it as a provider."""

    op: Literal["tsp_instance.create"] = "tsp_instance.create"
    instance: str
    file: str
    provider_name: str
    tsp_file: str = "NFONTSP.TSP"  # the original in System32 that the instance copies
    verpatch_path: str  # verpatch.exe, which sets the copy's display name


class TspInstanceConfigure(_Strict):
    op: Literal["tsp_instance.configure"] = "tsp_instance.configure"
    instance: str
    settings_key: str
    k_account: str
    number_format: str
    line_name_format: str
    debug_level: int
    password: SealedSecret | None = None  # None: leave the stored password alone
    reader: str = "S-1-5-20"  # TapiSrv's account (a SID or DOMAIN\\name): may read the key


class TspInstanceRemove(_Strict):
    op: Literal["tsp_instance.remove"] = "tsp_instance.remove"
    instance: str
    file: str
    settings_key: str


class LocationSet(_Strict):
    """Create or update the location with this name and make it current."""

    op: Literal["location.set"] = "location.set"
    name: str
    country_code: int
    area_code: str
    outside_access: str
    long_distance_access: str
    international_access: str = ""


class FirewallRuleSpec(_Strict):
    """A rule to write through ``HNetCfg.FwPolicy2``, already in the host's spelling."""

    name: str
    display_name: str
    description: str = ""
    group: str
    direction: int
    action: int
    protocol: int
    local_ports: str = "*"
    remote_ports: str = "*"
    remote_addresses: str = "*"
    profiles: int
    enabled: bool = True


class FirewallUpsert(_Strict):
    op: Literal["firewall.upsert"] = "firewall.upsert"
    rule: FirewallRuleSpec


class FirewallRemove(_Strict):
    op: Literal["firewall.remove"] = "firewall.remove"
    name: str


class TsecimpImport(_Strict):
    """Run ``tsecimp /f`` on this XML; the host keeps the ``tsecimp /d`` listing from before."""

    op: Literal["tsecimp.import"] = "tsecimp.import"
    xml: str
    backup_name: str  # file name under the host's backup folder


class TapiClientSet(_Strict):
    """``tcmsetup /q [/x] /c servers...`` or, with no servers, ``tcmsetup /q /c /d``."""

    op: Literal["tapi_client.set"] = "tapi_client.set"
    servers: list[str]
    connection_oriented: bool


Operation = Annotated[
    PackageInstall
    | ServiceConfigure
    | LogonRightGrant
    | ServiceControl
    | TelephonyConfigure
    | TspInstanceCreate
    | TspInstanceConfigure
    | TspInstanceRemove
    | LocationSet
    | FirewallUpsert
    | FirewallRemove
    | TsecimpImport
    | TapiClientSet,
    Field(discriminator="op"),
]

OPERATION_NAMES: frozenset[str] = frozenset(
    {
        "package.install",
        "service.configure",
        "logon_right.grant",
        "service.start",
        "service.stop",
        "service.restart",
        "telephony.configure",
        "tsp_instance.create",
        "tsp_instance.configure",
        "tsp_instance.remove",
        "location.set",
        "firewall.upsert",
        "firewall.remove",
        "tsecimp.import",
        "tapi_client.set",
    }
)


class ApplyStep(_Strict):
    """One operation with the id the plan gave it, so results can be matched to changes."""

    id: str
    operation: Operation


class ApplyRequest(_Strict):
    contract: Literal[2] = 2
    lock: LockRequest
    steps: list[ApplyStep]
    timeouts: Timeouts = Timeouts()


class StepResult(_Strict):
    id: str
    status: Literal["ok", "failed", "not-run"]
    message: str = ""
    data: dict[str, str] = Field(default_factory=dict)


class ApplyResponse(_Strict):
    """``status`` is ``locked`` (the lock is not the request's: nothing ran; ``lock`` names the
    holder, None when no one holds it), ``ok`` or ``failed``."""

    contract: Literal[2] = 2
    status: Literal["ok", "failed", "locked"]
    lock: LockInfo | None = None
    results: list[StepResult] = Field(default_factory=list)


# --- upload -----------------------------------------------------------------------------------


class UploadRequest(_Strict):
    """A package from the admin workstation, whole, in base64; stored only if its sha256 fits."""

    contract: Literal[2] = 2
    name: str  # the file's name, for messages
    sha256: str
    content: str  # base64


class UploadResponse(_Strict):
    contract: Literal[2] = 2
    sha256: str
    size: int
    path: str  # where the host keeps it
