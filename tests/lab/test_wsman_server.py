"""The lab WS-Management server, driven by unmodified pywinrm over real sockets."""

from __future__ import annotations

import base64
import socket
import threading
from typing import Any

import pytest
import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
)
from winrm.exceptions import WSManFaultError as PyWinRMFault
from winrm.protocol import Protocol

from provisioner.lab.tls import LabTLS, ensure_lab_tls
from provisioner.lab.wsman_server import (
    ENVELOPE_TOO_LARGE,
    MAX_OPERATIONS_EXCEEDED,
    MAX_SHELLS_EXCEEDED,
    OPERATION_TIMEOUT,
    SHELL_NOT_FOUND,
    CommandResult,
    WSManServer,
)
from tests.support.wsman import LAB_PASSWORD, LAB_USER, StartWSMan


def client(server: WSManServer, lab_tls: LabTLS, **kwargs: Any) -> Protocol:
    kwargs.setdefault("transport", "basic")
    kwargs.setdefault("username", LAB_USER)
    kwargs.setdefault("password", LAB_PASSWORD)
    kwargs.setdefault("operation_timeout_sec", 5)
    kwargs.setdefault("read_timeout_sec", 10)
    return Protocol(
        server.url,
        ca_trust_path=str(lab_tls.ca_file),
        server_cert_validation="validate",
        proxy=None,
        **kwargs,
    )


def run(
    protocol: Protocol, command: str, args: list[str], stdin: bytes = b"", codepage: int = 65001
) -> tuple[bytes, bytes, int]:
    shell = protocol.open_shell(codepage=codepage)
    command_id = protocol.run_command(shell, command, args)
    if stdin:
        protocol.send_command_input(shell, command_id, stdin, end=True)
    result = protocol.get_command_output(shell, command_id)
    protocol.cleanup_command(shell, command_id)  # asserts RelatesTo == MessageID
    protocol.close_shell(shell)  # asserts again
    return result


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_full_shell_life_cycle(start_wsman: StartWSMan, lab_tls: LabTLS, tls: bool) -> None:
    server = start_wsman(tls=tls)
    out, err, code = run(client(server, lab_tls), "fail", ["Müller ☎"])
    assert (out, err, code) == (b"partial\r\n", "failed: Müller ☎\r\n".encode(), 3)
    assert server.counters.messages == {
        "Create": 1,
        "Command": 1,
        "Receive": 1,
        "Signal": 1,
        "Delete": 1,
    }
    assert server.counters.command_lines == ["fail Müller ☎"]
    assert server.open_shells == 0


