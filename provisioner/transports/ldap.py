"""A small LDAP client for Active Directory: bind, paged search, modify; errors say what to fix.

Every connection is encrypted and verified unless the caller opts out loudly::

    settings = LDAPSettings(
        url="ldaps://dc1.example.com:636",     # or ldap://...:389 with start_tls=True
        bind_user="svc-provisioner@example.com",  # a UPN or EXAMPLE\\svc-provisioner
        bind_password=Secret("..."),
        ca_file=Path("ca.pem"),                # None: the system trust store
    )
    with LDAPConnection.open(settings) as conn:
        entries = conn.search_paged("DC=example,DC=com", "(sAMAccountName=jdoe)", ["objectSid"])
        entries[0].binary("objectSid")   # b'\\x01\\x05\\x00...'
        conn.operations, conn.searches   # (2, 1): the bind and one search request

``operations`` counts every LDAP request sent on the wire (binds, each page of a search, modifies),
so callers and benchmarks can prove that work was batched.
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap3_errors
from ldap3.utils.dn import parse_dn

from provisioner.errors import TransportError
from provisioner.secrets import Secret

T = TypeVar("T")
R = TypeVar("R")

# The OID of the paged-results control (RFC 2696), as ldap3 keys it in a result.
_PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
_Scope = Literal["SUBTREE", "LEVEL", "BASE"]  # ldap3.SUBTREE, ldap3.LEVEL, ldap3.BASE
_SCOPES: dict[str, _Scope] = {"subtree": "SUBTREE", "level": "LEVEL", "base": "BASE"}

# AD explains a failed bind (invalidCredentials, 49) with "data <hex>" in the diagnostic message.
# https://learn.microsoft.com/en-us/troubleshoot/windows-server/active-directory/
_AD_BIND_REASONS: Mapping[str, tuple[str, str]] = {
    "525": ("the bind user does not exist", "check bind_user"),
    "52e": ("wrong password", "check the bind password secret"),
    "530": ("logon not permitted at this time", "check the account's logon hours in AD"),
    "531": ("logon not permitted from this workstation", "check the account's logon workstations"),
    "532": ("the password has expired", "set a new password for the bind account"),
    "533": ("the bind account is disabled", "enable the account in AD"),
    "568": ("the account is in too many groups", "reduce the bind account's group memberships"),
    "701": ("the bind account has expired", "extend the account's expiry date in AD"),
    "773": ("the password must be changed before first use", "set a new password for the account"),
    "775": ("the bind account is locked out", "unlock the account in AD or wait for the lockout"),
}
_AD_DATA_CODE = re.compile(r"\bdata ([0-9a-f]{3,8})\b", re.IGNORECASE)


class LDAPError(TransportError):
    """The directory could not be reached or refused a request."""


class LDAPUnreachableError(LDAPError):
    """No LDAP server answered at the configured address."""


class LDAPTLSError(LDAPError):
    """The TLS handshake failed: the server's certificate is not trusted or names another host."""


