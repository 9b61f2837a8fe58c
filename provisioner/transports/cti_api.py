"""Client for the NFON CTI API: which lines exist in a tenant's PBX, and do its credentials work.

One client per tenant (K-account)::

    with CTIClient("K6732", Secret("...")) as cti:
        cti.extensions()  # [Extension(uuid="100@K6732", number="100", name="office"), ...]
        cti.states()      # [LineState(extension="100", customer="K6732", line="idle",
                          #            presence="available")]

Authentication as NFON documents it: ``POST /login`` returns an access token (5 minutes) and a
refresh token. The client renews the pair with ``PUT /login`` shortly before the access token
expires, and logs in again once when a call answers 401. GETs are tried up to 3 times, with
backoff, on 5xx answers and connection errors; POST and PUT are never repeated blindly.
The password and the tokens never appear in exception text or logs.
"""

from __future__ import annotations

import logging
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from provisioner import __version__
from provisioner.errors import TransportError
from provisioner.secrets import Secret, redact

log = logging.getLogger(__name__)

NFON_BASE_URL = "https://providersupportdata.cloud-cfg.com/v1"
ACCESS_TOKEN_LIFETIME = 300.0  # seconds; used when a token does not say when it expires
REFRESH_MARGIN = 30.0  # renew this many seconds before a token expires
GET_ATTEMPTS = 3
ERROR_TEXT_LIMIT = 200  # characters of NFON's error text quoted in a message


class CTIError(TransportError):
    """Base of the CTI API errors; ``str()`` is one line saying what to fix."""


class CTIAuthError(CTIError):
    """NFON refused the K-account's credentials."""

    def __init__(self, message: str, *, k_account: str) -> None:
        super().__init__(message)
        self.k_account = k_account


