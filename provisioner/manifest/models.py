"""The manifest language: one pydantic model per document kind.

A manifest is a set of YAML documents, each with a ``kind`` and a ``name``::

    kind: Tenant
    name: k6732
    k_account: K6732
    server: tapi01
    cti_password: {env: K6732_CTI_PASSWORD}
    number_format: international
    assignments:
      - user: NFON\\MAUERSBERGERM
        friendly_name: Marius Mauersberger
        lines: ["1254"]

Values are checked here one document at a time; rules across documents live in
:mod:`provisioner.manifest.rules`. Field values are kept as written (after trimming); comparing
them with a live system is the job of the resource modules, which canonicalise both sides.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from enum import StrEnum
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    ValidationInfo,
    field_validator,
    model_validator,
)

# --- scalar types -------------------------------------------------------------------------------

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="lower-case letters, digits and '-', at most 63 characters",
    ),
]

_SAM_FORBIDDEN = set('"/\\[]:;|=,+*?<>')
_NETBIOS_FORBIDDEN = set('\\/:*?"<>|., ')


# The common, valid spelling in one regular expression: a plan reads 100,000 of them. Anything
# it does not match goes through the checks below, which say what is wrong.
_PLAIN_ACCOUNT = re.compile(
    r'[^\\/:*?"<>|., \x00-\x1f]{1,15}'  # the NetBIOS domain
    r"\\"
    r'[^"/\\\[\]:;|=,+*?<>\x00-\x1f]{0,19}[^"/\\\[\]:;|=,+*?<>\x00-\x1f.]'  # the account
)


def _domain_account(value: str) -> str:
    if isinstance(value, str) and _PLAIN_ACCOUNT.fullmatch(value):
        return value
    if not isinstance(value, str):
        raise ValueError("write the user as a string 'DOMAIN\\sam'")
    if value.count("\\") != 1:
        raise ValueError(f"{value!r} is not DOMAIN\\sam (one backslash between domain and account)")
    domain, sam = value.split("\\")
    if not 1 <= len(domain) <= 15 or _NETBIOS_FORBIDDEN & set(domain):
        raise ValueError(
            f'{domain!r} is not a NetBIOS domain name (1-15 characters, no \\/:*?"<>|.)'
        )
    if not 1 <= len(sam) <= 20:
        raise ValueError(f"account {sam!r} has {len(sam)} characters; sAMAccountName allows 1-20")
    bad = sorted(_SAM_FORBIDDEN & set(sam))
    if bad:
        raise ValueError(
            f"account {sam!r} contains {''.join(bad)!r}, not allowed in sAMAccountName"
        )
    if sam.endswith(".") or any(ord(c) < 32 for c in sam):
        raise ValueError(f"account {sam!r} may not end with '.' or hold control characters")
    return value


def is_domain_account(value: str) -> bool:
    """Whether ``value`` reads as ``DOMAIN\\sam`` by the rules :data:`DomainUser` checks."""
    try:
        _domain_account(value)
    except ValueError:
        return False
    return True


DomainUser = Annotated[
    str,
    AfterValidator(_domain_account),
    Field(description="DOMAIN\\sAMAccountName, e.g. NFON\\MAUERSBERGERM", examples=["NFON\\jdoe"]),
]


DomainGroup = Annotated[
    str,
    AfterValidator(_domain_account),
    Field(description="DOMAIN\\group name, e.g. NFON\\K6732-TAPI-Users"),
]


def domain_user_key(user: str) -> str:
    """One key for every spelling Windows takes for the same account: ``nfon\\Straße`` and
    ``NFON\\STRAßE`` share ``NFON\\STRAßE``; ``NFON\\STRASSE`` is another account.

    Windows compares account names case-insensitively one UTF-16 code unit at a time, through
    its upcase table: RtlUpcaseUnicodeChar maps one WCHAR to one WCHAR (Microsoft Learn,
    https://learn.microsoft.com/en-us/windows-hardware/drivers/ddi/wdm/nf-wdm-rtlupcaseunicodechar).
    Python's ``str.upper()`` applies full case mapping instead ("ß" → "SS"), which would merge
    two accounts and write a name that is neither: never use it here. The key is for comparing
    only; names are written as the manifest or the directory spells them.
    """
    if user.isascii():
        return user.upper()
    return "".join(_upcase_char(c) for c in user)


@functools.cache
def _upcase_char(char: str) -> str:
    """The one-to-one (simple) uppercase of a BMP character; itself when it has none."""
    if ord(char) > 0xFFFF:
        return char  # a surrogate pair: the upcase table maps single code units only
    # where full mapping expands (ß → SS, ᾳ → ΑΙ), the simple mapping, if any, is the
    # titlecase form (ᾳ → ᾼ); ß has none
    return next((mapped for mapped in (char.upper(), char.title()) if len(mapped) == 1), char)


KAccount = Annotated[
    str,
    Field(pattern=r"^K[A-Za-z0-9]{1,31}$", description="NFON K-account, e.g. K6732"),
]

Extension = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,15}$",
        description="extension number as a string (quote it: numbers lose leading zeros)",
    ),
]

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256")]
Version = Annotated[str, Field(pattern=r"^[0-9]+(\.[0-9]+){0,3}$", examples=["1.0.0"])]
ProductCode = Annotated[
    str,
    Field(
        pattern=r"^\{[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}\}$",
        examples=["{6A1B3C5D-0F00-4E10-9A00-000000010000}"],
    ),
]


def _port(value: Any) -> str:
    """A port or range in one spelling: ``135``, ``"49152-65535"``; ``"*"`` is not a port."""
    if isinstance(value, bool):
        raise ValueError("a port is a number 1-65535 or a range 'low-high'")
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", value):
        parts = [int(p) for p in value.split("-")]
        low, high = parts[0], parts[-1]
    else:
        raise ValueError(f"{value!r} is not a port (1-65535) or a range 'low-high'")
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(f"{value!r}: ports run from 1 to 65535")
    if low > high:
        raise ValueError(f"{value!r}: the range runs backwards")
    return str(low) if low == high else f"{low}-{high}"


Port = Annotated[
    str,
    BeforeValidator(_port, json_schema_input_type=int | str),
    Field(examples=[135, "49152-65535"]),
]


def _address(value: Any) -> str:
    """An address, a network (``10.0.2.0/24``), a range (``10.0.2.10-10.0.2.20``) or ``any``."""
    if not isinstance(value, str):
        raise ValueError("write addresses as strings")
    text = value.strip()
    if text.lower() in ("any", "*"):
        return "any"
    if "-" in text:
        low_text, _, high_text = text.partition("-")
        try:
            low, high = ip_address(low_text.strip()), ip_address(high_text.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an address range 'first-last'") from None
        if low.version != high.version or low > high:  # type: ignore[operator]
            raise ValueError(f"{value!r}: the range must run upwards within one IP version")
        return f"{low}-{high}"
    try:
        if "/" in text:
            return str(ip_network(text, strict=True))
        return str(ip_address(text))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address, network or range: {exc}") from None


RemoteAddress = Annotated[
    str, BeforeValidator(_address), Field(examples=["10.0.2.0/24", "10.0.3.5", "any"])
]

IPAddress = IPvAnyAddress
IPNetwork = IPvAnyNetwork


_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")  # the common case, checked in one step


def _printable(value: str) -> str:
    """A name the tool writes to a host: no control, format or line-separator characters.

    Such a character in a line's or user's name could print a forged entry into the tsecimp
    listing the tool reads back, or hide text from a reviewer (a bidirectional override).
    """
    if _PRINTABLE_ASCII.fullmatch(value):
        return value
    bad = next((c for c in value if _unprintable(c)), None)
    if bad is not None:
        raise ValueError(f"holds the control character U+{ord(bad):04X}; remove it")
    return value


def _unprintable(char: str) -> bool:
    code = ord(char)
    noncharacter = 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE
    return noncharacter or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


Text = Annotated[str, AfterValidator(_printable)]
"""Free text the tool writes to a host (friendly names, descriptions, formats)."""


def _number_as_text(value: Any) -> Any:
    """A platform value written as a number (a timeout in seconds) is kept as its text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PlatformValue = Annotated[
    str,
    BeforeValidator(_number_as_text, json_schema_input_type=int | str),
    AfterValidator(_printable),
]


def _url_port(url: str) -> str:
    try:
        urlsplit(url).port  # noqa: B018 (parsing is the check)
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


# --- secrets ------------------------------------------------------------------------------------


class SecretRef(_Model):
    """Where a secret lives: ``{env: NAME}`` or ``{file: PATH}``; never the secret itself."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_plaintext(cls, value: Any) -> Any:
        if isinstance(value, str | int | float):
            raise ValueError(
                "plaintext secret: write {env: NAME} or {file: PATH} instead of the value"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of env or file")
        return self

    def as_mapping(self) -> dict[str, str]:
        return {"env": self.env} if self.env is not None else {"file": self.file or ""}


# --- WinRM --------------------------------------------------------------------------------------


class WinRMAuth(StrEnum):
    ntlm = "ntlm"
    kerberos = "kerberos"
    credssp = "credssp"
    basic = "basic"
    certificate = "certificate"


class WinRMSettings(_Model):
    """How to reach a host. Every field is optional: a Site gives defaults, a host overrides."""

    host: str | None = Field(None, description="DNS name or address; default: the document name")
    scheme: Literal["https", "http"] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    auth: WinRMAuth | None = None
    ca_file: str | None = None
    user: str | None = None
    password: SecretRef | None = None
    allow_insecure: bool | None = Field(
        None, description="permit http without message encryption, or basic auth; warns"
    )
    command_timeout_s: Annotated[int, Field(ge=1)] | None = Field(
        None, description="the most one remote command may take, in seconds; default 1800"
    )

    def merged_over(self, base: WinRMSettings | None) -> WinRMSettings:
        """This host's settings, with the gaps filled from ``base``."""
        if base is None:
            return self
        own = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if getattr(self, name) is not None
        }
        return base.model_copy(update=own)

    def insecurity(self) -> tuple[str, str] | None:
        """(field, why) when these settings would give the credentials away, else None."""
        if self.allow_insecure:
            return None
        if self.auth is WinRMAuth.basic:
            return "auth", (
                "basic auth sends the password in a form anyone on the path can reuse: use ntlm, "
                "kerberos or certificate, or set allow_insecure: true"
            )
        if self.scheme == "http" and self.auth in (None, WinRMAuth.certificate):
            return "scheme", (
                "http is only safe with ntlm, kerberos or credssp message encryption: use https "
                "or set allow_insecure: true"
            )
        return None


