"""A simulated NFON CTI API on 127.0.0.1, for the lab and the tests.

It answers the part of NFON's OpenAPI document the provisioner uses, below the same ``/v1``
base path as ``https://providersupportdata.cloud-cfg.com/v1``::

    POST /v1/login                    {"username": "K6732", "password": "..."} -> two RS512 JWTs
    PUT  /v1/login                    refresh token as Bearer -> a new pair
    GET  /v1/.well-known/jwks.json    the public signing key
    GET  /v1/extensions/phone/data    [{"uuid": "100@K6732", "extension_number": "100",
                                        "name": "office"}]
    GET  /v1/extensions/phone/states  a JSON snapshot (Accept: application/json) or an SSE stream

Every answer carries ``X-Request-Id``; every error is ``{"error": "..."}``. The PBX data is live:
tests change it behind the provisioner's back, as an NFON admin would::

    pbx = PBX("K6732", "lab-password", [{"number": "100", "name": "office"}])
    with CTIAPISimulator([pbx], tls=(cert_file, key_file)) as sim:
        sim.base_url                    # "https://127.0.0.1:40123/v1"
        pbx.add_extension("101", "Reception")
        sim.clock.advance(301)          # every access token issued so far has expired
        sim.fail_next(2)                # the next two requests answer 500
        sim.stall_next(1, seconds=0.5)  # the next answer comes late
        sim.outage("K6732", mode="reset")
        sim.count("K6732", path="/extensions/phone/data")
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import socketserver
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

log = logging.getLogger(__name__)

BASE_PATH = "/v1"
ACCESS_TOKEN_LIFETIME = 300.0  # seconds, as NFON documents
# GUESS: NFON does not publish the refresh token's lifetime (not in its CTI API OpenAPI document
# nor in the README of github.com/NFON-AG/CTI-API).
REFRESH_TOKEN_LIFETIME = 3600.0
ISSUER = "nfon-cti-api-lab"

OutageMode = Literal["error", "reset"]


class ExtensionRecord(TypedDict):
    """One extension of a PBX: ``{"number": "100", "name": "office"}``.

    ``line`` and ``presence`` are optional and feed the states snapshot (defaults: idle, available).
    """

    number: str
    name: str
    line: NotRequired[str]
    presence: NotRequired[str]


@dataclass
class PBX:
    """One tenant's PBX as the CTI API sees it; the lab's Windows host derives TSP lines from it.

    >>> pbx = PBX("K6732", "lab-password", [{"number": "100", "name": "office"}])
    >>> pbx.add_extension("101", "Reception"); [e["number"] for e in pbx.extensions]
    ['100', '101']
    """

    k_account: str
    password: str = field(repr=False)
    extensions: list[ExtensionRecord] = field(default_factory=list)

    def add_extension(self, number: str, name: str) -> None:
        if any(e["number"] == number for e in self.extensions):
            raise ValueError(f"{self.k_account} already has extension {number}")
        self.extensions.append({"number": number, "name": name})

    def remove_extension(self, number: str) -> None:
        kept = [e for e in self.extensions if e["number"] != number]
        if len(kept) == len(self.extensions):
            raise ValueError(f"{self.k_account} has no extension {number}")
        self.extensions[:] = kept

    def extension(self, number: str) -> ExtensionRecord:
        for record in self.extensions:
            if record["number"] == number:
                return record
        raise ValueError(f"{self.k_account} has no extension {number}")


class LabClock:
    """Real time plus an offset that tests move: ``clock.advance(301)`` expires access tokens.

    Hand ``clock.now`` to a client so that client and simulator agree on the time.
    """

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def set(self, now: float) -> None:
        with self._lock:
            self._offset = now - time.time()


@dataclass
class RecordedRequest:
    """One request as the simulator received it, and what it answered (``status`` None: reset)."""

    method: str
    path: str  # as received, e.g. "/v1/extensions/phone/data"
    query: str
    headers: dict[str, str]
    body: bytes
    tenant: str | None  # the K-account the request claims, from the login body or the token
    request_id: str
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""


@dataclass
class _PlannedFailure:
    remaining: int
    status: int  # 0: answer normally, after stall_seconds
    error: str
    k_account: str | None
    path: str | None
    stall_seconds: float = 0.0


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    close: bool = False
    extra_headers: tuple[tuple[str, str], ...] = ()


def _json_reply(status: int, value: Any) -> _Reply:
    return _Reply(status, json.dumps(value).encode())


def _error_reply(status: int, text: str, **kw: Any) -> _Reply:
    return _Reply(status, json.dumps({"error": text}).encode(), **kw)


class CTIAPISimulator:
    """A threaded HTTP(S) server on 127.0.0.1 that behaves like the NFON CTI API for some PBXs."""

    def __init__(
        self,
        pbxs: Iterable[PBX] = (),
        *,
        tls: tuple[Path, Path] | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        clock: LabClock | None = None,
        access_token_lifetime: float = ACCESS_TOKEN_LIFETIME,
        refresh_token_lifetime: float = REFRESH_TOKEN_LIFETIME,
        port: int = 0,
    ) -> None:
        """``tls`` is a (certificate file, key file) pair; without it the server speaks HTTP."""
        self.clock = clock or LabClock()
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self._pbxs = {p.k_account: p for p in pbxs}
        self._key = signing_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        self._kid = hashlib.sha256(public_jwk["n"].encode()).hexdigest()[:32]
        self._jwk = {
            "kty": "RSA",
            "n": public_jwk["n"],
            "e": public_jwk["e"],
            "alg": "RS512",
            "kid": self._kid,
            "use": "sig",
        }
        self._tls = tls
        self._port = port
        self._lock = threading.Lock()
        self._live_tokens: dict[str, str] = {}  # jti -> K-account
        self._records: list[RecordedRequest] = []
        self._planned: list[_PlannedFailure] = []
        self._outages: dict[str, OutageMode] = {}
        self._server: _Server | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> CTIAPISimulator:
        if self._server is not None:
            raise RuntimeError("the CTI API simulator is already running")
        context = None
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
        self._server = _Server(("127.0.0.1", self._port), self, context)
        self._bound_port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits at most this long
            name="cti-api-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the handler threads
        thread.join()
        self._server = self._thread = None

    def __enter__(self) -> CTIAPISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens on (after stop(): the port it listened on, for the records)."""
        if self._bound_port is None:
            raise RuntimeError("the CTI API simulator has not been started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{BASE_PATH}"

    # -- PBX data ---------------------------------------------------------------------------

    def add_pbx(self, pbx: PBX) -> None:
        with self._lock:
            self._pbxs[pbx.k_account] = pbx

    def remove_pbx(self, k_account: str) -> None:
        with self._lock:
            del self._pbxs[k_account]

    def pbx(self, k_account: str) -> PBX:
        with self._lock:
            return self._pbxs[k_account]

    def set_password(self, k_account: str, password: str) -> None:
        """Change a CTI API password; tokens issued before stay valid until they expire."""
        self.pbx(k_account).password = password

    def forget_tokens(self, k_account: str | None = None) -> None:
        """Invalidate issued tokens (of one tenant, or all), as a backend restart would."""
        with self._lock:
            for jti, owner in list(self._live_tokens.items()):
                if k_account is None or owner == k_account:
                    del self._live_tokens[jti]

    # -- fault injection and records -------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        error: str = "simulated backend failure",
        k_account: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` and ``{"error": error}``.

        ``path`` is as in the OpenAPI document (``"/login"``); ``k_account`` limits it to a tenant.
        """
        with self._lock:
            self._planned.append(_PlannedFailure(count, status, error, k_account, path))

    def stall_next(
        self,
        count: int = 1,
        *,
        seconds: float,
        k_account: str | None = None,
        path: str | None = None,
    ) -> None:
        """Hold the next ``count`` matching answers for ``seconds``, so client timeouts fire.

        stop() waits for stalled answers: keep ``seconds`` short.
        """
        with self._lock:
            self._planned.append(_PlannedFailure(count, 0, "", k_account, path, seconds))

    def outage(self, k_account: str, *, mode: OutageMode = "error") -> None:
        """Fail all requests of a tenant: ``error`` answers 500, ``reset`` drops the connection."""
        with self._lock:
            self._outages[k_account] = mode

    def end_outage(self, k_account: str) -> None:
        with self._lock:
            self._outages.pop(k_account, None)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._records)

    def count(
        self, k_account: str | None = None, *, path: str | None = None, method: str | None = None
    ) -> int:
        """How many requests matched: ``count("K6732", path="/login", method="POST")``."""
        return sum(
            1
            for r in self.requests
            if (k_account is None or r.tenant == k_account)
            and (path is None or r.path == BASE_PATH + path)
            and (method is None or r.method == method)
        )

    def clear_records(self) -> None:
        with self._lock:
            self._records.clear()

    # -- request handling (runs in the server's handler threads) ----------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        target = urlsplit(handler.path)
        headers = dict(handler.headers.items())
        record = RecordedRequest(
            method=method,
            path=target.path,
            query=target.query,
            headers=headers,
            body=body,
            tenant=self._claimed_tenant(target.path, headers, body),
            request_id=uuid.uuid4().hex,
        )
        with self._lock:
            self._records.append(record)
        fault = self._fault_for(record)
        if fault == "reset":
            handler.reset_connection()
            return
        reply = fault or self._route(method, target.path, target.query, headers, body)
        self._send(handler, record, reply)

    def _claimed_tenant(self, path: str, headers: dict[str, str], body: bytes) -> str | None:
        # Unverified: used only to count requests and to aim faults at a tenant.
        if path == BASE_PATH + "/login" and body:
            try:
                username = json.loads(body).get("username")
            except (ValueError, AttributeError):
                return None
            return username if isinstance(username, str) else None
        token = _bearer(headers)
        if token is None:
            return None
        try:
            subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
        except jwt.InvalidTokenError:
            return None
        return subject if isinstance(subject, str) else None

    def _fault_for(self, record: RecordedRequest) -> _Reply | Literal["reset"] | None:
        stall = 0.0
        with self._lock:
            mode = self._outages.get(record.tenant) if record.tenant else None
            if mode == "reset":
                return "reset"
            if mode == "error":
                return _error_reply(500, f"service unavailable for {record.tenant}")
            for plan in self._planned:
                if plan.remaining <= 0:
                    continue
                if plan.k_account is not None and plan.k_account != record.tenant:
                    continue
                if plan.path is not None and BASE_PATH + plan.path != record.path:
                    continue
                plan.remaining -= 1
                if plan.status:
                    return _error_reply(plan.status, plan.error)
                stall = plan.stall_seconds
                break
            self._planned = [p for p in self._planned if p.remaining > 0]
        time.sleep(stall)
        return None

    def _route(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> _Reply:
        routes: dict[str, dict[str, Callable[[], _Reply]]] = {
            "/login": {
                "POST": lambda: self._login(body),
                "PUT": lambda: self._refresh(headers),
            },
            "/.well-known/jwks.json": {"GET": lambda: _json_reply(200, {"keys": [self._jwk]})},
            "/extensions/phone/data": {"GET": lambda: self._extension_data(headers)},
            "/extensions/phone/states": {"GET": lambda: self._states(headers, query)},
        }
        endpoint = path[len(BASE_PATH) :] if path.startswith(BASE_PATH + "/") else None
        methods = routes.get(endpoint or "")
        if methods is None:
            return _error_reply(404, f"no such resource: {path}")
        action = methods.get(method)
        if action is None:
            allow = (("Allow", ", ".join(methods)),)
            return _error_reply(405, f"method {method} not allowed here", extra_headers=allow)
        return action()

    def _login(self, body: bytes) -> _Reply:
        try:
            credentials = json.loads(body)
        except ValueError:
            return _error_reply(400, "bad request body: not JSON")
        if not (
            isinstance(credentials, dict)
            and isinstance(credentials.get("username"), str)
            and isinstance(credentials.get("password"), str)
        ):
            return _error_reply(400, "bad request body: username and password are required")
        with self._lock:
            pbx = self._pbxs.get(credentials["username"])
        if pbx is None or not hmac.compare_digest(
            pbx.password.encode(), credentials["password"].encode()
        ):
            return _error_reply(401, "invalid user credentials")
        return _json_reply(200, self._issue_pair(pbx.k_account))

    def _refresh(self, headers: dict[str, str]) -> _Reply:
        pbx = self._authenticate(headers, "refresh")
        if isinstance(pbx, _Reply):
            return pbx
        return _json_reply(200, self._issue_pair(pbx.k_account))

    def _extension_data(self, headers: dict[str, str]) -> _Reply:
        pbx = self._authenticate(headers, "access")
        if isinstance(pbx, _Reply):
            return pbx
        return _json_reply(
            200,
            [
                {
                    "uuid": f"{e['number']}@{pbx.k_account}",
                    "extension_number": e["number"],
                    "name": e["name"],
                }
                for e in list(pbx.extensions)
            ],
        )

    def _states(self, headers: dict[str, str], query: str) -> _Reply:
        pbx = self._authenticate(headers, "access")
        if isinstance(pbx, _Reply):
            return pbx
        wanted = parse_qs(query).get("extension")
        updated = datetime.fromtimestamp(self.clock.now(), UTC).isoformat(timespec="microseconds")
        states = [
            {
                "extension": e["number"],
                "customer": pbx.k_account,
                "line": e.get("line", "idle"),
                "presence": e.get("presence", "available"),
                "updated": updated,
            }
            for e in list(pbx.extensions)
            if wanted is None or e["number"] in wanted
        ]
        if "application/json" in _header(headers, "Accept"):
            return _json_reply(200, states)
        # NFON streams changes after this bootstrap; the lab has none to stream, so it ends here.
        events = b"".join(b"data: " + json.dumps(s).encode() + b"\n\n" for s in states)
        return _Reply(200, events, content_type="text/event-stream", close=True)

    def _authenticate(self, headers: dict[str, str], kind: str) -> PBX | _Reply:
        token = _bearer(headers)
        if token is None:
            return _error_reply(401, "missing bearer token")
        try:
            claims = jwt.decode(
                token,
                self._key.public_key(),
                algorithms=["RS512"],
                issuer=ISSUER,
                # Expiry is checked below against the lab clock, not the machine's.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["sub", "typ", "exp", "jti"],
                },
            )
        except jwt.InvalidTokenError:
            return _error_reply(401, "invalid token")
        if claims["typ"] != kind:
            return _error_reply(401, f"not a token of kind {kind}")
        if float(claims["exp"]) <= self.clock.now():
            return _error_reply(401, "token expired")
        with self._lock:
            owner = self._live_tokens.get(claims["jti"])
            pbx = self._pbxs.get(claims["sub"])
        if owner != claims["sub"] or pbx is None:
            return _error_reply(401, "unknown token")
        return pbx

    def _issue_pair(self, k_account: str) -> dict[str, str]:
        return {
            "access-token": self._issue(k_account, "access", self.access_token_lifetime),
            "refresh-token": self._issue(k_account, "refresh", self.refresh_token_lifetime),
        }

    def _issue(self, k_account: str, kind: str, lifetime: float) -> str:
        now = int(self.clock.now())
        jti = uuid.uuid4().hex
        claims = {
            "iss": ISSUER,
            "sub": k_account,
            "typ": kind,
            "iat": now,
            "exp": now + int(lifetime),
            "jti": jti,
        }
        with self._lock:
            self._live_tokens[jti] = k_account
        return jwt.encode(claims, self._key, algorithm="RS512", headers={"kid": self._kid})

    def _send(self, handler: _Handler, record: RecordedRequest, reply: _Reply) -> None:
        headers = {
            "Content-Type": reply.content_type,
            "Content-Length": str(len(reply.body)),
            "X-Request-Id": record.request_id,
            **dict(reply.extra_headers),
        }
        if reply.close:
            headers["Connection"] = "close"
            handler.close_connection = True
        record.status = reply.status
        record.response_headers = headers
        record.response_body = reply.body
        handler.send_response(reply.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(reply.body)


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, token = _header(headers, "Authorization").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as NFON's load balancer does
    disable_nagle_algorithm = True  # otherwise each request costs ~40 ms (Nagle + delayed ACK)
    timeout = 10  # idle keep-alive connections end; stop() ends them at once
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            # Handshake here, in the handler thread, so one bad client cannot stall accept().
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def do_GET(self) -> None:
        self.server.sim._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.sim._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.sim._handle(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.sim._handle(self, "DELETE")

    def do_PATCH(self) -> None:
        self.server.sim._handle(self, "PATCH")

    def reset_connection(self) -> None:
        """Drop the connection with a TCP RST and no answer, as a crashed backend would."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        # The request record replaces an access log; stderr noise would only hide test output.
        log.debug("cti-api-sim: " + format, *args)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    # TCPServer, not http.server.HTTPServer: that one resolves the host name on bind (slow).
    allow_reuse_address = True
    daemon_threads = False  # server_close() joins the handler threads: nothing is left behind

    def __init__(
        self, address: tuple[str, int], sim: CTIAPISimulator, context: ssl.SSLContext | None
    ) -> None:
        self.sim = sim
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler, bind_and_activate=False)
        if context is not None:
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads that wait on idle keep-alive connections."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or rejects our certificate is normal in the tests; log quietly.
        log.debug("cti-api-sim: connection from %s failed", client_address, exc_info=True)
