"""The simulated CTI API over real HTTPS, checked against NFON's OpenAPI document.

The ``cti_sim`` fixture checks every answer the simulator gave against the document when the
test ends; tests that send only valid requests also check those requests.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from provisioner import __version__
from provisioner.lab.cti_api import (
    PBX,
    REFRESH_TOKEN_LIFETIME,
    CTIAPISimulator,
)

if TYPE_CHECKING:  # at run time the fixtures bring these; importing here would skip pytest's
    # assertion rewriting of the plugin module
    from tests.support.cti_api import CTIContract


DATA = "/extensions/phone/data"
STATES = "/extensions/phone/states"


@pytest.fixture
def http(cti_sim: CTIAPISimulator, cti_trust: ssl.SSLContext) -> Iterator[httpx.Client]:
    """A plain HTTPS client on the simulator that trusts the lab CA."""
    with httpx.Client(
        base_url=cti_sim.base_url,
        verify=cti_trust,
        headers={"User-Agent": f"provisioner/{__version__} (K6732)"},
    ) as client:
        yield client


def login(http: httpx.Client, sim: CTIAPISimulator, k_account: str = "K6732") -> dict[str, str]:
    response = http.post(
        "/login", json={"username": k_account, "password": sim.pbx(k_account).password}
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, str] = response.json()
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, sim: CTIAPISimulator) -> str:
    """A documented error: the status, ``{"error": text}`` and the recorded X-Request-Id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert response.headers["X-Request-Id"] == sim.requests[-1].request_id
    return str(body["error"])


def test_login_issues_rs512_jwts_that_the_jwks_verifies(
    http: httpx.Client, cti_sim: CTIAPISimulator, cti_contract: CTIContract
) -> None:
    tokens = login(http, cti_sim)
    jwks = http.get("/.well-known/jwks.json").json()

    (jwk,) = jwks["keys"]
    key = jwt.PyJWK(jwk)
    assert (jwk["alg"], jwk["kty"], jwk["use"]) == ("RS512", "RSA", "sig")
    access_header = jwt.get_unverified_header(tokens["access-token"])
    assert (access_header["alg"], access_header["kid"]) == ("RS512", jwk["kid"])
    access = jwt.decode(tokens["access-token"], key.key, algorithms=["RS512"])
    refresh = jwt.decode(tokens["refresh-token"], key.key, algorithms=["RS512"])
    assert (access["sub"], access["typ"], access["exp"] - access["iat"]) == ("K6732", "access", 300)
    assert (refresh["sub"], refresh["typ"]) == ("K6732", "refresh")
    assert refresh["exp"] - refresh["iat"] == REFRESH_TOKEN_LIFETIME
    assert cti_contract.simulator_problems(cti_sim, requests=True) == []


def test_login_errors_are_documented_errors(http: httpx.Client, cti_sim: CTIAPISimulator) -> None:
    password = cti_sim.pbx("K6732").password

    wrong = http.post("/login", json={"username": "K6732", "password": password + "x"})
    assert assert_error(wrong, 401, cti_sim) == "invalid user credentials"
    unknown = http.post("/login", json={"username": "K0000", "password": password})
    assert assert_error(unknown, 401, cti_sim) == "invalid user credentials"
    assert_error(http.post("/login", content=b"username=K6732"), 400, cti_sim)
    assert_error(http.post("/login", json={"username": "K6732"}), 400, cti_sim)
    assert_error(http.post("/login", json=["K6732", password]), 400, cti_sim)


def test_bearer_endpoints_need_a_valid_access_token(
    http: httpx.Client, cti_sim: CTIAPISimulator
) -> None:
    tokens = login(http, cti_sim)
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(tokens["access-token"], options={"verify_signature": False})
    foreign = jwt.encode(claims, foreign_key, algorithm="RS512")
    public_pem = http.get("/.well-known/jwks.json").json()["keys"][0]["n"]
    confused = jwt.encode(claims, public_pem, algorithm="HS512")  # algorithm confusion

    for path in (DATA, STATES):
        assert_error(http.get(path), 401, cti_sim)
        assert_error(http.get(path, headers=bearer("not-a-jwt")), 401, cti_sim)
        assert_error(http.get(path, headers=bearer(tokens["refresh-token"])), 401, cti_sim)
        assert_error(http.get(path, headers=bearer(foreign)), 401, cti_sim)
        assert_error(http.get(path, headers=bearer(confused)), 401, cti_sim)
        assert http.get(path, headers=bearer(tokens["access-token"])).status_code == 200
    assert_error(http.put("/login", headers=bearer(tokens["access-token"])), 401, cti_sim)
    assert_error(http.put("/login"), 401, cti_sim)


