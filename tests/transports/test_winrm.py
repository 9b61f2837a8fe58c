"""The WinRM transport end to end: pywinrm over real sockets against the lab WSMan server."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import socket
import threading
import time
from typing import Any

import pytest
from winrm import transport as pywinrm_transport

from provisioner.errors import ProvisionerError, TransportError
from provisioner.lab.tls import LabTLS
from provisioner.lab.wsman_server import WSManServer
from provisioner.secrets import Secret
from provisioner.transports.winrm import (
    ENVELOPE_TOO_LARGE,
    MAX_OPERATIONS_EXCEEDED,
    MAX_SHELLS_EXCEEDED,
    OPERATION_TIMEOUT,
    SHELL_NOT_FOUND,
    CommandResult,
    WinRMAuthError,
    WinRMConfigError,
    WinRMConnectionError,
    WinRMDeadlineError,
    WinRMEncryptionError,
    WinRMEndpoint,
    WinRMError,
    WinRMFaultError,
    WinRMHTTPError,
    WinRMInterrupted,
    WinRMSession,
    WinRMTLSError,
)
from tests.support.wsman import LAB_PASSWORD, StartWSMan, endpoint_for

TRANSPORTS = ["http-basic", "https-basic", "http-ntlm"]


def serve(
    start_wsman: StartWSMan, lab_tls: LabTLS, transport: str
) -> tuple[WSManServer, WinRMEndpoint]:
    """A server and an endpoint that reaches it; HTTPS always verifies against the lab CA."""
    server = start_wsman(tls=transport.startswith("https"))
    if transport == "http-ntlm":
        return server, endpoint_for(server, auth="ntlm", allow_insecure=False)
    return server, endpoint_for(server, ca_file=lab_tls.ca_file)


def assert_no_secret(error: BaseException) -> None:
    assert LAB_PASSWORD not in str(error)
    assert LAB_PASSWORD not in repr(error)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_shell_serves_every_command(
    start_wsman: StartWSMan, lab_tls: LabTLS, transport: str
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, transport)
    with WinRMSession(endpoint) as session:
        assert session.run("echo", ["hello"]) == CommandResult(b"hello\r\n", b"", 0)
        assert session.run("fail", ["disk full"]) == CommandResult(
            b"partial\r\n", b"failed: disk full\r\n", 3
        )
        assert session.run("upper", stdin=b"abc", retry=True).stdout == b"ABC"
    assert server.counters.messages["Create"] == 1
    assert server.counters.messages["Delete"] == 1
    assert server.open_shells == 0
    # Create, 3 x (Command, Receive, Signal), one Send for the stdin, Delete
    assert session.counters.messages == server.counters.total_messages == 12
    assert session.counters.commands == server.counters.commands == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_ascii_both_ways(start_wsman: StartWSMan, lab_tls: LabTLS, transport: str) -> None:
    _, endpoint = serve(start_wsman, lab_tls, transport)
    with WinRMSession(endpoint) as session:
        assert session.run("upper", stdin="Müller ☎".encode()).stdout.decode() == "MÜLLER ☎"
        assert session.run("echo", ["Müller ☎"]).stdout.decode() == "Müller ☎\r\n"


def test_codepage_437_shell_gets_oem_bytes(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    _, endpoint = serve(start_wsman, lab_tls, "https-basic")
    with WinRMSession(endpoint, codepage=437) as session:
        assert session.run("echo", ["Müller ☎"]).stdout == "Müller ?\r\n".encode("cp437")


@pytest.mark.parametrize("transport", ["http-basic", "https-basic"])
def test_one_megabyte_of_output_over_many_receives(
    start_wsman: StartWSMan, lab_tls: LabTLS, transport: str
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, transport)
    with WinRMSession(endpoint) as session:
        result = session.run("repeat", ["1000000", "z"])
    assert result.stdout == b"z" * 1_000_000
    assert server.counters.messages["Receive"] >= 10
    assert server.counters.largest_reply_bytes <= 153_600
    assert session.counters.messages == server.counters.total_messages


@pytest.mark.parametrize("transport", ["http-basic", "https-basic"])
def test_600_kilobytes_of_input_over_many_sends(
    start_wsman: StartWSMan, lab_tls: LabTLS, transport: str
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, transport)
    data = bytes(range(256)) * 2_400  # 614,400 bytes
    with WinRMSession(endpoint) as session:
        result = session.run("digest", stdin=data)
    assert result.stdout.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    assert server.counters.messages["Send"] == 7  # 100,000 bytes per Send
    assert server.counters.largest_request_bytes < 153_600
    assert server.counters.stdin_payloads == [data]


def test_message_count_of_one_command_with_stdin(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    session = WinRMSession(endpoint)
    session.run("upper", stdin=b"x")
    assert session.counters.messages == 5  # Create, Command, Send, Receive, Signal
    session.close()
    assert session.counters.messages == 6  # + Delete
    assert server.counters.messages == {
        "Create": 1,
        "Command": 1,
        "Send": 1,
        "Receive": 1,
        "Signal": 1,
        "Delete": 1,
    }


def test_slow_command_completes_through_operation_timeouts(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.handler_delay_s = 2.2
    endpoint = dataclasses.replace(endpoint, operation_timeout_s=1, read_timeout_s=3)
    with WinRMSession(endpoint) as session:
        assert session.run("echo", ["finally"]).stdout == b"finally\r\n"
    assert server.counters.messages["Receive"] >= 3  # two answered with the timeout fault
    assert session.counters.messages == server.counters.total_messages


@pytest.mark.parametrize("transport", ["https-basic", "http-ntlm"])
def test_bad_credentials(start_wsman: StartWSMan, lab_tls: LabTLS, transport: str) -> None:
    # for NTLM this is a 401 without a challenge, which requests_ntlm raises as PermissionError
    server, endpoint = serve(start_wsman, lab_tls, transport)
    server.faults.reject_credentials = True
    with pytest.raises(WinRMAuthError) as caught, WinRMSession(endpoint) as session:
        session.run("echo")
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert "labadmin" in str(caught.value)
    assert isinstance(caught.value, TransportError)
    assert_no_secret(caught.value)


@pytest.mark.parametrize("transport", ["http-ntlm", "https-basic"])
def test_wrong_password(start_wsman: StartWSMan, lab_tls: LabTLS, transport: str) -> None:
    server, endpoint = serve(start_wsman, lab_tls, transport)
    wrong = dataclasses.replace(endpoint, password=Secret("not-" + LAB_PASSWORD))
    with pytest.raises(WinRMAuthError) as caught, WinRMSession(wrong) as session:
        session.run("echo")
    assert "HTTP 401" in str(caught.value)
    assert server.counters.total_messages == 0
    assert "not-" + LAB_PASSWORD not in str(caught.value)


def test_tls_verification_fails_against_another_ca(
    start_wsman: StartWSMan, lab_tls: LabTLS, foreign_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    endpoint = dataclasses.replace(endpoint, ca_file=str(foreign_tls.ca_file))
    with pytest.raises(WinRMTLSError) as caught, WinRMSession(endpoint) as session:
        session.run("echo")
    message = str(caught.value)
    assert str(foreign_tls.ca_file) in message
    assert "host 127.0.0.1" in message
    assert "certificate verify failed" in message
    assert server.counters.total_messages == 0
    assert_no_secret(caught.value)


def test_connection_refused(lab_tls: LabTLS) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = WinRMEndpoint(
        "127.0.0.1",
        port,
        auth="basic",
        user="x",
        password=Secret(LAB_PASSWORD),
        ca_file=str(lab_tls.ca_file),
    )
    with pytest.raises(WinRMConnectionError) as caught, WinRMSession(endpoint) as session:
        session.run("echo")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "Connection refused" in str(caught.value)


def test_dropped_connection_is_not_retried_for_a_changing_command(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.drop_after_messages = 3  # Create, Command, Send answered; Receive dropped
    server.faults.drop_times = 1
    with pytest.raises(WinRMConnectionError) as caught, WinRMSession(endpoint) as session:
        session.run("upper", stdin=b"change something")
    assert "unreachable" in str(caught.value)
    assert server.counters.commands == 1
    # no Signal after a lost connection (a hung host would make it wait read_timeout_s again);
    # the Delete at close releases the command
    assert "Signal" not in server.counters.messages
    assert server.counters.messages["Delete"] == 1


@pytest.mark.parametrize("transport", ["https-basic", "http-ntlm"])
def test_dropped_connection_is_retried_once_in_a_fresh_shell_for_a_read_only_command(
    start_wsman: StartWSMan, lab_tls: LabTLS, transport: str
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, transport)
    server.faults.drop_after_messages = 3
    server.faults.drop_times = 1
    causes: list[WinRMError] = []
    with WinRMSession(endpoint) as session:
        # NTLM: the new connection authenticates again and gets new encryption keys
        assert session.run("upper", stdin=b"read", retry=True, on_retry=causes.append).stdout == (
            b"READ"
        )
        assert session.run("upper", stdin=b"more").stdout == b"MORE"
    assert server.counters.commands == 3
    assert server.counters.messages["Create"] == 2  # the retry ran in a fresh shell
    assert [type(c) for c in causes] == [WinRMConnectionError]
    assert server.open_shells == 0


def test_a_read_only_command_is_retried_once_only(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.drop_after_messages = 1  # only the first Create is answered
    causes: list[WinRMError] = []
    with pytest.raises(WinRMConnectionError), WinRMSession(endpoint) as session:
        session.run("echo", retry=True, on_retry=causes.append)
    assert server.counters.messages["Command"] == 1
    assert server.counters.messages["Create"] == 2  # the retry's fresh shell was never made
    assert len(causes) == 1


@pytest.mark.parametrize(("retry", "creates"), [(True, 2), (False, 1)])
def test_http_5xx_is_retried_once_for_a_read_only_command_only(
    start_wsman: StartWSMan, lab_tls: LabTLS, retry: bool, creates: int
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.http_status_on_action = ("Receive", 503)
    server.faults.http_status_times = 1
    causes: list[WinRMError] = []
    with WinRMSession(endpoint) as session:
        if retry:
            assert session.run("echo", ["x"], retry=True, on_retry=causes.append).stdout == b"x\r\n"
        else:
            with pytest.raises(WinRMHTTPError) as caught:
                session.run("echo", ["x"], on_retry=causes.append)
            assert caught.value.status == 503
            assert "HTTP 503 without a WSMan fault" in str(caught.value)
    assert server.counters.messages["Create"] == creates
    assert [str(c) for c in causes] == (
        [
            f"WinRM 127.0.0.1:{server.port} answered HTTP 503 without a WSMan fault: the WinRM "
            "service failed or is restarting; run again, and check the host's WinRM event log if "
            "it lasts"
        ]
        if retry
        else []
    )


def test_a_reply_cut_off_midway_is_retried_for_a_read_only_command(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.cut_reply_on_action = "Receive"
    server.faults.cut_reply_times = 1
    causes: list[WinRMError] = []
    with WinRMSession(endpoint) as session:
        assert session.run("repeat", ["50000", "y"], retry=True, on_retry=causes.append).stdout == (
            b"y" * 50_000
        )
    assert len(causes) == 1 and "the HTTP exchange failed" in str(causes[0])


def test_a_request_over_the_hosts_max_envelope_size_is_explained(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman(tls=True, max_envelope_kb=100)  # lowered on this host
    endpoint = endpoint_for(server, ca_file=lab_tls.ca_file)
    with pytest.raises(WinRMHTTPError) as caught, WinRMSession(endpoint) as session:
        session.run("digest", stdin=b"z" * 100_000)  # one Send of ~134 KB
    assert caught.value.status == 413
    assert "MaxEnvelopeSizekb" in str(caught.value)
    assert "WinRM listener" not in str(caught.value)


def test_stdin_goes_with_console_mode_off(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    with WinRMSession(endpoint) as session:
        session.run("upper", stdin=b"data")
    assert server.counters.command_options[0]["WINRS_CONSOLEMODE_STDIN"] == "FALSE"


def run_in_thread(
    session: WinRMSession, *args: Any, **kwargs: Any
) -> tuple[threading.Thread, list[Any]]:
    """``session.run(...)`` in a daemon thread; the list gets its result or exception."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(session.run(*args, **kwargs))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_command_that_does_not_finish_is_stopped_at_command_timeout(
    start_wsman: StartWSMan, lab_tls: LabTLS, trickle: bool
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    endpoint = dataclasses.replace(
        endpoint, operation_timeout_s=1, read_timeout_s=3, command_timeout_s=2
    )
    if trickle:  # a byte every 20 ms: each Receive has output, none finishes the command
        server.max_output_per_receive = 1
        server.faults.latency_s = 0.02
    else:  # nothing ever: every Receive answers the OperationTimeout fault
        server.faults.handler_delay_s = 60
    session = WinRMSession(endpoint)
    thread, outcome = run_in_thread(session, "repeat", ["100000", "t"], retry=True)
    thread.join(timeout=10)
    assert not thread.is_alive(), "the command was not stopped"
    assert isinstance(outcome[0], WinRMDeadlineError)
    assert "winrm.command_timeout_s=2" in str(outcome[0])
    assert "the Site, the TapiServer or the inventory" in str(outcome[0])
    assert server.counters.signals == ["terminate"]  # it was told to stop
    assert server.counters.commands == 1  # a deadline is not retried
    session.close()