# --- Site ---------------------------------------------------------------------------------------


class OnMissingUser(StrEnum):
    error = "error"
    skip = "skip"
    remove_lines = "remove_lines"


class Directory(_Model):
    netbios_domain: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")]
    start_tls: bool = False
    ldap_url: Annotated[str, Field(pattern=r"^ldaps?://[^/\s]+/?$"), AfterValidator(_url_port)]
    bind_user: str
    bind_password: SecretRef
    ca_file: str | None = None
    # names per user search: at most 999 (AD answers at most 1,000 entries unpaged); the
    # directory checks each match against every name, so smaller batches cost it less
    # (bench/ldap_scale.py: 100 costs Samba half what 300 does, 999 twice as much)
    batch_size: Annotated[int, Field(ge=1, le=999)] = 100
    on_missing_user: OnMissingUser = OnMissingUser.error
    cross_tenant_users: list[DomainUser] = Field(
        default_factory=list, description="accounts allowed in more than one tenant"
    )

    @field_validator("ldap_url")
    @classmethod
    def _tls(cls, url: str, info: ValidationInfo) -> str:
        # start_tls is declared first so that it is already in info.data here
        if url.startswith("ldap://") and not info.data.get("start_tls"):
            raise ValueError(
                "ldap:// sends the bind password in clear: use ldaps:// or start_tls: true"
            )
        return url