def test_a_token_of_one_tenant_cannot_read_another_tenants_data(
    http: httpx.Client, cti_sim: CTIAPISimulator
) -> None:
    first = login(http, cti_sim, "K6732")["access-token"]
    second = login(http, cti_sim, "K4711")["access-token"]

    assert {e["uuid"] for e in http.get(DATA, headers=bearer(first)).json()} == {
        "100@K6732",
        "101@K6732",
        "1254@K6732",
    }
    assert {e["uuid"] for e in http.get(DATA, headers=bearer(second)).json()} == {
        "100@K4711",
        "200@K4711",
    }
    # Re-address K6732's token to K4711 without re-signing: the signature no longer matches.
    header, payload, signature = first.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "K4711"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"
    assert_error(http.get(DATA, headers=bearer(forged)), 401, cti_sim)
    states = http.get(STATES, headers={**bearer(second), "Accept": "application/json"}).json()
    assert {s["customer"] for s in states} == {"K4711"}


def test_tokens_expire_on_the_lab_clock(http: httpx.Client, cti_sim: CTIAPISimulator) -> None:
    tokens = login(http, cti_sim)

    cti_sim.clock.advance(299)
    assert http.get(DATA, headers=bearer(tokens["access-token"])).status_code == 200
    cti_sim.clock.advance(2)
    expired = http.get(DATA, headers=bearer(tokens["access-token"]))
    assert assert_error(expired, 401, cti_sim) == "token expired"

    renewed = http.put("/login", headers=bearer(tokens["refresh-token"]))
    assert renewed.status_code == 200
    assert http.get(DATA, headers=bearer(renewed.json()["access-token"])).status_code == 200

    cti_sim.clock.advance(REFRESH_TOKEN_LIFETIME)
    assert_error(http.put("/login", headers=bearer(tokens["refresh-token"])), 401, cti_sim)


def test_forgetting_tokens_is_per_tenant(http: httpx.Client, cti_sim: CTIAPISimulator) -> None:
    first = login(http, cti_sim, "K6732")
    second = login(http, cti_sim, "K4711")

    cti_sim.forget_tokens("K6732")

    assert_error(http.get(DATA, headers=bearer(first["access-token"])), 401, cti_sim)
    assert_error(http.put("/login", headers=bearer(first["refresh-token"])), 401, cti_sim)
    assert http.get(DATA, headers=bearer(second["access-token"])).status_code == 200
    cti_sim.forget_tokens()
    assert_error(http.get(DATA, headers=bearer(second["access-token"])), 401, cti_sim)


def test_pbx_data_changes_at_run_time(http: httpx.Client, cti_sim: CTIAPISimulator) -> None:
    pbx = cti_sim.pbx("K4711")
    old_password = pbx.password
    token = login(http, cti_sim, "K4711")["access-token"]

    pbx.add_extension("300", "Versand")
    pbx.remove_extension("100")
    numbers = [e["extension_number"] for e in http.get(DATA, headers=bearer(token)).json()]
    assert numbers == ["200", "300"]

    cti_sim.set_password("K4711", "rotated")
    rejected = http.post("/login", json={"username": "K4711", "password": old_password})
    assert_error(rejected, 401, cti_sim)
    assert http.post("/login", json={"username": "K4711", "password": "rotated"}).is_success
    assert http.get(DATA, headers=bearer(token)).status_code == 200  # valid until it expires

    cti_sim.remove_pbx("K4711")
    assert_error(http.get(DATA, headers=bearer(token)), 401, cti_sim)
    with pytest.raises(ValueError, match="already has extension 200"):
        pbx.add_extension("200", "twice")
    with pytest.raises(ValueError, match="no extension 999"):
        pbx.remove_extension("999")


def test_pbx_repr_hides_the_password() -> None:
    pbx = PBX("K6732", "cti-secret-value", [{"number": "100", "name": "office"}])
    assert "cti-secret-value" not in repr(pbx)


