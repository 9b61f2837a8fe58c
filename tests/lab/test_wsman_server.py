"""The lab WS-Management server against Windows' documented rules (the table in its module).

Behaviour is driven through two independent clients, pywinrm and pypsrp (``make_client`` runs a
test once with each), so the server cannot lean on one client's habits; the shape of replies is
read from envelopes posted by hand (``soap``).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import requests
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError
from winrm.exceptions import WSManFaultError as PyWinRMFault
from winrm.protocol import Protocol

from provisioner.lab.tls import LabTLS, ensure_lab_tls
from provisioner.lab.wsman_server import (
    ENVELOPE_SIZE_NOT_SUPPORTED,
    INVALID_SELECTORS,
    MAX_OPERATIONS_EXCEEDED,
    MAX_SHELLS_EXCEEDED,
    OPERATION_TIMEOUT,
    CommandResult,
    WSManServer,
)
from provisioner.secrets import Secret
from tests.support.wsman import (
    LAB_PASSWORD,
    LAB_USER,
    NAMESPACES,
    MakeClient,
    Refused,
    StartWSMan,
    pypsrp_client,
    pywinrm_client,
    run_in,
    soap,
)

# -- through both clients --------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_full_shell_life_cycle(start_wsman: StartWSMan, make_client: MakeClient, tls: bool) -> None:
    server = start_wsman(tls=tls)
    shell = make_client(server).open()
    assert run_in(shell, "fail", ["Müller ☎"]) == (
        b"partial\r\n",
        "failed: Müller ☎\r\n".encode(),
        3,
    )
    shell.delete()
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
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    client = make_client(start_wsman())
    assert run_in(client.open(codepage=65001), "echo", ["Müller ☎"])[0] == "Müller ☎\r\n".encode()
    # cp437 has ü but no ☎: the console turns it into '?'
    out = run_in(client.open(codepage=437), "echo", ["Müller ☎"])[0]
    assert out == "Müller ?\r\n".encode("cp437")


def test_environment_of_create_reaches_every_command_of_the_shell(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rule C2: ``rsp:Environment`` variables are in each command's environment."""
    odd = '_-(){}[]<>*+-/\\?"!@#$^&|;:i,.`~0'
    shell = make_client(start_wsman()).open(environment={"PROVISIONER_RUN": "r-17", "ODD": odd})
    assert run_in(shell, "env", ["PROVISIONER_RUN"])[0] == b"r-17\r\n"
    assert run_in(shell, "env", ["ODD"])[0] == odd.encode() + b"\r\n"