class CtiApiSettings(_Model):
    base_url: Annotated[str, Field(pattern=r"^https?://\S+$"), AfterValidator(_url_port)] = (
        "https://providersupportdata.cloud-cfg.com/v1"
    )
    ca_file: str | None = None
    allow_insecure: bool = Field(
        False, description="permit http:// (the CTI API password then crosses in clear); warns"
    )

    @model_validator(mode="after")
    def _tls(self) -> CtiApiSettings:
        if self.base_url.lower().startswith("http://") and not self.allow_insecure:
            raise ValueError(
                "http:// sends the CTI API password in clear: use https:// or set "
                "allow_insecure: true (labs only)"
            )
        return self


class Site(_Model):
    kind: Literal["Site"]
    name: Name
    directory: Directory
    domain_controllers: list[IPAddress] = Field(min_length=1)
    dns_servers: list[IPAddress] = Field(min_length=1)
    winrm: WinRMSettings = WinRMSettings()
    cti_api: CtiApiSettings = CtiApiSettings()
    platform: dict[str, PlatformValue] = Field(
        default_factory=dict, description="overrides of the platform profile's assumptions"
    )


# --- TapiServer ---------------------------------------------------------------------------------


class StartMode(StrEnum):
    auto = "auto"
    delayed_auto = "delayed-auto"
    manual = "manual"
    disabled = "disabled"


