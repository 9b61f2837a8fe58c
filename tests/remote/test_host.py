"""One host as the provisioner sees it: the simulated Windows host behind the lab's WS-Management
listener, reached through the real transport."""

from __future__ import annotations

import pytest

from provisioner.lab.tls import LabTLS
from provisioner.lab.windows_host import WindowsHost
from provisioner.lab.wsman_server import WSManServer
from provisioner.remote.contract import ApplyRequest, GatherRequest, LockRequest
from provisioner.remote.host import HostError, RemoteHost, RetryEvent
from provisioner.transports.winrm import WinRMSession
from tests.support.lab import EXAMPLES, LabFor
from tests.support.wsman import StartWSMan, endpoint_for

GATHER = GatherRequest(role="client", firewall_group="NFON-TAPI-Provisioner")

# What powershell.exe prints in Constrained Language Mode, as CLIXML error records (rule S1 of
# the lab server), line by line.
CONSTRAINED = [
    "Cannot invoke method. Method invocation is supported only on core types in this language",
    "mode.",
    "At line:1 char:1",
    "+ [Console]::InputEncoding = [Text.UTF8Encoding]::new($false)",
    "    + CategoryInfo          : InvalidOperation: (:) [], RuntimeException",
    "    + FullyQualifiedErrorId : MethodInvocationNotSupportedInConstrainedLanguage",
]


def remote_host(server: WSManServer, lab_tls: LabTLS, **kwargs: object) -> RemoteHost:
    session = WinRMSession(endpoint_for(server, ca_file=lab_tls.ca_file))
    return RemoteHost("tapi01", session, **kwargs)  # type: ignore[arg-type]


def lab_host(start_wsman: StartWSMan) -> WSManServer:
    return start_wsman(tls=True, handler=WindowsHost.fresh("TAPI01", "client"))


def test_powershell_failing_before_the_script_is_one_line_with_its_exit_code(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = lab_host(start_wsman)
    server.faults.powershell_fails_with = CONSTRAINED
    with pytest.raises(HostError) as caught, remote_host(server, lab_tls) as host:
        host.gather(GATHER)
    message = str(caught.value)
    assert message.startswith(
        "tapi01: powershell.exe failed before the script ran (exit code 1): Cannot invoke "
        "method. Method invocation is supported only on core types in this language mode. "
        "At line:1 char:1 + [Console]::InputEncoding"
    )
    assert "FullyQualifiedErrorId : MethodInvocationNotSupportedInConstrainedLanguage" in message
    assert "\n" not in message and "<Objs" not in message and "_x000D_" not in message


def test_a_gather_hit_by_a_broken_connection_runs_again_and_is_recorded(
    start_wsman: StartWSMan, lab_tls: LabTLS
) -> None:
    server = lab_host(start_wsman)
    server.faults.drop_after_messages = 3  # Create, Command, Send answered; Receive dropped
    server.faults.drop_times = 1
    heard: list[RetryEvent] = []
    with remote_host(server, lab_tls, on_retry=heard.append) as host:
        facts = host.gather(GATHER)
    assert facts.computer_name == "TAPI01"
    assert host.retries == heard
    [event] = heard
    assert (event.host, event.operation) == ("tapi01", "gather")
    assert event.line().startswith(
        f"tapi01: gather retried in a fresh shell after: WinRM 127.0.0.1:{server.port} "
    )
    assert server.counters.commands == 2


def test_an_apply_is_never_retried(start_wsman: StartWSMan, lab_tls: LabTLS) -> None:
    server = lab_host(start_wsman)
    server.faults.http_status_on_action = ("Receive", 503)
    request = ApplyRequest(lock=LockRequest(owner="test"), steps=[])
    with pytest.raises(HostError, match="HTTP 503"), remote_host(server, lab_tls) as host:
        host.apply(request)
    assert host.retries == []
    assert server.counters.commands == 1


def test_a_plan_says_in_one_line_which_host_was_retried_and_why(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    server = estate.server("tapi01")
    server.faults.http_status_on_action = ("Receive", 503)
    server.faults.http_status_times = 1
    result = estate.plan()
    assert result.code == 2, result.output  # the plan is whole: nothing lost, no problem
    retried = [line for line in result.err.splitlines() if "retried" in line]
    assert retried == [
        f"tapi01: gather retried in a fresh shell after: WinRM 127.0.0.1:{server.port} answered "
        "HTTP 503 without a WSMan fault: the WinRM service failed or is restarting; run again, "
        "and check the host's WinRM event log if it lasts"
    ]
    assert estate.commands()["tapi01"] == 2
    with estate.store() as store:
        [run] = store.runs(kind="plan")
    assert run.summary.splitlines()[1:] == retried  # the state store keeps it too