def test_states_answer_a_json_snapshot_or_an_event_stream(
    http: httpx.Client, cti_sim: CTIAPISimulator, cti_contract: CTIContract
) -> None:
    cti_sim.pbx("K6732").extension("101").update(line="ringing", presence="away")
    token = login(http, cti_sim)["access-token"]

    snapshot = http.get(STATES, headers={**bearer(token), "Accept": "application/json"})
    assert snapshot.headers["Content-Type"] == "application/json"
    assert [(s["extension"], s["line"], s["presence"]) for s in snapshot.json()] == [
        ("100", "idle", "available"),
        ("101", "ringing", "away"),
        ("1254", "idle", "available"),
    ]
    some = http.get(
        STATES,
        params=[("extension", "1254"), ("extension", "100")],
        headers={**bearer(token), "Accept": "application/json"},
    )
    assert [s["extension"] for s in some.json()] == ["100", "1254"]

    for accept in ("text/event-stream", ""):
        stream = http.get(STATES, headers={**bearer(token), "Accept": accept})
        assert stream.headers["Content-Type"] == "text/event-stream"
        events = [
            json.loads(line.removeprefix("data: "))
            for line in stream.text.splitlines()
            if line.startswith("data: ")
        ]
        assert [e["extension"] for e in events] == ["100", "101", "1254"]
    assert cti_contract.simulator_problems(cti_sim, requests=True) == []


def test_fail_next_answers_errors_then_recovers(
    http: httpx.Client, cti_sim: CTIAPISimulator
) -> None:
    token = login(http, cti_sim)["access-token"]

    cti_sim.fail_next(2, error="database unavailable")
    for _ in range(2):
        failed = http.get(DATA, headers=bearer(token))
        assert assert_error(failed, 500, cti_sim) == "database unavailable"
    assert http.get(DATA, headers=bearer(token)).status_code == 200

    cti_sim.fail_next(1, k_account="K4711")
    cti_sim.fail_next(1, path=STATES, status=401, error="revoked")
    assert http.get(DATA, headers=bearer(token)).status_code == 200
    assert assert_error(http.get(STATES, headers=bearer(token)), 401, cti_sim) == "revoked"
    other = http.post("/login", json={"username": "K4711", "password": "irrelevant"})
    assert_error(other, 500, cti_sim)
    assert http.get("/.well-known/jwks.json").status_code == 200


def test_an_outage_of_one_tenant_leaves_the_others_alone(
    http: httpx.Client, cti_sim: CTIAPISimulator
) -> None:
    first = login(http, cti_sim, "K6732")["access-token"]
    second = login(http, cti_sim, "K4711")["access-token"]

    cti_sim.outage("K4711")
    assert_error(http.get(DATA, headers=bearer(second)), 500, cti_sim)
    assert_error(http.post("/login", json={"username": "K4711", "password": "x"}), 500, cti_sim)
    assert http.get(DATA, headers=bearer(first)).status_code == 200

    cti_sim.outage("K4711", mode="reset")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.get(DATA, headers=bearer(second))
    assert cti_sim.requests[-1].status is None
    assert http.get(DATA, headers=bearer(first)).status_code == 200

    cti_sim.end_outage("K4711")
    assert http.get(DATA, headers=bearer(second)).status_code == 200


def test_every_request_is_recorded_and_counted(
    http: httpx.Client, cti_sim: CTIAPISimulator
) -> None:
    token = login(http, cti_sim)["access-token"]
    http.get(DATA, headers=bearer(token))
    http.get(DATA, headers=bearer(token))
    login(http, cti_sim, "K4711")
    http.get("/.well-known/jwks.json")

    assert cti_sim.count() == 5
    assert cti_sim.count("K6732") == 3
    assert cti_sim.count("K6732", path=DATA) == 2
    assert cti_sim.count(path="/login", method="POST") == 2
    assert cti_sim.count(None, path="/.well-known/jwks.json") == 1
    first = cti_sim.requests[0]
    assert (first.method, first.path, first.tenant, first.status) == (
        "POST",
        "/v1/login",
        "K6732",
        200,
    )
    assert json.loads(first.body)["password"] == cti_sim.pbx("K6732").password
    assert first.response_headers["X-Request-Id"] == first.request_id
    assert cti_sim.requests[1].headers["Authorization"] == f"Bearer {token}"
    cti_sim.clear_records()
    assert cti_sim.requests == []


