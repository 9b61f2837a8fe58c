"""Test support for the NFON CTI API: NFON's OpenAPI document as a contract, and lab fixtures.

NFON publishes the document in its CTI-API repository (NFON-AG/CTI-API on GitHub); it is read
from outside the repository (:mod:`tests.support.reference`) and never copied into the project.
Every request a client sends and every answer the simulator gives is checked against it with
openapi-core, after the adjustments listed in :data:`SPEC_VS_REALITY` (made in memory, the file
stays as NFON published it).

Fixtures (register with ``pytest_plugins = ["tests.support.cti_api"]``):

    cti_spec         the document as a dict (fails when missing under CI=true, else skips)
    cti_contract     a :class:`CTIContract` built from it
    cti_tls          a lab CA and a server certificate for loopback (provisioner.lab.tls)
    cti_trust        a client TLS context that trusts that CA
    cti_sim          a running TLS :class:`CTIAPISimulator` with tenants K6732 and K4711;
                     every answer it gave is checked against the contract at teardown
    make_cti_client  ``make_cti_client("K6732")``: a CTIClient on the simulator whose every
                     request and answer is checked on the wire

The simulator's and the client's own tests do not need the document: outside CI, without it,
they run with no contract check and one warning says so; under CI the document is required.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from provisioner import __version__
from provisioner.lab.cti_api import BASE_PATH, PBX, CTIAPISimulator, RecordedRequest
from provisioner.lab.tls import LabTLS, ensure_lab_tls
from provisioner.secrets import Secret
from provisioner.transports.cti_api import CTIClient
from tests.support.ci import in_ci
from tests.support.reference import CTI_API_DOCUMENT, reference_dir, reference_document

# Where NFON's document and NFON's service (as NFON's own prose describes it) disagree, and how
# the contract below bridges it. Each entry is applied in reality_overlay() or CTIContract.
SPEC_VS_REALITY: tuple[str, ...] = (
    "servers: the document names only https://providersupportdata.cloud-cfg.com/{version}; the "
    "simulator serves the same /v1 base path on 127.0.0.1, so its URLs are mapped onto NFON's "
    "server before matching.",
    "error bodies: /login 400/401 and /extensions/phone/data 400/404/405 declare `content: {}` "
    "and components/responses/Unauthorized declares no content, while NFON documents every error "
    'as {"error": "..."} with X-Request-Id; those responses get the `error` schema and header.',
    "undocumented statuses: any bearer call answers 401 once its token expired or was revoked, and "
    "any call can answer 500, but /extensions/phone/data lists no 401 and /login, "
    "/.well-known/jwks.json and /extensions/phone/data list no 500; they get the shared "
    "Unauthorized and ServerError responses.",
    "event streams: a text/event-stream answer is a stream of `data: <json>` events that the "
    "document draws as a JSON array (as it says itself); the contract collects the events into "
    "that array before checking it.",
    "tightened on purpose: properties the document does not name are rejected, every documented "
    "response property is required, every answer must carry X-Request-Id, and every request must "
    "carry User-Agent `provisioner/<version> (<K-account>)`.",
)

NFON_SERVER = "https://providersupportdata.cloud-cfg.com/v1"


def load_cti_spec(directory: Path | None = None) -> dict[str, Any]:
    """NFON's OpenAPI document; missing means FAIL under ``CI=true`` and skip elsewhere."""
    path = reference_document(CTI_API_DOCUMENT, directory)
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def reality_overlay(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of NFON's document with the error-response gaps of :data:`SPEC_VS_REALITY` filled."""
    document = copy.deepcopy(spec)
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/error"}}}
    request_id = {"X-Request-Id": {"schema": {"type": "string"}}}
    document["components"]["responses"]["Unauthorized"]["content"] = error_content
    for operations in document["paths"].values():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45" and response.get("content") == {}:
                    response["content"] = error_content
                    response.setdefault("headers", request_id)
            is_login = method in ("post", "put") and operation.get("operationId") in (
                "createToken",
                "refreshAccessToken",
            )
            if "security" in operation or is_login:
                responses.setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
            responses.setdefault("500", {"$ref": "#/components/responses/ServerError"})
    return document


def _sse_events(value: bytes, **_parameters: str) -> list[Any]:
    """``data: {...}\\n\\n`` events as the JSON array the document draws."""
    events = []
    for block in value.decode("utf-8").split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in block.splitlines() if line.startswith("data:")
        ]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


@dataclass
class _Request:
    """A request in the shape openapi-core reads."""

    host_url: str
    path: str
    method: str
    body: bytes | None
    content_type: str
    parameters: RequestParameters


@dataclass
class _Response:
    status_code: int
    headers: Headers
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Exchange:
    """One request and its answer, from the client's wire or the simulator's record."""

    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    @classmethod
    def from_record(cls, base_url: str, record: RecordedRequest) -> Exchange:
        origin = base_url.removesuffix(BASE_PATH)
        query = f"?{record.query}" if record.query else ""
        return cls(
            method=record.method,
            url=f"{origin}{record.path}{query}",
            request_headers=record.headers,
            request_body=record.body,
            status=record.status or 0,
            response_headers=record.response_headers,
            response_body=record.response_body,
        )