def test_stdin_in_many_sends_reaches_the_handler_whole(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    server = start_wsman()
    shell = make_client(server).open()
    command_id = shell.command("digest", [])
    chunks = [bytes([i]) * 50_000 for i in range(12)]
    for index, chunk in enumerate(chunks):
        shell.send(command_id, chunk, index == len(chunks) - 1)
    out, _, code = shell.receive(command_id)
    assert (out.split()[0], code) == (b"600000", 0)
    assert server.counters.messages["Send"] == 12
    assert server.counters.stdin_payloads == [b"".join(chunks)]


def test_large_output_is_split_below_the_client_envelope_size(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    server = start_wsman()
    out, _, code = run_in(make_client(server).open(), "repeat", ["1000000", "x"])
    assert (len(out), code) == (1_000_000, 0)
    assert server.counters.messages["Receive"] >= 10  # ~100 KB of output per Receive
    assert server.counters.largest_reply_bytes <= 153_600  # what both clients ask for


def test_receive_past_operation_timeout_faults_and_the_command_runs_on(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rule F3."""
    server = start_wsman()
    server.faults.handler_delay_s = 1.5
    shell = make_client(server, operation_timeout_s=1).open()
    command_id = shell.command("echo", ["late"])
    with pytest.raises(Refused) as caught:
        shell.receive(command_id)
    assert caught.value.code == OPERATION_TIMEOUT
    out, _, code = shell.receive(command_id)
    assert (out, code) == (b"late\r\n", 0)


def test_request_over_max_envelope_size_kb_gets_http_413(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rule Q1: 500 KB of request is the default limit; 300 KB of stdin in one Send passes."""
    server = start_wsman()
    shell = make_client(server).open()
    command_id = shell.command("digest", [])
    shell.send(command_id, b"x" * 300_000, False)  # ~400 KB of envelope in base64
    with pytest.raises(Refused) as caught:
        shell.send(command_id, b"y" * 400_000, True)  # ~533 KB
    assert (caught.value.http, caught.value.code) == (413, None)
    assert server.counters.stdin_payloads == []


def test_bad_credentials_get_401(start_wsman: StartWSMan, make_client: MakeClient) -> None:
    server = start_wsman()
    with pytest.raises(Refused) as caught:
        make_client(server, password="wrong").open()
    assert caught.value.http == 401
    server.faults.reject_credentials = True
    with pytest.raises(Refused) as caught:
        make_client(server).open()
    assert caught.value.http == 401
    assert server.counters.total_messages == 0


def test_shells_per_user_quota(start_wsman: StartWSMan, make_client: MakeClient) -> None:
    """Rule Q3, with Windows' default of 30."""
    server = start_wsman()
    client = make_client(server)
    shells = [client.open() for _ in range(30)]
    with pytest.raises(Refused) as caught:
        client.open()
    assert caught.value.code == MAX_SHELLS_EXCEEDED
    shells[0].delete()
    client.open()


def test_operations_stay_counted_until_the_shell_is_deleted(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rule Q4: a Signal does not give the operation back, deleting the shell does."""
    server = start_wsman(max_operations=3)
    client = make_client(server)
    shell = client.open()
    run_in(shell, "echo", ["1"])
    run_in(shell, "echo", ["2"])  # shell + 2 commands: 3 operations, each command signalled
    with pytest.raises(Refused) as caught:
        shell.command("echo", ["3"])
    assert caught.value.code == MAX_OPERATIONS_EXCEEDED
    shell.delete()
    assert server.operations == 0
    assert run_in(client.open(), "echo", ["3"])[0] == b"3\r\n"


def test_deleted_shell_and_unknown_command_are_invalid_selectors(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rules F1 and F2, as each client reports them."""
    client = make_client(start_wsman())
    shell = client.open()
    with pytest.raises(Refused) as caught:
        shell.receive("87E77BEB-6761-4C48-9D70-A00266B8459A")
    assert caught.value.code == INVALID_SELECTORS
    shell.delete()
    with pytest.raises(Refused) as caught:
        shell.command("echo", [])
    assert caught.value.code == INVALID_SELECTORS


def test_powershell_failing_before_its_script_writes_clixml_to_stderr(
    start_wsman: StartWSMan, make_client: MakeClient
) -> None:
    """Rule S1; the handler is not called."""
    server = start_wsman()
    server.faults.powershell_fails_with = ["Cannot run in ConstrainedLanguage mode: _x41_ ☎"]
    shell = make_client(server).open()
    out, err, code = run_in(shell, "powershell.exe", ["-NoProfile", "-"], b"data")
    assert (out, code) == (b"", 1)
    assert err.startswith(b"#< CLIXML\r\n<Objs ")
    document = ET.fromstring(err.split(b"\r\n", 1)[1])
    strings = [e.text for e in document if e.get("S") == "Error"]
    assert strings == ["Cannot run in ConstrainedLanguage mode: _x005F_x41_x005F_ ☎_x000D__x000A_"]
    assert run_in(shell, "echo", ["other"])[0] == b"other\r\n"  # only powershell.exe fails


def test_negotiate_and_raw_ntlm_both_authenticate_and_encrypt(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    """pypsrp sends SPNEGO-wrapped NTLM (``Negotiate``), pywinrm bare NTLM: Windows takes both."""
    server = start_wsman(allow_unencrypted=False)
    for client in (pypsrp_client(server, lab_tls), pywinrm_client(server, lab_tls)):
        out = run_in(client.open(), "upper", [], "Müller ☎".encode())[0]
        assert out == "MÜLLER ☎".encode(), client.name
    assert server.counters.unauthorized_replies == 2  # one challenge round trip each


# -- reply shapes, read from hand-written requests --------------------------------------------


def fault_of(reply: ET.Element | None) -> dict[str, Any]:
    assert reply is not None
    fault = reply.find("s:Body/s:Fault", NAMESPACES)
    assert fault is not None
    wsman_fault = fault.find("s:Detail/f:WSManFault", NAMESPACES)
    assert wsman_fault is not None
    return {
        "code": fault.findtext("s:Code/s:Value", namespaces=NAMESPACES),
        "subcode": fault.findtext("s:Code/s:Subcode/s:Value", namespaces=NAMESPACES),
        "detail": fault.findtext("s:Detail/w:FaultDetail", namespaces=NAMESPACES),
        "wsman_code": int(wsman_fault.get("Code", "0")),
        "machine": wsman_fault.get("Machine"),
        "provider": [
            p.get("provider") for p in wsman_fault.iterfind(".//f:ProviderFault", NAMESPACES)
        ],
    }


def create(server: WSManServer, environment: str = "") -> tuple[str, ET.Element]:
    body = (
        "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
        f"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams>{environment}</rsp:Shell>"
    )
    status, reply = soap(server, "Create", body)
    assert status == 200 and reply is not None
    shell_id = reply.findtext("s:Body/rsp:Shell/rsp:ShellId", namespaces=NAMESPACES)
    assert shell_id
    return shell_id, reply


UNEXPECTED_SELECTORS = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/UnexpectedSelectors"


def test_unknown_command_id_fault_has_the_recorded_shape(start_wsman: StartWSMan) -> None:
    """Rule F1 (pypsrp's recorded test_winrs_bad_cmd_id)."""
    server = start_wsman()
    shell_id, _ = create(server)
    receive = (
        '<rsp:Receive><rsp:DesiredStream CommandId="87E77BEB-6761-4C48-9D70-A00266B8459A">'
        "stdout stderr</rsp:DesiredStream></rsp:Receive>"
    )
    status, reply = soap(server, "Receive", receive, shell_id=shell_id)
    assert status == 500
    assert fault_of(reply) == {
        "code": "s:Sender",
        "subcode": "w:InvalidSelectors",
        "detail": UNEXPECTED_SELECTORS,
        "wsman_code": 2150858843,
        "machine": "127.0.0.1",
        "provider": [],
    }


def test_unknown_shell_id_fault_has_the_recorded_shape(start_wsman: StartWSMan) -> None:
    """Rule F2 (pypsrp's recorded test_psrp_is_alive_invalid_selectors)."""
    server = start_wsman()
    shell_id, _ = create(server)
    assert soap(server, "Delete", shell_id=shell_id)[0] == 200
    command = "<rsp:CommandLine><rsp:Command>echo</rsp:Command></rsp:CommandLine>"
    for action, body in [("Command", command), ("Delete", "")]:
        status, reply = soap(server, action, body, shell_id=shell_id)
        assert status == 500
        fault = fault_of(reply)
        assert (fault["code"], fault["subcode"], fault["detail"], fault["wsman_code"]) == (
            "s:Sender",
            "w:InvalidSelectors",
            UNEXPECTED_SELECTORS,
            INVALID_SELECTORS,
        )
        assert fault["provider"] == ["Shell provider"]


def test_operation_timeout_fault_has_the_recorded_shape(start_wsman: StartWSMan) -> None:
    """Rule F3 (pypsrp's recorded test_winrs_operation_timeout); the request says PT2S."""
    server = start_wsman()
    server.faults.handler_delay_s = 3
    shell_id, _ = create(server)
    command = "<rsp:CommandLine><rsp:Command>echo</rsp:Command></rsp:CommandLine>"
    _, reply = soap(server, "Command", command, shell_id=shell_id)
    assert reply is not None
    command_id = reply.findtext("s:Body/rsp:CommandResponse/rsp:CommandId", namespaces=NAMESPACES)
    receive = f'<rsp:Receive><rsp:DesiredStream CommandId="{command_id}">stdout</rsp:DesiredStream></rsp:Receive>'
    status, reply = soap(server, "Receive", receive, shell_id=shell_id)
    assert status == 500
    fault = fault_of(reply)
    assert (fault["code"], fault["subcode"], fault["wsman_code"]) == (
        "s:Receiver",
        "w:TimedOut",
        OPERATION_TIMEOUT,
    )


def test_create_response_has_the_recorded_fields_and_activity_id(
    start_wsman: StartWSMan,
) -> None:
    """Rules C1 and H1 (pypsrp's recorded test_winrs_standard and test_winrs_environment)."""
    server = start_wsman()
    variables = (
        '<rsp:Environment><rsp:Variable Name="A&lt;1">x &amp; y</rsp:Variable></rsp:Environment>'
    )
    _, reply = create(server, variables)
    assert reply.findtext("s:Header/p:ActivityId", namespaces=NAMESPACES)
    address = reply.findtext("s:Body/x:ResourceCreated/a:Address", namespaces=NAMESPACES)
    assert address == server.url
    shell = reply.find("s:Body/rsp:Shell", NAMESPACES)
    assert shell is not None
    assert [child.tag.split("}")[1] for child in shell] == [
        "ShellId",
        "ResourceUri",
        "Owner",
        "ClientIP",
        "Environment",
        "IdleTimeOut",
        "InputStreams",
        "OutputStreams",
        "ShellRunTime",
        "ShellInactivity",
    ]
    fields = {child.tag.split("}")[1]: child.text for child in shell}
    assert (fields["Owner"], fields["ClientIP"], fields["IdleTimeOut"]) == (
        LAB_USER,
        "127.0.0.1",
        "PT7200.000S",
    )
    assert fields["ShellRunTime"] == fields["ShellInactivity"] == "P0DT0H0M0S"
    variable = shell.find("rsp:Environment/rsp:Variable", NAMESPACES)
    assert variable is not None and (variable.get("Name"), variable.text) == ("A<1", "x & y")


def test_client_envelope_size_is_capped_by_the_server_and_has_a_floor(
    start_wsman: StartWSMan,
) -> None:
    """Rule Q2: replies stay within MaxEnvelopeSizekb; below 8192 octets is w:EncodingLimit."""
    server = start_wsman()
    status, reply = soap(server, "Create", "<rsp:Shell/>", max_envelope=4_096)
    fault = fault_of(reply)
    assert (status, fault["subcode"], fault["wsman_code"]) == (
        500,
        "w:EncodingLimit",
        ENVELOPE_SIZE_NOT_SUPPORTED,
    )
    server.max_output_per_receive = 10_000_000
    shell_id, _ = create(server)
    command = (
        "<rsp:CommandLine><rsp:Command>repeat</rsp:Command>"
        "<rsp:Arguments>2000000 x</rsp:Arguments></rsp:CommandLine>"
    )
    _, reply = soap(server, "Command", command, shell_id=shell_id, max_envelope=100_000_000)
    assert reply is not None
    command_id = reply.findtext("s:Body/rsp:CommandResponse/rsp:CommandId", namespaces=NAMESPACES)
    receive = f'<rsp:Receive><rsp:DesiredStream CommandId="{command_id}">stdout</rsp:DesiredStream></rsp:Receive>'
    soap(server, "Receive", receive, shell_id=shell_id, max_envelope=100_000_000)
    assert 400_000 < server.counters.largest_reply_bytes <= 500 * 1024


# -- the lab's own tools (fault injection, counters), through pywinrm --------------------------


def client(server: WSManServer, lab_tls: LabTLS, **kwargs: Any) -> Protocol:
    kwargs.setdefault("transport", "basic")
    return pywinrm_client(server, lab_tls, **kwargs).protocol


def test_handler_runs_at_first_receive_when_no_stdin_was_sent(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    shell = pywinrm_client(server, lab_tls).open()
    assert run_in(shell, "upper", [])[0] == b""
    assert server.counters.stdin_payloads == [b""]


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


def test_injected_fault_on_action_and_on_message_number(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = start_wsman()
    server.faults.fault_code = MAX_SHELLS_EXCEEDED
    server.faults.fault_on_action = "Command"
    server.faults.fault_times = 1
    shell = pywinrm_client(server, lab_tls).open()
    with pytest.raises(Refused) as caught:
        shell.command("echo", [])
    assert caught.value.code == MAX_SHELLS_EXCEEDED
    shell.command("echo", [])  # fault_times ran out

    server.faults.fault_code = OPERATION_TIMEOUT
    server.faults.fault_on_message = server.counters.total_messages + 1
    with pytest.raises(Refused) as caught:
        shell.command("echo", [])
    assert caught.value.code == OPERATION_TIMEOUT
    shell.command("echo", [])


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


def test_injected_bare_http_status(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    server.faults.http_status_on_action = ("Receive", 503)
    server.faults.http_status_times = 1
    shell = pywinrm_client(server, lab_tls).open()
    command_id = shell.command("echo", ["x"])
    with pytest.raises(Refused) as caught:
        shell.receive(command_id)
    assert (caught.value.http, caught.value.code) == (503, None)
    assert shell.receive(command_id)[0] == b"x\r\n"


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
    shell = pywinrm_client(server, lab_tls).open()
    for _ in range(5):
        run_in(shell, "echo", ["x"])
    assert server.counters.total_messages == 16
    assert server.counters.connections == 1


def test_handler_exception_is_a_failed_command(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    def broken(command: str, arguments: list[str], stdin: bytes) -> CommandResult:
        raise KeyError("no such resource")

    server = start_wsman(handler=broken)
    out, err, code = run_in(pywinrm_client(server, lab_tls).open(), "anything", [])
    assert (out, code) == (b"", 1)
    assert b"KeyError" in err
    assert len(server.handler_errors) == 1


def test_counters_reset_and_record_secrets_sent(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman()
    shell = pywinrm_client(server, lab_tls).open()
    run_in(shell, "upper", ["-token", "s3cr3t"], stdin=b"password=hunter2")
    assert any("s3cr3t" in line for line in server.counters.command_lines)
    assert any(b"hunter2" in payload for payload in server.counters.stdin_payloads)
    assert server.counters.command_options[0]["WINRS_CONSOLEMODE_STDIN"] == "TRUE"
    assert server.counters.signals == ["terminate"]
    server.counters.reset()
    assert (server.counters.total_messages, server.counters.command_lines) == (0, [])
    assert server.counters.signals == []


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


def test_wrong_ntlm_password_is_refused(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = start_wsman(allow_unencrypted=False)
    with pytest.raises(InvalidCredentialsError):
        client(server, lab_tls, transport="ntlm", password="wrong").open_shell()


def test_servers_with_one_account_name_and_other_passwords_run_side_by_side(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    """Two labs in one process: each server checks NTLM against its own account only, and the
    process environment is left as it was (the provisioner's threads read it meanwhile)."""
    environment = dict(os.environ)
    first = start_wsman(allow_unencrypted=False, password=Secret("first-Pa55"))
    second = start_wsman(allow_unencrypted=False, password=Secret("second-Pa55"))
    for server, password in [(first, "first-Pa55"), (second, "second-Pa55")]:
        shell = pywinrm_client(server, lab_tls, password=password).open()
        assert run_in(shell, "echo", ["ok"])[0] == b"ok\r\n"
        with pytest.raises(Refused):
            pywinrm_client(server, lab_tls, password=f"other-{password}").open()
    assert dict(os.environ) == environment