class LDAPBindError(LDAPError):
    """The server refused the credentials; ``reason`` is AD's sub-code (``"52e"``) if it sent it."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class LDAPStrongerAuthRequiredError(LDAPError):
    """The server refuses a simple bind over an unencrypted connection."""


class LDAPOperationError(LDAPError):
    """A search or modify failed; ``result`` is the LDAP result name (``"noSuchObject"``)."""

    def __init__(self, message: str, result: str) -> None:
        super().__init__(message)
        self.result = result


class InsecureLDAPWarning(UserWarning):
    """Emitted when a caller opted in to a plain, unencrypted LDAP connection."""


@dataclass(frozen=True)
class LDAPSettings:
    """Where and as whom to bind. ``bind_user`` is a UPN (``svc@example.com``) or ``EXAMPLE\\svc``.

    ``allow_plaintext`` permits ``ldap://`` without StartTLS: the password then crosses the network
    in clear, so it must be asked for explicitly and it warns. Hardened AD refuses it anyway.
    """

    url: str
    bind_user: str
    bind_password: Secret = field(repr=False)
    ca_file: Path | None = None
    start_tls: bool = False
    timeout: float = 10.0
    allow_plaintext: bool = False


@dataclass(frozen=True)
class LDAPEntry:
    """One search result with raw attribute values, keyed by lower-case attribute name.

    >>> entry = LDAPEntry("CN=jdoe,OU=Staff,DC=example,DC=com", {"samaccountname": [b"jdoe"]})
    >>> entry.text("sAMAccountName")
    'jdoe'
    """

    dn: str
    values: Mapping[str, Sequence[bytes]]

    def binary(self, name: str) -> bytes | None:
        found = self.values.get(name.lower())
        return found[0] if found else None

    def text(self, name: str) -> str | None:
        found = self.binary(name)
        return found.decode("utf-8") if found is not None else None

    def texts(self, name: str) -> list[str]:
        return [value.decode("utf-8") for value in self.values.get(name.lower(), ())]


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    use_ssl: bool


def _parse_url(url: str) -> _Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise LDAPError(
            f"LDAP url {url!r} is not of the form ldaps://host[:port] or ldap://host[:port]"
        )
    use_ssl = parts.scheme == "ldaps"
    try:
        port = parts.port
    except ValueError as exc:
        raise LDAPError(f"LDAP url {url!r}: {exc}") from None
    return _Endpoint(parts.hostname, port or (636 if use_ssl else 389), use_ssl)


class LDAPConnection:
    """A bound LDAP connection; use :meth:`open`, and close it (or use ``with``)."""

    def __init__(self, settings: LDAPSettings, connection: ldap3.Connection) -> None:
        self.settings = settings
        self._conn = connection

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: LDAPSettings) -> LDAPConnection:
        """Connect, encrypt (LDAPS or StartTLS) and simple-bind; raise what went wrong."""
        endpoint = _parse_url(settings.url)
        encrypted = endpoint.use_ssl or settings.start_tls
        if not encrypted:
            if not settings.allow_plaintext:
                raise LDAPError(
                    f"{settings.url} would send the bind password unencrypted; "
                    "use an ldaps:// url or set start_tls"
                )
            warnings.warn(
                f"LDAP to {settings.url} is unencrypted: the bind password is sent in clear",
                InsecureLDAPWarning,
                stacklevel=2,
            )
        if settings.ca_file is not None and not settings.ca_file.is_file():
            raise LDAPTLSError(
                f"CA file {settings.ca_file} does not exist; set ca_file to a PEM file"
            )
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
        )
        server = ldap3.Server(
            endpoint.host,
            port=endpoint.port,
            use_ssl=endpoint.use_ssl,
            tls=tls,
            get_info=ldap3.NONE,  # reading the schema would cost searches we do not need
            connect_timeout=settings.timeout,
        )
        conn = ldap3.Connection(
            server,
            user=settings.bind_user,
            password=settings.bind_password.reveal(),
            authentication=ldap3.SIMPLE,
            raise_exceptions=False,
            receive_timeout=math.ceil(settings.timeout),  # ldap3 packs it as whole seconds
            auto_referrals=False,
            auto_range=False,  # ranges are read explicitly, so every request is counted and visible
            return_empty_attributes=False,  # absent means absent (and ldap3 breaks on ranges else)
            collect_usage=True,
            read_only=False,
            check_names=False,  # no schema is read (get_info=NONE): values stay raw bytes anyway
        )
        opened = cls(settings, conn)
        try:
            try:
                opened._guard(conn.open)
                if settings.start_tls and not endpoint.use_ssl:
                    opened._guard(lambda: conn.start_tls(read_server_info=False))
                bound = opened._guard(conn.bind)
            finally:
                conn.password = None  # ldap3 prints it in repr(); nothing needs it after the bind
            if not bound:
                raise opened._bind_error(conn.result)
        except BaseException:
            opened.close()
            raise
        return opened

    def __repr__(self) -> str:
        return f"LDAPConnection({self.settings.url!r}, bind_user={self.settings.bind_user!r})"

    def _bind_error(self, result: Mapping[str, Any]) -> LDAPError:
        who = f"bind as {self.settings.bind_user} to {self.settings.url}"
        description = str(result.get("description", "unknown"))
        message = str(result.get("message", ""))
        if description == "strongerAuthRequired":
            return LDAPStrongerAuthRequiredError(
                f"{who} refused: the server requires an encrypted connection; "
                "use an ldaps:// url or set start_tls"
            )
        if description == "invalidCredentials":
            code = _AD_DATA_CODE.search(message)
            reason = code.group(1).lower() if code else None
            if reason is not None and reason in _AD_BIND_REASONS:
                what, fix = _AD_BIND_REASONS[reason]
                return LDAPBindError(f"{who} failed: {what} (AD code {reason}); {fix}", reason)
            return LDAPBindError(f"{who} failed: invalid credentials; check bind_user and password")
        return LDAPBindError(f"{who} failed: {description} {message}".rstrip())

    # -- error translation ---------------------------------------------------------------------

    def _guard(self, call: Any) -> Any:
        """Run an ldap3 call, turning its socket and TLS exceptions into our error types."""
        try:
            return call()
        except ldap3_errors.LDAPStartTLSError as exc:
            raise self._tls_error(str(exc)) from None
        except ldap3_errors.LDAPSocketOpenError as exc:
            text = str(exc)
            if "ssl" in text.lower() or "certificate" in text.lower():
                raise self._tls_error(text) from None
            raise LDAPUnreachableError(
                f"cannot reach LDAP server {self.settings.url}: {_socket_reason(text)}; "
                "check the url and that the server is running and reachable"
            ) from None
        except ldap3_errors.LDAPCommunicationError as exc:
            raise LDAPUnreachableError(
                f"connection to LDAP server {self.settings.url} failed: {type(exc).__name__}; "
                "check the server and the network"
            ) from None
        except ldap3_errors.LDAPResponseTimeoutError:
            raise LDAPUnreachableError(
                f"LDAP server {self.settings.url} did not answer within {self.settings.timeout} s"
            ) from None

    def _tls_error(self, text: str) -> LDAPTLSError:
        trust = (
            f"CA file {self.settings.ca_file}" if self.settings.ca_file else "the system CA store"
        )
        if "doesn't match" in text or "hostname mismatch" in text.lower():
            return LDAPTLSError(
                f"the certificate of {self.settings.url} does not name that host; "
                "use the host name (or IP) the certificate was issued for in the url"
            )
        if "certificate verify failed" in text.lower():
            return LDAPTLSError(
                f"the certificate of {self.settings.url} is not signed by a CA in {trust}; "
                "set ca_file to the CA that issued the directory's certificate"
            )
        return LDAPTLSError(
            f"TLS with {self.settings.url} failed: {text}; check ca_file and the url"
        )

    # -- requests ------------------------------------------------------------------------------

    @property
    def operations(self) -> int:
        """LDAP requests sent so far on this connection (bind, search pages, modifies, ...)."""
        usage = self._conn.usage
        return usage.operations if usage else 0

    @property
    def searches(self) -> int:
        """Search requests sent so far; every page of a paged search is one."""
        usage = self._conn.usage
        return usage.search_operations if usage else 0

    def map(self, work: Callable[[LDAPConnection, T], R], items: Sequence[T]) -> list[R]:
        """``work(self, item)`` for each item in turn (:meth:`LDAPPool.map` runs them at once)."""
        return [work(self, item) for item in items]

    def root_dse(self, attributes: Sequence[str]) -> LDAPEntry:
        """Read attributes of the RootDSE (``configurationNamingContext``, ...)."""
        entry = self.read_entry("", attributes)
        if entry is None:
            raise LDAPOperationError(f"{self.settings.url} returned no RootDSE", "noSuchObject")
        return entry

    def read_entry(self, dn: str, attributes: Sequence[str]) -> LDAPEntry | None:
        """One object by DN, or ``None`` when it does not exist."""
        found = self._search_page(dn, "(objectClass=*)", attributes, ldap3.BASE, None, None)
        if found is None:
            return None
        return found[0][0] if found[0] else None

    def search(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        scope: Literal["subtree", "level", "base"] = "subtree",
    ) -> list[LDAPEntry]:
        """The entries of one search without paging, for searches that cannot match more than
        AD's MaxPageSize (1,000) entries, such as up to 999 names (AD would stop there).

        Cheaper than :meth:`search_paged` for the server: Samba runs a paged search twice
        (it collects the matches, then reads each again for the page), four times the work.
        """
        found = self._search_page(base, search_filter, attributes, _SCOPES[scope], None, None)
        return found[0] if found is not None else []

    def search_paged(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        *,
        scope: Literal["subtree", "level", "base"] = "subtree",
        page_size: int = 500,
    ) -> list[LDAPEntry]:
        """All entries matching ``search_filter``, fetched ``page_size`` at a time.

        Values in ``search_filter`` must already be escaped (``ldap3``'s ``escape_filter_chars``).
        Continuation references (AD's DomainDnsZones, ...) are skipped. A missing base yields [].
        """
        ldap_scope = _SCOPES[scope]
        entries: list[LDAPEntry] = []
        cookie: bytes | None = None
        while True:
            found = self._search_page(
                base, search_filter, attributes, ldap_scope, page_size, cookie
            )
            if found is None:
                return []
            page, cookie = found
            entries.extend(page)
            if not cookie:
                return entries

    def _search_page(
        self,
        base: str,
        search_filter: str,
        attributes: Sequence[str],
        scope: _Scope,
        page_size: int | None,
        cookie: bytes | None,
    ) -> tuple[list[LDAPEntry], bytes | None] | None:
        conn = self._conn
        ok = self._guard(
            lambda: conn.search(
                base,
                search_filter,
                search_scope=scope,
                attributes=list(attributes),
                paged_size=page_size,
                paged_cookie=cookie,
            )
        )
        result = conn.result
        if not ok and result.get("description") == "noSuchObject":
            return None
        if not ok and result.get("description") not in ("success", "referral"):
            raise self._operation_error(f"search under {base or 'the RootDSE'}", result)
        page = [
            LDAPEntry(
                dn=item["dn"],
                values={name.lower(): list(v) for name, v in item["raw_attributes"].items()},
            )
            for item in conn.response or ()
            if item.get("type") == "searchResEntry"
        ]
        control = (result.get("controls") or {}).get(_PAGED_RESULTS_OID)
        next_cookie = control["value"]["cookie"] if control else None
        return page, next_cookie or None

    def read_ranged(self, dn: str, attribute: str, *, step: int = 1500) -> list[bytes]:
        """All values of a large multi-valued attribute (``member``), ``step`` values per request.

        AD returns at most MaxValRange (1500) values of one attribute per request and names the
        slice it sent, e.g. ``member;range=0-1499``; the last slice ends in ``*``.
        """
        values: list[bytes] = []
        low = 0
        while True:
            wanted = f"{attribute};range={low}-{low + step - 1}"
            entry = self.read_entry(dn, [wanted])
            if entry is None:
                raise LDAPOperationError(f"{dn} does not exist", "noSuchObject")
            slice_name, slice_values = _find_range(entry, attribute)
            values.extend(slice_values)
            if slice_name is None or slice_name.endswith("-*"):
                return values
            low = int(slice_name.rsplit("-", 1)[1]) + 1

    def modify(
        self,
        dn: str,
        changes: Mapping[str, Sequence[tuple[str, Sequence[Any]]]],
        *,
        tolerate: Iterable[str] = (),
    ) -> str:
        """Apply ldap3-style ``changes`` to ``dn``; return "success" or the tolerated result name.

        ``changes`` looks like ``{"member": [(ldap3.MODIFY_ADD, ["CN=jdoe,..."])]}``.
        """
        conn = self._conn
        self._guard(lambda: conn.modify(dn, {k: list(v) for k, v in changes.items()}))
        return self._checked(f"modify {dn}", conn.result, tolerate)

    def add(self, dn: str, object_class: Sequence[str], attributes: Mapping[str, Any]) -> str:
        """Create ``dn``; raise :class:`LDAPOperationError` (``entryAlreadyExists``, ...)."""
        conn = self._conn
        self._guard(lambda: conn.add(dn, list(object_class), dict(attributes)))
        return self._checked(f"add {dn}", conn.result, ())

    def delete(self, dn: str) -> str:
        conn = self._conn
        self._guard(lambda: conn.delete(dn))
        return self._checked(f"delete {dn}", conn.result, ())

    def rename(self, dn: str, new_rdn: str) -> str:
        """Give ``dn`` a new RDN (``CN=New Name``) in the same container."""
        conn = self._conn
        self._guard(lambda: conn.modify_dn(dn, new_rdn))
        return self._checked(f"rename {dn}", conn.result, ())

    def _checked(self, what: str, result: Mapping[str, Any], tolerate: Iterable[str]) -> str:
        description = str(result.get("description"))
        if description == "success" or description in set(tolerate):
            return description
        raise self._operation_error(what, result)

    def _operation_error(self, what: str, result: Mapping[str, Any]) -> LDAPOperationError:
        description = str(result.get("description"))
        detail = str(result.get("message") or "").strip() or "no detail"
        hint = {
            "insufficientAccessRights": "grant the bind account the right to do this",
            "noSuchObject": "check that the DN exists",
            "sizeLimitExceeded": "narrow the search",
        }.get(description, "see the server's message")
        return LDAPOperationError(
            f"{what} failed on {self.settings.url}: {description} ({detail}); {hint}",
            description,
        )

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(ldap3_errors.LDAPException):  # the socket is gone either way
            self._conn.unbind()

    def __enter__(self) -> LDAPConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LDAPPool:
    """Up to ``size`` bound connections to one directory, opened as the work needs them::

        with LDAPPool(settings, size=4) as pool:
            domain = pool.run(lambda conn: resolve_domain(conn, "NFON"))
            pages = pool.map(search_batch, batches)   # at most 4 searches in flight at once

    Each connection serves one request at a time; a pool of a few keeps the directory busy
    while this process decodes the answers (as ``--parallelism`` does for hosts).
    """

    def __init__(self, settings: LDAPSettings, size: int = 4) -> None:
        self.settings = settings
        self.size = max(1, size)
        self._idle: list[LDAPConnection] = []
        self._opened: list[LDAPConnection] = []
        self._lock = threading.Lock()

    def run(self, work: Callable[[LDAPConnection], R]) -> R:
        """``work(conn)`` on an idle connection (a new one when none is idle)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = LDAPConnection.open(self.settings)
            with self._lock:
                self._opened.append(conn)
        try:
            return work(conn)
        finally:
            with self._lock:
                self._idle.append(conn)

    def map(self, work: Callable[[LDAPConnection, T], R], items: Sequence[T]) -> list[R]:
        """``work(conn, item)`` for every item, on at most ``size`` connections at once."""

        def one(item: T) -> R:
            return self.run(lambda conn: work(conn, item))

        if len(items) < 2 or self.size == 1:
            return [one(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.size, len(items))) as executor:
            return list(executor.map(one, items))

    @property
    def operations(self) -> int:
        """LDAP requests sent so far on all of the pool's connections."""
        return sum(conn.operations for conn in self._opened)

    def close(self) -> None:
        for conn in self._opened:
            conn.close()
        self._opened.clear()
        self._idle.clear()

    def __enter__(self) -> LDAPPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def dn_key(dn: str) -> str:
    """A DN in a form fit for comparison: AD compares DNs case-insensitively, ignoring spacing.

    A DN without escapes, quotes or multi-valued RDNs (nearly all) is split directly, which
    gives what the full parse gives at a fraction of its cost (plans compute thousands).
    """
    if not _DN_SPECIAL.search(dn):
        pairs = [part.partition("=") for part in dn.split(",")]
        if all(sep and attr.strip() and "=" not in value for attr, sep, value in pairs):
            return ",".join(f"{a.strip().lower()}={v.strip().lower()}" for a, _, v in pairs)
    try:
        parts = parse_dn(dn, strip=True)
    except ldap3_errors.LDAPInvalidDnError:
        return dn.lower()
    return ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)


_DN_SPECIAL = re.compile(r'[\\"+;<>#]')  # escapes, quoting, multi-valued RDNs, old separators


def _find_range(entry: LDAPEntry, attribute: str) -> tuple[str | None, Sequence[bytes]]:
    """The ``attr;range=a-b`` slice in ``entry`` (the plain attribute when no range came back)."""
    prefix = f"{attribute.lower()};range="
    for name, values in entry.values.items():
        if name.startswith(prefix):
            return name, values
    return None, entry.values.get(attribute.lower(), ())


def _socket_reason(text: str) -> str:
    """The OS reason inside ldap3's 'socket connection error while opening: [Errno 111] ...'."""
    for reason in (
        "Connection refused",
        "timed out",
        "No route to host",
        "Name or service not known",
    ):
        if reason.lower() in text.lower():
            return reason.lower()
    if "invalid server address" in text:
        return "the host name does not resolve"
    return text