class CTIContract:
    """NFON's CTI API document, adjusted per :data:`SPEC_VS_REALITY`, as a checker of traffic.

    Each check returns a list of problems, empty when the exchange keeps the contract::

        ["request POST /v1/login: InvalidRequestBody: ... ('extra' was unexpected)"]
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        config = Config(
            extra_media_type_deserializers={"text/event-stream": _sse_events},
            additional_properties_default_policy="forbid",
            response_properties_default_policy="required",
        )
        self.api = OpenAPI.from_dict(reality_overlay(spec), config=config)
        self.paths = {path: set(ops) for path, ops in spec["paths"].items()}

    def documents(self, exchange: Exchange, base_url: str) -> bool:
        """Whether the document has an operation for this method and path."""
        path, base_path = urlsplit(exchange.url).path, urlsplit(base_url).path
        if not path.startswith(base_path + "/"):
            return False
        return exchange.method.lower() in self.paths.get(path[len(base_path) :], set())

    def request_problems(self, exchange: Exchange, base_url: str) -> list[str]:
        request = self._request(exchange, base_url)
        problems = [_explain(e) for e in self.api.iter_request_errors(request)]
        user_agent = _header(exchange.request_headers, "User-Agent")
        if not re.fullmatch(rf"provisioner/{re.escape(__version__)} \(K\w+\)", user_agent):
            problems.append(f"User-Agent {user_agent!r} is not provisioner/<version> (<K-account>)")
        return [f"request {exchange.method} {urlsplit(exchange.url).path}: {p}" for p in problems]

    def response_problems(self, exchange: Exchange, base_url: str) -> list[str]:
        request = self._request(exchange, base_url)
        headers = Headers(list(exchange.response_headers.items()))
        response = _Response(
            status_code=exchange.status,
            headers=headers,
            content_type=headers.get("Content-Type", ""),
            data=exchange.response_body,
        )
        problems = [_explain(e) for e in self.api.iter_response_errors(request, response)]
        if not headers.get("X-Request-Id"):
            problems.append("no X-Request-Id header")
        where = f"{exchange.method} {urlsplit(exchange.url).path} -> {exchange.status}"
        return [f"answer to {where}: {p}" for p in problems]

    def simulator_problems(self, sim: CTIAPISimulator, *, requests: bool = False) -> list[str]:
        """Check every answer the simulator gave (and, if asked, every request it got).

        Paths the document does not have (404, 405 answers) must still be documented errors.
        """
        problems: list[str] = []
        for record in sim.requests:
            if record.status is None:  # a deliberately reset connection: no answer to check
                continue
            exchange = Exchange.from_record(sim.base_url, record)
            if self.documents(exchange, sim.base_url):
                problems += self.response_problems(exchange, sim.base_url)
                if requests:
                    problems += self.request_problems(exchange, sim.base_url)
            else:
                problems += _undocumented_answer_problems(exchange)
        return problems

    def _request(self, exchange: Exchange, base_url: str) -> _Request:
        # The simulator stands in for NFON's server (SPEC_VS_REALITY, servers).
        url = exchange.url
        if url.startswith(base_url):
            url = NFON_SERVER + url[len(base_url) :]
        parts = urlsplit(url)
        headers = Headers(list(exchange.request_headers.items()))
        return _Request(
            host_url=f"{parts.scheme}://{parts.netloc}",
            path=parts.path,
            method=exchange.method.lower(),
            body=exchange.request_body or None,
            content_type=headers.get("Content-Type", ""),
            parameters=RequestParameters(
                query=ImmutableMultiDict(parse_qs(parts.query)),
                header=headers,
                cookie=ImmutableMultiDict(),
            ),
        )


def _undocumented_answer_problems(exchange: Exchange) -> list[str]:
    where = f"answer to {exchange.method} {urlsplit(exchange.url).path} -> {exchange.status}"
    try:
        body = json.loads(exchange.response_body)
    except ValueError:
        body = None
    problems = []
    if exchange.status < 400 or not (isinstance(body, dict) and isinstance(body.get("error"), str)):
        problems.append(f'{where}: not in the document, so it must be an {{"error": ...}} answer')
    if not _header(exchange.response_headers, "X-Request-Id"):
        problems.append(f"{where}: no X-Request-Id header")
    return problems


def _explain(error: BaseException) -> str:
    parts = [f"{type(error).__name__}: {error}"]
    cause = error.__cause__
    while cause is not None:
        parts.append(f"{type(cause).__name__}: {cause}")
        parts += [getattr(e, "message", str(e)) for e in getattr(cause, "schema_errors", ())]
        cause = cause.__cause__
    return " / ".join(parts)


def _header(headers: dict[str, str], name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")


class ValidatingTransport(httpx.BaseTransport):
    """Checks each request and answer on the client's wire against the contract, then passes
    the answer on; the first problem fails the test where it happened (AssertionError)."""

    def __init__(self, inner: httpx.BaseTransport, contract: CTIContract, base_url: str) -> None:
        self.inner = inner
        self.contract = contract
        self.base_url = base_url
        self.problems: list[str] = []
        self.checked = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request_body = request.read()
        response = self.inner.handle_request(request)
        try:
            body = response.read()
        finally:
            response.close()
        exchange = Exchange(
            method=request.method,
            url=str(request.url),
            request_headers=dict(request.headers.items()),
            request_body=request_body,
            status=response.status_code,
            response_headers=dict(response.headers.items()),
            response_body=body,
        )
        problems = self.contract.request_problems(exchange, self.base_url)
        problems += self.contract.response_problems(exchange, self.base_url)
        self.checked += 1
        if problems:
            self.problems += problems
            raise AssertionError("CTI API contract broken:\n  " + "\n  ".join(problems))
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, request=request
        )

    def close(self) -> None:
        self.inner.close()


def lab_pbxs() -> list[PBX]:
    """Two tenants with overlapping extension numbers, so a mix-up would show."""
    return [
        PBX(
            "K6732",
            "cti-pass-K6732-7f3a9c",
            [
                {"number": "100", "name": "office"},
                {"number": "101", "name": "Reception"},
                {"number": "1254", "name": "Marius Mauersberger"},
            ],
        ),
        PBX(
            "K4711",
            "cti-pass-K4711-b81e04",
            [{"number": "100", "name": "Lager"}, {"number": "200", "name": "Buchhaltung"}],
        ),
    ]


@pytest.fixture(scope="session")
def cti_spec() -> dict[str, Any]:
    return load_cti_spec()


@pytest.fixture(scope="session")
def cti_contract(cti_spec: dict[str, Any]) -> CTIContract:
    return CTIContract(cti_spec)


@pytest.fixture(scope="session")
def cti_signing_key() -> rsa.RSAPrivateKey:
    # One RSA key per session: generating one per simulator costs ~0.1 s each.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def cti_tls(tmp_path_factory: pytest.TempPathFactory) -> LabTLS:
    return ensure_lab_tls(tmp_path_factory.mktemp("cti-tls"))


@pytest.fixture(scope="session")
def cti_trust(cti_tls: LabTLS) -> ssl.SSLContext:
    """A client TLS context that trusts the lab CA (and nothing else)."""
    return ssl.create_default_context(cafile=str(cti_tls.ca_file))


@pytest.fixture(scope="session")
def cti_contract_if_available() -> CTIContract | None:
    """The contract, or None outside CI when NFON's document is missing (with one warning)."""
    if in_ci() or (reference_dir() / CTI_API_DOCUMENT.file).is_file():
        return CTIContract(load_cti_spec())
    warnings.warn(
        f"{CTI_API_DOCUMENT.title} is missing in {reference_dir()}: the CTI API simulator and "
        "client tests run without checking the traffic against it",
        stacklevel=1,
    )
    return None


