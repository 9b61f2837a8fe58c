"""The CTI API client against the simulated CTI API over real HTTPS sockets.

Every request and answer on the client's wire is checked against NFON's OpenAPI document by
the ``make_cti_client`` fixture (tests/support/cti_api.py).
"""

from __future__ import annotations

import json
import logging
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from provisioner import __version__
from provisioner.errors import TransportError
from provisioner.lab.cti_api import PBX, REFRESH_TOKEN_LIFETIME, CTIAPISimulator
from provisioner.secrets import Secret
from provisioner.transports.cti_api import (
    CTIAPIError,
    CTIAuthError,
    CTIClient,
    CTIConnectionError,
    CTIInsecureTransportWarning,
    Extension,
    LineState,
)

if TYPE_CHECKING:  # at run time the fixtures bring these; importing here would skip pytest's
    # assertion rewriting of the plugin module
    from cryptography.hazmat.primitives.asymmetric import rsa

    from provisioner.lab.tls import LabTLS
    from tests.support.cti_api import CTIContract


MakeClient = Callable[..., CTIClient]
DATA = "/extensions/phone/data"


def issued_tokens(sim: CTIAPISimulator) -> list[str]:
    """Every access and refresh token the simulator handed out."""
    tokens = []
    for record in sim.requests:
        if record.path.endswith("/login") and record.status == 200:
            pair = json.loads(record.response_body)
            tokens += [pair["access-token"], pair["refresh-token"]]
    return tokens