def test_abort_from_another_thread_stops_the_command_and_deletes_the_shell(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "http-ntlm")
    server.faults.handler_delay_s = 60  # a command that hangs
    endpoint = dataclasses.replace(endpoint, operation_timeout_s=5, read_timeout_s=10)
    session = WinRMSession(endpoint)
    thread, outcome = run_in_thread(session, "echo", ["never"])
    while server.counters.messages.get("Receive", 0) < 1:
        time.sleep(0.01)
    started = time.monotonic()
    session.abort()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 3  # not the 5 s OperationTimeout, nor the 60 s command
    assert isinstance(outcome[0], WinRMInterrupted)
    assert server.open_shells == 0
    assert server.counters.signals == ["terminate"]
    with pytest.raises(WinRMInterrupted):
        session.run("echo", ["later"])
    session.close()
    assert server.counters.messages["Delete"] == 1


def test_abort_of_an_idle_session_deletes_its_shell(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    session = WinRMSession(endpoint)
    session.run("echo", ["one"])
    session.abort()
    assert server.open_shells == 0
    assert server.counters.signals == ["terminate"]  # the first command's own Signal only
    session.close()
    session.abort()  # twice is harmless


def test_lost_shell_is_reopened_for_a_read_only_command(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.fault_on_action = "Receive"
    server.faults.fault_code = SHELL_NOT_FOUND
    server.faults.fault_times = 1
    with WinRMSession(endpoint) as session:
        assert session.run("echo", ["again"], retry=True).stdout == b"again\r\n"
    assert server.counters.messages["Create"] == 2


def test_lost_shell_during_a_changing_command_is_an_error(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.fault_on_action = "Receive"
    server.faults.fault_code = SHELL_NOT_FOUND
    server.faults.fault_times = 1
    with pytest.raises(WinRMFaultError) as caught, WinRMSession(endpoint) as session:
        session.run("echo", ["once"])
    assert caught.value.code == SHELL_NOT_FOUND
    assert "shell is gone" in str(caught.value)
    assert server.counters.commands == 1


def test_shell_lost_before_the_command_started_is_reopened_even_without_retry(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    with WinRMSession(endpoint) as session:
        session.open()
        server.faults.fault_on_action = "Command"
        server.faults.fault_code = SHELL_NOT_FOUND
        server.faults.fault_times = 1
        assert session.run("echo", ["once"]).stdout == b"once\r\n"
    assert server.counters.commands == 1
    assert server.counters.messages["Create"] == 2


@pytest.mark.parametrize(
    ("action", "code", "expected_code", "text", "tries"),
    [
        ("Command", OPERATION_TIMEOUT, OPERATION_TIMEOUT, "OperationTimeout", 1),
        ("Create", MAX_SHELLS_EXCEEDED, MAX_SHELLS_EXCEEDED, "MaxShellsPerUser", 1),
        ("Send", ENVELOPE_TOO_LARGE, ENVELOPE_TOO_LARGE, "MaxEnvelopeSizekb", 1),
        ("Send", 2150858770, 2150858770, "the host refused the request", 1),
        # the operations quota is tried once more in a fresh shell before it is reported
        ("Command", MAX_OPERATIONS_EXCEEDED, MAX_OPERATIONS_EXCEEDED, "MaxConcurrentOperations", 2),
        ("Command", 2144108120, MAX_OPERATIONS_EXCEEDED, "MaxConcurrentOperations", 2),
    ],
)
def test_wsman_faults_become_readable_errors(
    start_wsman: StartWSMan,
    lab_tls: LabTLS,
    action: str,
    code: int,
    expected_code: int,
    text: str,
    tries: int,
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.fault_on_action = action
    server.faults.fault_code = code
    with pytest.raises(WinRMFaultError) as caught, WinRMSession(endpoint) as session:
        session.run("upper", stdin=b"x", retry=True)  # retry=True does not repeat these
    assert caught.value.code == expected_code
    assert text in str(caught.value)
    assert f"127.0.0.1:{server.port}" in str(caught.value)
    assert server.counters.messages[action] == tries


def test_operations_quota_before_a_command_starts_gets_a_fresh_shell(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    with WinRMSession(endpoint) as session:
        session.open()
        server.faults.fault_on_action = "Command"
        server.faults.fault_code = MAX_OPERATIONS_EXCEEDED
        server.faults.fault_times = 1
        assert session.run("echo", ["fresh"]).stdout == b"fresh\r\n"
    assert server.counters.messages["Create"] == 2
    assert server.counters.messages["Delete"] == 2  # the exhausted shell was deleted at once
    assert server.counters.commands == 1


def test_operations_quota_reported_as_wmi_error_maps_too(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.fault_on_action = "Command"
    server.faults.fault_code = MAX_OPERATIONS_EXCEEDED
    server.faults.fault_as_wmi_error = True  # MSFT_WmiError error_Code, no WSManFault element
    with pytest.raises(WinRMFaultError) as caught, WinRMSession(endpoint) as session:
        session.run("echo")
    assert caught.value.code == MAX_OPERATIONS_EXCEEDED
    assert "MaxConcurrentOperationsPerUser" in str(caught.value)
    assert server.counters.messages["Command"] == 2  # once more in a fresh shell


def test_real_quota_on_the_server_maps_too(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman(tls=True, max_shells=1)
    endpoint = endpoint_for(server, ca_file=lab_tls.ca_file)
    with WinRMSession(endpoint) as first, WinRMSession(endpoint) as second:
        first.open()
        with pytest.raises(WinRMFaultError, match="MaxShellsPerUser"):
            second.open()


def test_encryption_mismatch_is_explained(start_wsman: StartWSMan) -> None:
    server = start_wsman(allow_unencrypted=False)  # AllowUnencrypted=false, as on Windows
    with (
        pytest.raises(WinRMEncryptionError) as caught,
        WinRMSession(endpoint_for(server)) as session,
    ):
        session.run("echo")
    assert "use scheme https, or auth ntlm" in str(caught.value)
    assert_no_secret(caught.value)


@pytest.mark.parametrize("host", ["", "bad host"])
def test_malformed_host_name_is_a_transport_error(host: str) -> None:
    endpoint = WinRMEndpoint(host, auth="basic", user="u", password=Secret(LAB_PASSWORD))
    with pytest.raises(WinRMConnectionError, match="check the host name") as caught:
        WinRMSession(endpoint).run("echo")
    assert f"{host}:5986" in str(caught.value)
    assert_no_secret(caught.value)


def test_host_that_does_not_answer_in_time(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    server.faults.latency_s = 2.5
    endpoint = dataclasses.replace(endpoint, operation_timeout_s=1, read_timeout_s=2)
    with pytest.raises(WinRMConnectionError, match="did not answer within read_timeout_s=2"):
        WinRMSession(endpoint).open()


def test_basic_over_http_needs_allow_insecure(start_wsman: StartWSMan) -> None:
    server = start_wsman()
    endpoint = endpoint_for(server, allow_insecure=False)
    with pytest.raises(WinRMConfigError) as caught:
        WinRMSession(endpoint)
    assert isinstance(caught.value, ProvisionerError)
    assert "allow_insecure" in str(caught.value)
    assert "https" in str(caught.value)
    assert server.counters.total_messages == 0


def test_insecure_transport_logs_one_warning(
    start_wsman: StartWSMan, lab_tls: LabTLS, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_wsman()
    with caplog.at_level(logging.INFO), WinRMSession(endpoint_for(server)) as session:
        session.run("echo")
        session.run("echo")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "allow_insecure" in warnings[0].getMessage()
    assert LAB_PASSWORD not in caplog.text


def test_verified_https_logs_no_warning(
    start_wsman: StartWSMan, lab_tls: LabTLS, caplog: pytest.LogCaptureFixture
) -> None:
    _, endpoint = serve(start_wsman, lab_tls, "https-basic")
    with caplog.at_level(logging.DEBUG), WinRMSession(endpoint) as session:
        session.run("echo")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert LAB_PASSWORD not in caplog.text


def test_unverified_https_needs_allow_insecure_and_warns(
    start_wsman: StartWSMan, lab_tls: LabTLS, caplog: pytest.LogCaptureFixture
) -> None:
    _, endpoint = serve(start_wsman, lab_tls, "https-basic")
    unverified = dataclasses.replace(endpoint, ca_file=None, allow_insecure=True)
    with caplog.at_level(logging.WARNING), WinRMSession(unverified) as session:
        assert session.run("echo", ["ok"]).stdout == b"ok\r\n"
    assert "verification is off" in caplog.text
    # without the opt-in the default CA bundle is used, which does not know the lab CA
    with (
        pytest.raises(WinRMTLSError, match="default CA bundle"),
        WinRMSession(dataclasses.replace(endpoint, ca_file=None)) as session,
    ):
        session.run("echo")


@pytest.mark.parametrize("auth", ["kerberos", "credssp"])
def test_missing_optional_auth_packages_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, auth: str
) -> None:
    monkeypatch.setattr(pywinrm_transport, f"HAVE_{auth.upper()}", False)
    endpoint = WinRMEndpoint("host.example", auth=auth, user="u", password=Secret(LAB_PASSWORD))  # type: ignore[arg-type]
    with pytest.raises(WinRMConfigError, match=rf"pip install 'provisioner\[{auth}\]'"):
        WinRMSession(endpoint)


def test_certificate_auth_needs_https_and_files() -> None:
    with pytest.raises(WinRMConfigError, match="needs scheme https"):
        WinRMSession(WinRMEndpoint("h", 5985, scheme="http", auth="certificate"))
    with pytest.raises(WinRMConfigError, match="cert_pem and cert_key_pem"):
        WinRMSession(WinRMEndpoint("h", auth="certificate"))


def test_close_swallows_errors_and_secrets_stay_hidden(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server, endpoint = serve(start_wsman, lab_tls, "https-basic")
    session = WinRMSession(endpoint)
    session.open()
    server.stop()  # the host goes away with our shell
    session.close()
    assert LAB_PASSWORD not in repr(endpoint)
    assert LAB_PASSWORD not in repr(session)


def test_send_chunk_size_must_fit_an_envelope() -> None:
    endpoint = WinRMEndpoint("h", auth="basic", user="u", password=Secret(LAB_PASSWORD))
    with pytest.raises(ValueError, match="max_send_bytes"):
        WinRMSession(endpoint, max_send_bytes=150_000)