@pytest.fixture
def cti_sim(
    cti_contract_if_available: CTIContract | None,
    cti_signing_key: rsa.RSAPrivateKey,
    cti_tls: LabTLS,
) -> Iterator[CTIAPISimulator]:
    sim = CTIAPISimulator(
        lab_pbxs(), tls=(cti_tls.cert_file, cti_tls.key_file), signing_key=cti_signing_key
    )
    with sim:
        yield sim
    if cti_contract_if_available is not None:
        problems = cti_contract_if_available.simulator_problems(sim)
        assert not problems, "the simulator broke NFON's contract:\n  " + "\n  ".join(problems)


@dataclass
class ClientFactory:
    """Makes CTIClients on the simulator with a contract-checking transport; closes them after."""

    sim: CTIAPISimulator
    contract: CTIContract | None
    trust: ssl.SSLContext
    transports: list[ValidatingTransport] = field(default_factory=list)
    clients: list[CTIClient] = field(default_factory=list)

    def __call__(self, k_account: str, password: str | None = None, **options: Any) -> CTIClient:
        transport: httpx.BaseTransport = httpx.HTTPTransport(verify=self.trust)
        if self.contract is not None:
            transport = ValidatingTransport(transport, self.contract, self.sim.base_url)
            self.transports.append(transport)
        options.setdefault("clock", self.sim.clock.now)
        options.setdefault("sleep", _no_sleep)
        client = CTIClient(
            k_account,
            Secret(password if password is not None else self.sim.pbx(k_account).password),
            base_url=self.sim.base_url,
            transport=transport,
            **options,
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _no_sleep(_seconds: float) -> None:
    """Backoff without waiting: tests never depend on time passing."""


@pytest.fixture
def make_cti_client(
    cti_sim: CTIAPISimulator,
    cti_contract_if_available: CTIContract | None,
    cti_trust: ssl.SSLContext,
) -> Iterator[Callable[..., CTIClient]]:
    factory = ClientFactory(cti_sim, cti_contract_if_available, cti_trust)
    yield factory
    factory.close()
    problems = [p for t in factory.transports for p in t.problems]
    assert not problems, "a client broke NFON's contract:\n  " + "\n  ".join(problems)