class CTIAPIError(CTIError):
    """The CTI API answered with an error (or with something that is not the documented answer)."""

    def __init__(
        self, message: str, *, status: int, error_text: str | None, request_id: str | None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_text = error_text
        self.request_id = request_id


class CTIConnectionError(CTIError):
    """The CTI API could not be reached (DNS, TCP, TLS, timeout, dropped connection)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class CTIInsecureTransportWarning(UserWarning):
    """The client was told to talk to the CTI API without TLS verification."""


@dataclass(frozen=True)
class Extension:
    """A phone extension from ``GET /extensions/phone/data``.

    >>> Extension(uuid="100@K6732", number="100", name="office")
    Extension(uuid='100@K6732', number='100', name='office')
    """

    uuid: str
    number: str
    name: str


@dataclass(frozen=True)
class LineState:
    """A line and presence state from the ``GET /extensions/phone/states`` snapshot.

    ``line`` is one of unknown/offline/idle/ringing/in-use; ``presence`` one of
    offline/available/away/busy/dnd/null.

    >>> LineState(extension="100", customer="K6732", line="idle", presence="available")
    LineState(extension='100', customer='K6732', line='idle', presence='available')
    """

    extension: str
    customer: str
    line: str
    presence: str


@dataclass
class _Tokens:
    access: str
    refresh: str
    access_expires: float  # on the client's clock
    refresh_expires: float | None  # None: unknown, try PUT and fall back to a login


class CTIClient:
    """The NFON CTI API as one tenant sees it. Not thread-safe: one client per tenant and thread.

    ``verify`` is True (system trust), a CA bundle path, or False (an explicit, warned opt-in).
    ``transport`` replaces httpx's network transport and then brings its own TLS settings.
    ``clock``, ``sleep`` and ``retry_backoff`` exist so that tests can move time, not wait.
    """

    def __init__(
        self,
        k_account: str,
        password: Secret,
        *,
        base_url: str = NFON_BASE_URL,
        verify: str | bool = True,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
        retry_backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        allow_insecure: bool = False,
    ) -> None:
        self.k_account = k_account
        self.base_url = base_url.rstrip("/")
        self.calls = 0  # HTTP requests sent, retries included
        self._password = password
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._retry_backoff = retry_backoff
        self._tokens: _Tokens | None = None
        try:
            scheme = httpx.URL(self.base_url).scheme
        except httpx.InvalidURL as exc:
            raise CTIConnectionError(
                f"the CTI API base URL {self.base_url!r} for {k_account} is invalid ({exc})",
                url=self.base_url,
            ) from None
        if scheme not in ("http", "https"):
            raise CTIConnectionError(
                f"the CTI API base URL {self.base_url!r} for {k_account} is not an http(s) URL: "
                f"use {NFON_BASE_URL}",
                url=self.base_url,
            )
        if (verify is False or scheme == "http") and not allow_insecure:
            raise CTIConnectionError(
                f"the CTI API at {self.base_url} for {k_account} is not verified https: use "
                "https:// or set cti_api.allow_insecure: true (labs only)",
                url=self.base_url,
            )
        if verify is False or scheme == "http":
            how = "without TLS" if scheme == "http" else "without TLS certificate verification"
            warnings.warn(
                f"talking to the NFON CTI API at {self.base_url} for {k_account} {how}: "
                "anyone on the network path can read the CTI API password",
                CTIInsecureTransportWarning,
                stacklevel=2,
            )
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=self._ssl_context(verify),
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": f"provisioner/{__version__} ({k_account})"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"CTIClient(k_account={self.k_account!r}, base_url={self.base_url!r})"

    def __enter__(self) -> CTIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tokens = None
        self._http.close()

    # -- public calls -----------------------------------------------------------------------

    def login(self) -> None:
        """Log in with the K-account and CTI API password (``POST /login``)."""
        credentials = {"username": self.k_account, "password": self._password.reveal()}
        response = self._send("POST", "/login", json_body=credentials)
        if response.status_code == 401:
            raise CTIAuthError(
                f"the NFON CTI API refused the login of {self.k_account} (HTTP 401"
                f"{_request_id_note(response)}): check the CTI API password that the "
                f"cti_password reference of {self.k_account} points to",
                k_account=self.k_account,
            )
        self._store_tokens(self._expect_success(response, "POST /login"))

    def extensions(self) -> list[Extension]:
        """The tenant's phone extensions, in NFON's order."""
        data = self._get_json("/extensions/phone/data")
        result = []
        for item in self._expect_list_of_objects(data, "GET /extensions/phone/data"):
            uuid = str(item.get("uuid") or "")
            number = str(item.get("extension_number") or uuid.partition("@")[0])
            if not number:
                raise self._malformed("GET /extensions/phone/data", "an extension without number")
            result.append(
                Extension(
                    uuid=uuid or f"{number}@{self.k_account}",
                    number=number,
                    name=str(item.get("name") or ""),
                )
            )
        return result

    def states(self) -> list[LineState]:
        """A snapshot of every extension's line and presence state."""
        data = self._get_json("/extensions/phone/states")
        return [
            LineState(
                extension=str(item.get("extension") or ""),
                customer=str(item.get("customer") or self.k_account),
                line=str(item.get("line") or "unknown"),
                presence=str(item.get("presence") or "null"),
            )
            for item in self._expect_list_of_objects(data, "GET /extensions/phone/states")
        ]

    # -- tokens -----------------------------------------------------------------------------

    def _access_token(self) -> str:
        now = self._clock()
        tokens = self._tokens
        if tokens is None:
            self.login()
        elif now >= tokens.access_expires - REFRESH_MARGIN:
            if tokens.refresh_expires is None or now < tokens.refresh_expires - REFRESH_MARGIN:
                self._refresh()
            else:
                self.login()
        assert self._tokens is not None
        return self._tokens.access

    def _refresh(self) -> None:
        assert self._tokens is not None
        response = self._send("PUT", "/login", bearer=self._tokens.refresh)
        if response.status_code == 401:
            log.info("CTI API refused the refresh token of %s; logging in again", self.k_account)
            self.login()
            return
        self._store_tokens(self._expect_success(response, "PUT /login"))

    def _store_tokens(self, response: httpx.Response) -> None:
        what = f"{response.request.method} /login"
        body = self._json(response, what)
        access = body.get("access-token") if isinstance(body, dict) else None
        refresh = body.get("refresh-token") if isinstance(body, dict) else None
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
            raise self._malformed(what, "an answer without access-token and refresh-token")
        received = self._clock()
        self._tokens = _Tokens(
            access=access,
            refresh=refresh,
            access_expires=_expiry(access, received) or received + ACCESS_TOKEN_LIFETIME,
            refresh_expires=_expiry(refresh, received),
        )

    # -- HTTP -------------------------------------------------------------------------------

    def _get_json(self, path: str) -> Any:
        response = self._send("GET", path, bearer=self._access_token())
        if response.status_code == 401:
            log.info(
                "CTI API answered 401 to GET %s for %s; logging in again", path, self.k_account
            )
            self.login()
            assert self._tokens is not None
            response = self._send("GET", path, bearer=self._tokens.access)
        return self._json(self._expect_success(response, f"GET {path}"), f"GET {path}")

    def _send(
        self,
        method: str,
        path: str,
        *,
        bearer: str | None = None,
        json_body: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        attempts = GET_ATTEMPTS if method == "GET" else 1
        failure = ""
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self._sleep(self._retry_backoff * 2 ** (attempt - 2))
            self.calls += 1
            try:
                response = self._http.request(method, path, headers=headers, json=json_body)
            except httpx.TransportError as exc:
                # Keep only a description: httpx's exception holds the request and its headers.
                failure = self._describe(exc)
                log.info("CTI API %s %s for %s failed: %s", method, path, self.k_account, failure)
                continue
            log.debug(
                "CTI API %s %s for %s -> HTTP %d%s",
                method,
                path,
                self.k_account,
                response.status_code,
                _request_id_note(response),
            )
            if response.status_code < 500 or attempt == attempts:
                return response
        tries = f" after {attempts} tries" if attempts > 1 else ""
        raise CTIConnectionError(
            f"cannot reach the NFON CTI API at {self.base_url}{path} for {self.k_account}{tries}"
            f" ({failure})",
            url=f"{self.base_url}{path}",
        )

    def _describe(self, exc: httpx.TransportError) -> str:
        text = self._redact(str(exc) or type(exc).__name__)
        if "CERTIFICATE_VERIFY_FAILED" in text or _caused_by(exc, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate not trusted: {text}; check the CA bundle passed as verify "
                "or the system trust store, and that the base URL names the right host"
            )
        if isinstance(exc, httpx.TimeoutException):
            return (
                f"no answer within {self._timeout:g} s; check the network path to the host "
                "and NFON's service status"
            )
        if isinstance(exc, httpx.ConnectError):
            return (
                f"{text}; check the base URL, DNS, and that proxies and firewalls allow "
                "outbound HTTPS to it"
            )
        return f"{text}; the connection dropped: check proxies and NFON's service status"

    def _expect_success(self, response: httpx.Response, what: str) -> httpx.Response:
        if response.is_success:
            return response
        status = response.status_code
        error_text = self._error_text(response)
        quoted = f'"{error_text}"' if error_text else "no error text"
        raise CTIAPIError(
            f"NFON CTI API {what} for {self.k_account} answered HTTP {status} with {quoted}"
            f"{_request_id_note(response)}: {_hint(status)}",
            status=status,
            error_text=error_text,
            request_id=response.headers.get("X-Request-Id"),
        )

    def _error_text(self, response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text = body["error"]
        else:
            text = response.text  # e.g. an HTML page from a proxy
        text = " ".join(self._redact(text).split())
        if len(text) > ERROR_TEXT_LIMIT:
            text = text[: ERROR_TEXT_LIMIT - 3] + "..."
        return text or None

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            content_type = response.headers.get("Content-Type", "no content type")
            raise self._malformed(what, f"a body that is not JSON ({content_type})") from None

    def _expect_list_of_objects(self, data: Any, what: str) -> list[dict[str, Any]]:
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise self._malformed(what, "something other than a list of objects")
        return data

    def _malformed(self, what: str, description: str) -> CTIAPIError:
        return CTIAPIError(
            f"NFON CTI API {what} for {self.k_account} answered with {description}: "
            "check that the base URL points at the CTI API (it ends in /v1)",
            status=200,
            error_text=None,
            request_id=None,
        )

    def _redact(self, text: str) -> str:
        # NFON's error text is quoted to the user: make sure no secret of ours rides along.
        secrets = [self._password.reveal()]
        if self._tokens is not None:
            secrets += [self._tokens.access, self._tokens.refresh]
        return redact(text, secrets)

    def _ssl_context(self, verify: str | bool) -> ssl.SSLContext | bool:
        if not isinstance(verify, str):
            return verify
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise CTIConnectionError(
                f"the CA bundle {verify} for the NFON CTI API ({self.k_account}) cannot be "
                f"loaded ({exc.strerror or exc}): pass a readable PEM file as verify",
                url=self.base_url,
            ) from None


def _expiry(token: str, received: float) -> float | None:
    """When a JWT expires on our clock: ``received + (exp - iat)``, immune to clock skew."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float):
        return None
    if isinstance(iat, int | float):
        return received + (exp - iat)
    return float(exp)


def _request_id_note(response: httpx.Response) -> str:
    request_id = response.headers.get("X-Request-Id")
    return f", X-Request-Id {request_id}" if request_id else ""


def _hint(status: int) -> str:
    if status == 401:
        return "the API refused a freshly issued token; check that the K-account has CTI access"
    if status == 403:
        return "the K-account may lack the CTI API licence (Business Premium tariff)"
    if status == 404:
        return "check that the base URL points at the CTI API (it ends in /v1)"
    if status >= 500:
        return "NFON's service failed; try again later and quote the request id to NFON support"
    return "quote the request id to NFON support"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