class ServiceState(StrEnum):
    running = "running"
    stopped = "stopped"


class TelephonyServer(_Model):
    """The Windows Telephony service (TapiSrv) in server mode."""

    server_mode: bool = True
    service_account: Text | None = Field(None, description="DOMAIN\\user the service runs as")
    service_password: SecretRef | None = None
    administrators: list[DomainUser] = Field(default_factory=list)

    @model_validator(mode="after")
    def _password_with_account(self) -> TelephonyServer:
        if self.service_password is not None and self.service_account is None:
            raise ValueError("service_password is set but service_account is not")
        return self


class Package(_Model):
    """The NFON TAPI MSI: a file on the admin workstation (sent over WinRM), an https:// URL the
    host downloads, or a UNC path the host reads by itself (``host_reads_share``)."""

    version: Version
    source: Text = Field(
        min_length=1,
        description="NFONTAPI.msi: a path on this workstation (relative to the manifest file), "
        "an https:// URL, or a UNC path with host_reads_share: true",
    )
    sha256: Sha256
    product_code: ProductCode | None = Field(
        None,
        description="the MSI's ProductCode; when it is the installed version's, the upgrade "
        "runs as a reinstall (REINSTALL=ALL REINSTALLMODE=vomus)",
    )
    host_reads_share: bool = Field(
        False,
        description="the host reads the UNC source without the operator's credentials (WinRM "
        "cannot pass them on: the second hop); doctor checks it",
    )

    @property
    def fetch(self) -> Literal["upload", "https", "unc", "other"]:
        """How the host gets the package: ``other`` is a URL scheme the host must not use."""
        if self.source.startswith(("\\\\", "//")):
            return "unc"
        if re.match(r"(?i)https://", self.source):
            return "https"
        if re.match(r"(?i)[a-z][a-z0-9+.-]+://", self.source):
            return "other"
        return "upload"

    def local_path(self, manifest_file: str) -> Path:
        """A workstation source, relative to the folder of the manifest that names it."""
        return Path(manifest_file).parent / Path(self.source).expanduser()


class CtiEngine(_Model):
    """The CTI engine service that carries the CTI API connection."""

    name: Text | None = Field(None, description="default from the platform profile")
    start_mode: StartMode = StartMode.auto
    state: ServiceState = ServiceState.running
    account: Text = "LocalSystem"


class DialingLocation(_Model):
    """The Windows dialing location the phonebook number formats need."""

    name: Text = Field(min_length=1, max_length=64)
    country_code: Annotated[int, Field(ge=1, le=999, description="dialing code, e.g. 49")]
    area_code: Annotated[str, Field(pattern=r"^[0-9]{0,8}$")]
    outside_access: Annotated[str, Field(pattern=r"^[0-9*#]{0,4}$")] = ""
    long_distance_access: Annotated[str, Field(pattern=r"^[0-9*#]{0,4}$")] = "0"
    international_access: Annotated[str, Field(pattern=r"^[0-9*#]{0,4}$")] = "00"


class Direction(StrEnum):
    inbound = "in"
    outbound = "out"


class Protocol(StrEnum):
    tcp = "tcp"
    udp = "udp"
    icmpv4 = "icmpv4"
    icmpv6 = "icmpv6"
    any = "any"


class Profile(StrEnum):
    domain = "domain"
    private = "private"
    public = "public"