def test_login_then_extensions_lists_only_the_tenants_lines(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")

    extensions = client.extensions()

    assert extensions == [
        Extension(uuid="100@K6732", number="100", name="office"),
        Extension(uuid="101@K6732", number="101", name="Reception"),
        Extension(uuid="1254@K6732", number="1254", name="Marius Mauersberger"),
    ]
    assert client.calls == 2
    assert [(r.method, r.path) for r in cti_sim.requests] == [
        ("POST", "/v1/login"),
        ("GET", "/v1/extensions/phone/data"),
    ]


def test_extensions_follow_the_pbx_when_it_changes_behind_our_back(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    assert [e.number for e in client.extensions()] == ["100", "101", "1254"]

    cti_sim.pbx("K6732").add_extension("102", "Lab")
    cti_sim.pbx("K6732").remove_extension("101")

    assert [e.number for e in client.extensions()] == ["100", "1254", "102"]
    assert cti_sim.count("K6732", path="/login") == 1


def test_states_is_a_json_snapshot(make_cti_client: MakeClient, cti_sim: CTIAPISimulator) -> None:
    pbx = cti_sim.pbx("K4711")
    pbx.extension("200").update(line="in-use", presence="dnd")
    client = make_cti_client("K4711")

    states = client.states()

    assert states == [
        LineState(extension="100", customer="K4711", line="idle", presence="available"),
        LineState(extension="200", customer="K4711", line="in-use", presence="dnd"),
    ]
    (request,) = [r for r in cti_sim.requests if r.path.endswith("/states")]
    assert request.headers["Accept"] == "application/json"
    assert request.response_headers["Content-Type"] == "application/json"


def test_access_token_is_renewed_with_put_shortly_before_it_expires(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()
    first_token = cti_sim.requests[-1].headers["Authorization"]

    cti_sim.clock.advance(285)  # 15 s left of 300: inside the renewal margin, still valid
    client.extensions()

    assert [(r.method, r.path) for r in cti_sim.requests[2:]] == [
        ("PUT", "/v1/login"),
        ("GET", "/v1/extensions/phone/data"),
    ]
    put = cti_sim.requests[2]
    assert put.status == 200
    assert put.headers["Authorization"] != first_token  # the refresh token, not the access one
    assert cti_sim.requests[-1].headers["Authorization"] != first_token
    assert cti_sim.requests[-1].status == 200


def test_token_is_not_renewed_while_it_is_fresh(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()
    cti_sim.clock.advance(200)
    client.extensions()
    client.states()

    assert cti_sim.count(path="/login") == 1
    assert client.calls == 4


def test_expired_refresh_token_leads_to_a_new_login(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()

    cti_sim.clock.advance(REFRESH_TOKEN_LIFETIME + 60)
    client.extensions()

    assert cti_sim.count(path="/login", method="POST") == 2
    assert cti_sim.count(path="/login", method="PUT") == 0
    assert all(r.status == 200 for r in cti_sim.requests)


def test_refused_refresh_token_leads_to_a_new_login(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()
    cti_sim.forget_tokens("K6732")  # e.g. NFON's token store was reset

    cti_sim.clock.advance(290)
    assert len(client.extensions()) == 3

    assert [(r.method, r.status) for r in cti_sim.requests[2:]] == [
        ("PUT", 401),
        ("POST", 200),
        ("GET", 200),
    ]


def test_401_from_a_call_logs_in_again_once_and_repeats_it(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()
    cti_sim.forget_tokens("K6732")

    assert len(client.extensions()) == 3

    assert [(r.method, r.path, r.status) for r in cti_sim.requests[2:]] == [
        ("GET", "/v1/extensions/phone/data", 401),
        ("POST", "/v1/login", 200),
        ("GET", "/v1/extensions/phone/data", 200),
    ]


def test_401_with_a_machine_clock_behind_the_servers_logs_in_again(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    # The client's clock says the token is fresh; the server's says it expired.
    client = make_cti_client("K6732", clock=lambda: 0.0)
    client.extensions()
    cti_sim.clock.advance(301)

    assert len(client.extensions()) == 3
    assert [r.status for r in cti_sim.requests] == [200, 200, 401, 200, 200]


def test_a_second_401_after_a_fresh_login_is_an_api_error(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.login()
    cti_sim.fail_next(2, status=401, error="token not accepted", path=DATA)

    with pytest.raises(CTIAPIError) as caught:
        client.extensions()

    assert caught.value.status == 401
    assert '"token not accepted"' in str(caught.value)
    assert cti_sim.count(path="/login", method="POST") == 2  # re-login once, not in a loop
    assert cti_sim.count(path=DATA) == 2


def test_5xx_on_a_get_is_retried_with_backoff_then_succeeds(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    sleeps: list[float] = []
    client = make_cti_client("K6732", sleep=sleeps.append, retry_backoff=0.5)
    client.login()
    cti_sim.fail_next(2, path=DATA)

    assert len(client.extensions()) == 3

    assert [r.status for r in cti_sim.requests if r.path.endswith(DATA)] == [500, 500, 200]
    assert sleeps == [0.5, 1.0]
    assert client.calls == 4


def test_5xx_on_every_try_quotes_nfons_error_text_status_and_request_id(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.login()
    cti_sim.fail_next(3, error="database unavailable", path=DATA)

    with pytest.raises(CTIAPIError) as caught:
        client.extensions()

    last = cti_sim.requests[-1]
    message = str(caught.value)
    assert '"database unavailable"' in message
    assert "HTTP 500" in message
    assert f"X-Request-Id {last.request_id}" in message
    assert "K6732" in message
    assert "\n" not in message
    assert (caught.value.status, caught.value.request_id) == (500, last.request_id)
    assert isinstance(caught.value, TransportError)
    assert cti_sim.count(path=DATA) == 3


def test_login_is_never_repeated_blindly(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    cti_sim.fail_next(1, path="/login")

    with pytest.raises(CTIAPIError, match="POST /login"):
        client.extensions()

    assert cti_sim.count(path="/login") == 1
    assert cti_sim.count(path=DATA) == 0


def test_refresh_is_never_repeated_blindly(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.login()
    cti_sim.clock.advance(290)
    cti_sim.fail_next(1, path="/login")

    with pytest.raises(CTIAPIError, match="PUT /login"):
        client.extensions()

    assert cti_sim.count(path="/login", method="PUT") == 1
    assert cti_sim.count(path="/login", method="POST") == 1


def test_wrong_password_is_an_auth_error_naming_the_k_account(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732", password="not-the-cti-password")

    with pytest.raises(CTIAuthError) as caught:
        client.extensions()

    message = str(caught.value)
    assert "K6732" in message
    assert "CTI API password" in message
    assert cti_sim.requests[0].request_id in message
    assert "not-the-cti-password" not in message
    assert caught.value.k_account == "K6732"
    assert client.calls == 1


def test_password_changed_behind_our_back_is_an_auth_error_at_the_next_login(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.extensions()
    cti_sim.set_password("K6732", "rotated-by-nfon")
    assert len(client.extensions()) == 3  # the issued token stays valid until it expires

    cti_sim.clock.advance(REFRESH_TOKEN_LIFETIME + 60)
    with pytest.raises(CTIAuthError, match="K6732"):
        client.extensions()


def test_each_tenants_token_reads_only_that_tenants_pbx(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    first, second = make_cti_client("K6732"), make_cti_client("K4711")

    assert {e.uuid for e in first.extensions()} == {"100@K6732", "101@K6732", "1254@K6732"}
    assert {e.uuid for e in second.extensions()} == {"100@K4711", "200@K4711"}
    assert {s.customer for s in second.states()} == {"K4711"}
    assert cti_sim.count("K6732") == 2
    assert cti_sim.count("K4711") == 3


@pytest.mark.parametrize(("mode", "error"), [("error", CTIAPIError), ("reset", CTIConnectionError)])
def test_one_tenants_outage_does_not_touch_another_tenants_client(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator, mode: Any, error: type[Exception]
) -> None:
    healthy, broken = make_cti_client("K6732"), make_cti_client("K4711")
    healthy.login()
    broken.login()

    cti_sim.outage("K4711", mode=mode)

    with pytest.raises(error, match="K4711"):
        broken.extensions()
    assert len(healthy.extensions()) == 3
    assert cti_sim.count("K4711", path=DATA) == 3  # retried, then given up
    cti_sim.end_outage("K4711")
    assert len(broken.extensions()) == 2


def test_connection_errors_on_a_get_are_retried_then_name_the_url(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732")
    client.login()
    cti_sim.outage("K6732", mode="reset")

    with pytest.raises(CTIConnectionError) as caught:
        client.extensions()

    message = str(caught.value)
    assert f"{cti_sim.base_url}{DATA}" in message
    assert "after 3 tries" in message
    assert "check" in message
    assert client.calls == 4


def test_a_get_that_times_out_is_retried_then_says_how_long_it_waited(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    client = make_cti_client("K6732", timeout=0.2)
    client.login()
    cti_sim.stall_next(3, seconds=0.4, path=DATA)

    with pytest.raises(CTIConnectionError, match=r"after 3 tries \(no answer within 0.2 s"):
        client.extensions()
    assert cti_sim.count(path=DATA) == 3


def test_unreachable_api_names_the_url_and_what_to_check() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is closed now: nothing listens there.
    url = f"https://127.0.0.1:{port}/v1"
    client = CTIClient("K6732", Secret("pw"), base_url=url)
    with client, pytest.raises(CTIConnectionError) as caught:
        client.login()

    assert f"{url}/login" in str(caught.value)
    assert "DNS" in str(caught.value)
    assert client.calls == 1  # a POST is not repeated


def test_user_agent_names_product_version_and_k_account_on_every_request(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator
) -> None:
    for k_account in ("K6732", "K4711"):
        client = make_cti_client(k_account)
        client.extensions()
        client.states()
        cti_sim.clock.advance(290)
        client.extensions()
        cti_sim.forget_tokens()
        client.states()

    user_agents = {(r.tenant, r.headers["User-Agent"]) for r in cti_sim.requests}
    assert user_agents == {
        ("K6732", f"provisioner/{__version__} (K6732)"),
        ("K4711", f"provisioner/{__version__} (K4711)"),
    }


def test_tls_is_verified_by_default(cti_sim: CTIAPISimulator) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no insecure-transport warning by default
        client = CTIClient(
            "K6732", Secret(cti_sim.pbx("K6732").password), base_url=cti_sim.base_url
        )
    with client, pytest.raises(CTIConnectionError, match="certificate not trusted"):
        client.login()
    assert cti_sim.requests == []  # the handshake failed before any request


def test_ca_bundle_path_as_verify_trusts_the_lab_ca(
    cti_sim: CTIAPISimulator, cti_tls: LabTLS, cti_contract: CTIContract
) -> None:
    password = Secret(cti_sim.pbx("K6732").password)
    with CTIClient("K6732", password, base_url=cti_sim.base_url, verify=str(cti_tls.ca_file)) as c:
        assert len(c.extensions()) == 3

    # This client used its own transport: check its requests from the simulator's record.
    assert cti_contract.simulator_problems(cti_sim, requests=True) == []


def test_unreadable_ca_bundle_is_a_connection_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(CTIConnectionError, match="CA bundle"):
        CTIClient("K6732", Secret("pw"), verify=str(missing))


def test_verify_false_is_an_explicit_opt_in_with_one_warning(cti_sim: CTIAPISimulator) -> None:
    password = Secret(cti_sim.pbx("K6732").password)
    with pytest.raises(CTIConnectionError, match=r"set cti_api\.allow_insecure: true"):
        CTIClient("K6732", password, base_url=cti_sim.base_url, verify=False)
    with pytest.warns(CTIInsecureTransportWarning) as warned:
        client = CTIClient(
            "K6732", password, base_url=cti_sim.base_url, verify=False, allow_insecure=True
        )
    with client:
        assert len(client.extensions()) == 3

    assert len(warned) == 1
    assert "K6732" in str(warned[0].message)
    assert password.reveal() not in str(warned[0].message)


def test_plain_http_needs_the_opt_in_and_warns(
    cti_signing_key: rsa.RSAPrivateKey, cti_contract: CTIContract
) -> None:
    pbx = PBX("K4711", "cti-pass-plain", [{"number": "100", "name": "Lager"}])
    with CTIAPISimulator([pbx], signing_key=cti_signing_key) as sim:
        with pytest.raises(CTIConnectionError, match="is not verified https"):
            CTIClient("K4711", Secret(pbx.password), base_url=sim.base_url)
        with pytest.warns(CTIInsecureTransportWarning, match="without TLS"):
            client = CTIClient(
                "K4711", Secret(pbx.password), base_url=sim.base_url, allow_insecure=True
            )
        with client:
            assert [e.uuid for e in client.extensions()] == ["100@K4711"]
    assert cti_contract.simulator_problems(sim, requests=True) == []


def test_base_url_without_v1_says_what_to_fix(cti_sim: CTIAPISimulator, cti_tls: LabTLS) -> None:
    root = cti_sim.base_url.removesuffix("/v1")
    password = Secret(cti_sim.pbx("K6732").password)
    client = CTIClient("K6732", password, base_url=root, verify=str(cti_tls.ca_file))
    with client, pytest.raises(CTIAPIError, match=r"HTTP 404 .*ends in /v1"):
        client.login()


def test_secrets_never_reach_exception_text_or_logs(
    make_cti_client: MakeClient, cti_sim: CTIAPISimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = cti_sim.pbx("K6732").password
    errors: list[BaseException] = []

    def collect(action: Callable[[], object]) -> None:
        try:
            action()
        except TransportError as exc:
            errors.append(exc)

    client = make_cti_client("K6732")
    client.extensions()
    cti_sim.clock.advance(290)
    client.states()  # renews with PUT
    access_token = cti_sim.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    # A backend that echoes what it got must not make us repeat it.
    echo = f"rejected password={password} token={access_token}"
    cti_sim.fail_next(3, error=echo, path=DATA)
    collect(client.extensions)
    cti_sim.fail_next(2, status=401, error=echo, path=DATA)
    collect(client.extensions)
    collect(make_cti_client("K6732", password=password + "-wrong").extensions)
    cti_sim.outage("K6732", mode="reset")
    collect(client.states)
    cti_sim.end_outage("K6732")
    collect(CTIClient("K6732", Secret(password), base_url=cti_sim.base_url).login)

    assert [type(e) for e in errors] == [
        CTIAPIError,
        CTIAPIError,
        CTIAuthError,
        CTIConnectionError,
        CTIConnectionError,
    ]
    secrets = [password, *issued_tokens(cti_sim)]
    assert len(secrets) >= 5
    for error in errors:
        chain: list[BaseException] = []
        seen: BaseException | None = error
        while seen is not None:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        texts = [str(e) for e in chain] + [repr(e) for e in chain] + [repr(vars(error))]
        for secret in secrets:
            assert not any(secret in text for text in texts), f"a secret leaked via {error!r}"
    assert "(sensitive)" in str(errors[0])
    for secret in secrets:
        assert secret not in caplog.text