def test_codepage_of_the_shell_encodes_text_output(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    protocol = client(server, lab_tls)
    assert run(protocol, "echo", ["Müller ☎"], codepage=65001)[0] == "Müller ☎\r\n".encode()
    # cp437 has ü but no ☎: the console turns it into '?'
    assert run(protocol, "echo", ["Müller ☎"], codepage=437)[0] == "Müller ?\r\n".encode("cp437")


def test_stdin_in_many_sends_reaches_the_handler_whole(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    command_id = protocol.run_command(shell, "digest")
    chunks = [bytes([i]) * 50_000 for i in range(12)]
    for index, chunk in enumerate(chunks):
        protocol.send_command_input(shell, command_id, chunk, end=index == len(chunks) - 1)
    out, _, _ = protocol.get_command_output(shell, command_id)
    assert out.startswith(b"600000 ")
    assert server.counters.messages["Send"] == 12
    assert server.counters.stdin_payloads == [b"".join(chunks)]


def test_large_output_is_split_below_the_client_envelope_size(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    out, _, code = run(client(server, lab_tls), "repeat", ["1000000", "x"])
    assert (len(out), code) == (1_000_000, 0)
    assert server.counters.messages["Receive"] >= 10  # ~100 KB of output per Receive
    assert server.counters.largest_reply_bytes <= Protocol.DEFAULT_MAX_ENV_SIZE


def test_receive_past_operation_timeout_faults_and_pywinrm_retries(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    server.faults.handler_delay_s = 1.5
    protocol = client(server, lab_tls, operation_timeout_sec=1, read_timeout_sec=3)
    shell = protocol.open_shell()
    command_id = protocol.run_command(shell, "echo", ["late"])
    with pytest.raises(WinRMOperationTimeoutError):
        protocol.get_command_output_raw(shell, command_id)
    assert protocol.get_command_output(shell, command_id) == (b"late\r\n", b"", 0)


def test_handler_runs_at_first_receive_when_no_stdin_was_sent(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    assert run(client(server, lab_tls), "upper", [])[0] == b""
    assert server.counters.stdin_payloads == [b""]


def test_bad_credentials_get_401(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    with pytest.raises(InvalidCredentialsError):
        client(server, lab_tls, password="wrong").open_shell()
    server.faults.reject_credentials = True
    with pytest.raises(InvalidCredentialsError):
        client(server, lab_tls).open_shell()
    assert server.counters.unauthorized_replies == 2
    assert server.counters.total_messages == 0


def test_ntlm_over_http_is_message_encrypted(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman(allow_unencrypted=False)
    protocol = client(server, lab_tls, transport="ntlm")
    out, _, _ = run(protocol, "upper", [], stdin="Müller ☎".encode())
    assert out == "MÜLLER ☎".encode()
    assert protocol.transport.encryption is not None  # pywinrm wrapped every message
    with pytest.raises(InvalidCredentialsError):
        client(server, lab_tls, transport="ntlm", password="wrong").open_shell()


def test_unencrypted_basic_over_http_gets_bare_500_when_not_allowed(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman(allow_unencrypted=False)
    with pytest.raises(WinRMTransportError) as caught:
        client(server, lab_tls).open_shell()
    assert (caught.value.code, caught.value.response_text) == (500, "")


def test_https_is_refused_by_a_client_trusting_another_ca(
    start_wsman: StartWSMan, tmp_path: Any
) -> None:
    server = start_wsman(tls=True)
    with pytest.raises(requests.exceptions.SSLError):
        client(server, ensure_lab_tls(tmp_path)).open_shell()


def test_request_over_max_envelope_size_is_refused(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    command_id = protocol.run_command(shell, "digest")
    with pytest.raises(PyWinRMFault) as caught:  # pywinrm never splits: 120 KB become 160 KB
        protocol.send_command_input(shell, command_id, b"x" * 120_000, end=True)
    assert caught.value.wsman_fault_code == ENVELOPE_TOO_LARGE
    assert server.counters.stdin_payloads == []


def test_shell_quota(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman(max_shells=2)
    protocol = client(server, lab_tls)
    first = protocol.open_shell()
    protocol.open_shell()
    with pytest.raises(PyWinRMFault) as caught:
        protocol.open_shell()
    assert caught.value.wsman_fault_code == MAX_SHELLS_EXCEEDED
    protocol.close_shell(first, close_session=False)
    protocol.open_shell()


def test_operations_quota_counts_commands_until_signalled(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman(max_operations=2)
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    first = protocol.run_command(shell, "echo", ["1"])
    protocol.run_command(shell, "echo", ["2"])
    with pytest.raises(PyWinRMFault) as caught:
        protocol.run_command(shell, "echo", ["3"])
    assert caught.value.wsman_fault_code == MAX_OPERATIONS_EXCEEDED
    protocol.cleanup_command(shell, first)
    protocol.run_command(shell, "echo", ["3"])


def test_deleted_shell_is_not_found(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    protocol.close_shell(shell, close_session=False)
    with pytest.raises(PyWinRMFault) as caught:
        protocol.run_command(shell, "echo")
    assert caught.value.wsman_fault_code == SHELL_NOT_FOUND


def test_injected_fault_on_action_and_on_message_number(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    server.faults.fault_code = MAX_SHELLS_EXCEEDED
    server.faults.fault_on_action = "Command"
    server.faults.fault_times = 1
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    with pytest.raises(PyWinRMFault) as caught:
        protocol.run_command(shell, "echo")
    assert caught.value.wsman_fault_code == MAX_SHELLS_EXCEEDED
    protocol.run_command(shell, "echo")  # fault_times ran out

    server.faults.fault_code = OPERATION_TIMEOUT
    server.faults.fault_on_message = server.counters.total_messages + 1
    with pytest.raises(WinRMOperationTimeoutError):
        protocol.run_command(shell, "echo")
    protocol.run_command(shell, "echo")


def test_injected_fault_as_wmi_error(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    server.faults.fault_code = MAX_OPERATIONS_EXCEEDED
    server.faults.fault_on_action = "Command"
    server.faults.fault_as_wmi_error = True
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    with pytest.raises(PyWinRMFault) as caught:
        protocol.run_command(shell, "echo")
    assert (caught.value.wsman_fault_code, caught.value.wmierror_code) == (
        None,
        MAX_OPERATIONS_EXCEEDED,
    )
    assert "concurrent operations" in caught.value.reason


def test_drop_after_n_messages_closes_the_connection(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    server.faults.drop_after_messages = 1
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    with pytest.raises(requests.exceptions.ConnectionError):
        protocol.run_command(shell, "echo")
    server.faults.drop_after_messages = None
    protocol.run_command(shell, "echo")


def test_keep_alive_serves_a_whole_session_on_one_connection(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman(tls=True)
    protocol = client(server, lab_tls)
    shell = protocol.open_shell()
    for _ in range(5):
        command_id = protocol.run_command(shell, "echo", ["x"])
        protocol.get_command_output(shell, command_id)
        protocol.cleanup_command(shell, command_id)
    assert server.counters.total_messages == 16
    assert server.counters.connections == 1


def test_handler_exception_is_a_failed_command(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    def broken(command: str, arguments: list[str], stdin: bytes) -> CommandResult:
        raise KeyError("no such resource")

    server = start_wsman(handler=broken)
    out, err, code = run(client(server, lab_tls), "anything", [])
    assert (out, code) == (b"", 1)
    assert b"KeyError" in err
    assert len(server.handler_errors) == 1


def test_counters_reset_and_record_secrets_sent(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    run(client(server, lab_tls), "upper", ["-token", "s3cr3t"], stdin=b"password=hunter2")
    assert any("s3cr3t" in line for line in server.counters.command_lines)
    assert any(b"hunter2" in payload for payload in server.counters.stdin_payloads)
    server.counters.reset()
    assert (server.counters.total_messages, server.counters.command_lines) == (0, [])


def test_wrong_path_and_malformed_envelopes(start_wsman: StartWSMan) -> None:
    server = start_wsman()
    auth = "Basic " + base64.b64encode(f"{LAB_USER}:{LAB_PASSWORD}".encode()).decode()
    with requests.Session() as http:
        assert (
            http.post(
                f"{server.url}-nope", data=b"<x/>", headers={"Authorization": auth}
            ).status_code
            == 404
        )
        assert (
            http.post(server.url, data=b"<not-soap", headers={"Authorization": auth}).status_code
            == 400
        )


def test_stop_closes_connections_and_joins_threads(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman(tls=True)
    protocol = client(server, lab_tls)
    protocol.open_shell()  # leaves a keep-alive connection open in the pool
    port = server.port
    server.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("wsman-")]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