class FirewallRule(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")]
    direction: Direction
    action: Literal["allow", "block"] = "allow"
    protocol: Protocol
    local_ports: list[Port] = Field(default_factory=list)
    remote_ports: list[Port] = Field(default_factory=list)
    remote_addresses: list[RemoteAddress] = Field(default_factory=lambda: ["any"], min_length=1)
    profiles: list[Profile] | Literal["any"] = "any"
    description: Text = ""
    enabled: bool = True


class FirewallPreset(StrEnum):
    server = "nfon-tapi-server"
    client = "nfon-tapi-client"


class Firewall(_Model):
    presets: list[FirewallPreset] = Field(default_factory=list)
    rules: list[FirewallRule] = Field(default_factory=list)
    prune: bool = Field(False, description="delete managed-group rules the manifest does not name")


class TapiServer(_Model):
    kind: Literal["TapiServer"]
    name: Name
    site: Name | None = Field(None, description="default: the only Site")
    address: IPAddress
    winrm: WinRMSettings = WinRMSettings()
    client_subnets: list[IPNetwork] = Field(default_factory=list)
    telephony: TelephonyServer = TelephonyServer()
    package: Package | None = None
    cti_engine: CtiEngine | None = CtiEngine()
    location: DialingLocation | None = None
    firewall: Firewall = Firewall()
    platform: dict[str, PlatformValue] = Field(default_factory=dict)


# --- Tenant -------------------------------------------------------------------------------------


class NumberFormat(StrEnum):
    """The four formats of the NFON manual; the phonebook ones need a dialing location."""

    international = "international"
    international_no_plus = "international_no_plus"
    phonebook = "phonebook"
    phonebook_international = "phonebook_international"

    @property
    def needs_location(self) -> bool:
        return self in (NumberFormat.phonebook, NumberFormat.phonebook_international)


LINE_NAME_FIELDS = ("extension", "name", "k_account")


def _line_name_format(value: str) -> str:
    fields = re.findall(r"\{([^{}]*)\}", value)
    unknown = [f for f in fields if f not in LINE_NAME_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}}: use {{extension}}, {{name}} or {{k_account}}"
        )
    if "extension" not in fields:
        raise ValueError("the line name must contain {extension}, or lines of two users look alike")
    return value


LineNameFormat = Annotated[
    str,
    AfterValidator(_printable),
    AfterValidator(_line_name_format),
    Field(max_length=80, examples=["{extension} {name}"]),
]


class Assignment(_Model):
    user: DomainUser
    lines: list[Extension] = Field(min_length=1)
    friendly_name: Text | None = Field(None, max_length=256, description="default: AD displayName")
    shared: bool = Field(False, description="the lines may also be assigned to other users")


class Tenant(_Model):
    kind: Literal["Tenant"]
    name: Name
    k_account: KAccount
    server: Name
    cti_password: SecretRef
    number_format: NumberFormat = NumberFormat.international
    line_name_format: LineNameFormat = "{extension} {name}"
    debug_level: Annotated[int, Field(ge=0, le=9)] = 0
    users_group: DomainGroup | None = Field(
        None, description="AD group whose members are this tenant's users"
    )
    on_missing_user: OnMissingUser | None = None
    assignments: list[Assignment] = Field(default_factory=list)
    prune: bool = Field(
        False, description="remove lines of this tenant from users the manifest does not name"
    )
    wave: Annotated[int, Field(ge=1)] | None = Field(
        None, description="the rollout wave this tenant goes in (1: the canary's)"
    )


# --- TapiClients --------------------------------------------------------------------------------


class TapiClients(_Model):
    kind: Literal["TapiClients"]
    name: Name
    site: Name | None = None
    hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")]] = Field(
        min_length=1
    )
    servers: list[Name] = Field(min_length=1, description="TAPI servers, in tcmsetup order")
    connection_oriented: bool = Field(False, description="tcmsetup /x")
    winrm: WinRMSettings = WinRMSettings()
    firewall: Firewall = Firewall(presets=[FirewallPreset.client])


KINDS: dict[str, type[_Model]] = {
    "Site": Site,
    "TapiServer": TapiServer,
    "Tenant": Tenant,
    "TapiClients": TapiClients,
}

AnyDocument = Site | TapiServer | Tenant | TapiClients
