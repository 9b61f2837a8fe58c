"""The versioned JSON contract between the provisioner and a Windows host.

Two scripts run on a host, both from ``templates/``, both fed by JSON on stdin:

* **gather** reads everything the provisioner manages in one command and prints one
  :class:`HostFacts` document;
* **apply** takes an :class:`ApplyRequest` (a lock request plus ordered operations), performs the
  operations in order, stops at the first failure and prints one :class:`ApplyResponse`.

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

CONTRACT_VERSION = 1

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
    owner: str  # "alice@ws17 pid 4711"
    acquired: str  # ISO 8601 UTC
    expires: str


class ServiceFacts(_Strict):
    name: str
    state: ServiceState
    start_mode: StartMode
    account: str


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


class TspInstanceFacts(_Strict):
    """A TSP instance: its copied ``.tsp`` file in System32 and its settings (if any)."""

    instance: str  # K6732
    file: str  # NFONTSP_K6732.TSP
    file_present: bool
    settings: TspSettingsFacts | None = None


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


class TapiClientFacts(_Strict):
    """Remote-TAPI client settings of a workstation (what ``tcmsetup /c`` configured)."""

    enabled: bool
    servers: list[str]
    connection_oriented: bool


class HostFacts(_Strict):
    """Everything one gather returns. ``tsecimp_listing`` is the raw text of ``tsecimp /d``."""

    contract: Literal[1] = 1
    computer_name: str
    role: Literal["server", "client"]
    seal_key: SealKey
    lock: LockInfo | None = None
    telephony: TelephonyFacts | None = None
    packages: list[PackageFacts] = Field(default_factory=list)
    providers: list[ProviderFacts] = Field(default_factory=list)
    tsp_instances: list[TspInstanceFacts] = Field(default_factory=list)
    services: list[ServiceFacts] = Field(default_factory=list)  # those the request named
    locations: list[LocationFacts] = Field(default_factory=list)
    firewall_rules: list[FirewallRuleFacts] = Field(default_factory=list)
    tsecimp_listing: str | None = None
    tapi_client: TapiClientFacts | None = None


class GatherRequest(_Strict):
    """What the gather script needs to know: which names the platform profile gives things."""

    contract: Literal[1] = 1
    role: Literal["server", "client"]
    firewall_group: str  # only rules in this group are returned
    services: list[str] = Field(
        default_factory=list
    )  # extra services to report, e.g. the CTI engine
    package_name: str = ""  # MSI product name to look for
    tsp_file: str = ""  # NFONTSP.TSP, the original the instances are copied from
    instance_file_pattern: str = ""  # NFONTSP_{instance}.TSP
    instance_settings_key: str = ""  # registry path with {instance}


# --- operations -------------------------------------------------------------------------------


class PackageInstall(_Strict):
    op: Literal["package.install"] = "package.install"
    source: str  # UNC path or URL of the MSI
    sha256: str
    version: str
    properties: dict[str, str] = Field(default_factory=dict)


class ServiceConfigure(_Strict):
    op: Literal["service.configure"] = "service.configure"
    name: str
    start_mode: StartMode | None = None
    account: str | None = None
    password: SealedSecret | None = None


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


class TspInstanceConfigure(_Strict):
    op: Literal["tsp_instance.configure"] = "tsp_instance.configure"
    instance: str
    settings_key: str
    k_account: str
    number_format: str
    line_name_format: str
    debug_level: int
    password: SealedSecret | None = None  # None: leave the stored password alone


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


class LockRequest(_Strict):
    owner: str
    ttl_seconds: int = 900


class ApplyStep(_Strict):
    """One operation with the id the plan gave it, so results can be matched to changes."""

    id: str
    operation: Operation


class ApplyRequest(_Strict):
    contract: Literal[1] = 1
    lock: LockRequest
    steps: list[ApplyStep]


class StepResult(_Strict):
    id: str
    status: Literal["ok", "failed", "not-run"]
    message: str = ""
    data: dict[str, str] = Field(default_factory=dict)


class ApplyResponse(_Strict):
    """``status`` is ``locked`` (nothing ran; ``lock`` names the holder), ``ok`` or ``failed``."""

    contract: Literal[1] = 1
    status: Literal["ok", "failed", "locked"]
    lock: LockInfo | None = None
    results: list[StepResult] = Field(default_factory=list)