def test_unknown_paths_and_methods_are_error_answers(
    http: httpx.Client, cti_sim: CTIAPISimulator, cti_trust: ssl.SSLContext
) -> None:
    assert "no such resource" in assert_error(http.get("/extensions/fax/data"), 404, cti_sim)
    not_allowed = http.delete("/login")
    assert_error(not_allowed, 405, cti_sim)
    assert not_allowed.headers["Allow"] == "POST, PUT"
    root = cti_sim.base_url.removesuffix("/v1")
    outside = httpx.post(f"{root}/login", json={}, verify=cti_trust)
    assert_error(outside, 404, cti_sim)


def test_a_client_that_rejects_the_certificate_does_not_harm_the_server(
    cti_sim: CTIAPISimulator, cti_trust: ssl.SSLContext
) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{cti_sim.base_url}/.well-known/jwks.json")
    trusted = httpx.get(f"{cti_sim.base_url}/.well-known/jwks.json", verify=cti_trust)
    assert trusted.status_code == 200


def test_stop_closes_idle_connections_and_leaves_no_thread_behind(
    cti_signing_key: rsa.RSAPrivateKey,
) -> None:
    before = set(threading.enumerate())
    sim = CTIAPISimulator([PBX("K6732", "pw", [])], signing_key=cti_signing_key).start()
    clients = [httpx.Client(base_url=sim.base_url) for _ in range(3)]
    for client in clients:  # each leaves a keep-alive connection open in a handler thread
        assert client.get("/.well-known/jwks.json").status_code == 200
    assert len(set(threading.enumerate()) - before) >= 4

    sim.stop()

    assert set(threading.enumerate()) - before == set()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{sim.base_url}/.well-known/jwks.json")
    for client in clients:
        client.close()
    sim.stop()  # a second stop is harmless


def test_the_contract_catches_answers_and_requests_that_break_it(
    cti_contract: CTIContract, cti_signing_key: rsa.RSAPrivateKey
) -> None:
    # Data that the simulator passes through unchecked produces answers NFON would never give.
    bad_pbx = PBX(
        "K6732",
        "pw",
        [{"number": "100", "name": None, "line": "on-fire"}],  # type: ignore[typeddict-item]
    )
    with (
        CTIAPISimulator([bad_pbx], signing_key=cti_signing_key) as sim,
        httpx.Client(base_url=sim.base_url) as http,
    ):
        token = http.post("/login", json={"username": "K6732", "password": "pw"}).json()
        headers = {**bearer(token["access-token"]), "User-Agent": "curl/8.0"}
        http.get(DATA, headers=headers)
        http.get(STATES, headers={**headers, "Accept": "application/json"})
        http.get(STATES, headers={**headers, "Accept": "text/event-stream"})
        http.post("/login", json={"username": "K6732", "password": "pw", "otp": "1"})

    problems = cti_contract.simulator_problems(sim, requests=True)
    text = "\n".join(problems)
    assert "answer to GET /v1/extensions/phone/data -> 200" in text
    assert "None is not of type 'string'" in text
    on_fire = [p for p in problems if p.startswith(f"answer to GET /v1{STATES}") and "on-fire" in p]
    assert len(on_fire) == 2  # the JSON snapshot and the event stream
    assert "request POST /v1/login: InvalidRequestBody" in text
    assert "User-Agent 'curl/8.0'" in text
    assert "User-Agent 'python-httpx" in text  # the first login sent httpx's own


def test_spec_overlay_leaves_nfons_document_as_published(cti_spec: dict[str, Any]) -> None:
    from tests.support.cti_api import reality_overlay

    before = json.dumps(cti_spec, sort_keys=True)
    overlay = reality_overlay(cti_spec)

    assert json.dumps(cti_spec, sort_keys=True) == before
    assert cti_spec["paths"]["/login"]["post"]["responses"]["401"]["content"] == {}
    assert overlay["paths"]["/extensions/phone/data"]["get"]["responses"]["500"] == {
        "$ref": "#/components/responses/ServerError"
    }
    assert "500" not in cti_spec["paths"]["/extensions/phone/data"]["get"]["responses"]


def test_missing_spec_fails_under_ci_and_skips_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.cti_api import load_cti_spec
    from tests.support.reference import VARIABLE, reference_dir

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"missing at .*nfon-cti-api\.openapi\.json"):
        load_cti_spec(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(
        pytest.skip.Exception, match=rf"missing at .* \(set {VARIABLE} to its directory\)"
    ):
        load_cti_spec(tmp_path)
    monkeypatch.setenv(VARIABLE, str(tmp_path))
    assert reference_dir() == tmp_path
