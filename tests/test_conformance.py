"""The conformance suite: the same cases against the lab's Windows model in-process and through
real WS-Management (pywinrm), and as a user runs it on a test server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from provisioner.conformance import CASES, run_cases
from provisioner.connectors import Connector, in_process
from provisioner.errors import ProvisionerError
from provisioner.lab.tls import LabTLS
from provisioner.lab.windows_host import SystemFile, WindowsHost, inherited_software_acl
from provisioner.planner import Host, profile_for
from provisioner.remote.contract import FirewallUpsert, TspInstanceConfigure
from provisioner.remote.host import RemoteHost
from provisioner.runner import gather_request
from provisioner.transports.winrm import WinRMSession
from tests.support.host_model import ModelEstate
from tests.support.lab import EXAMPLES, LabFor, write_manifests
from tests.support.testbed import TEST_SERVER, manifests_of_the_test_server, prepared_test_server
from tests.support.wsman import StartWSMan, endpoint_for

HOST = Host(f"server/{TEST_SERVER}", TEST_SERVER, "server")
CASE_NAMES = [name for name, _ in CASES] + ["cleanup"]
Connect = Callable[[WindowsHost], Any]


@pytest.fixture
def testbed(tmp_path: Path) -> ModelEstate:
    return prepared_test_server(tmp_path)


@pytest.fixture(params=["in-process", "ws-management"])
def connect_to(request: pytest.FixtureRequest, start_wsman: StartWSMan, lab_tls: LabTLS) -> Connect:
    """A connector to a lab host: its handler called directly, or behind a WS-Management
    listener reached with pywinrm over HTTPS."""

    @contextmanager
    def over_wsman(windows: WindowsHost) -> Iterator[Connector]:
        server = start_wsman(tls=True, handler=windows)
        session = WinRMSession(endpoint_for(server, ca_file=lab_tls.ca_file))
        with RemoteHost(TEST_SERVER, session) as remote:
            yield remote

    @contextmanager
    def directly(windows: WindowsHost) -> Iterator[Connector]:
        with in_process({TEST_SERVER: windows})(HOST) as remote:
            yield remote

    return directly if request.param == "in-process" else over_wsman


def run(model: ModelEstate, connect_to: Connect) -> dict[str, tuple[bool, str]]:
    request, profile = gather_request(model.estate, HOST), profile_for(model.estate, HOST)
    with connect_to(model.windows(TEST_SERVER)) as connector:
        return {r.name: (r.passed, r.message) for r in run_cases(connector, request, profile)}


def leftovers(windows: WindowsHost) -> list[str]:
    state = windows.state
    return [r.name for r in state.firewall_rules] + [
        name for name in [*state.system32, *state.tsp_settings] if "conformance" in name
    ]


def test_every_case_passes_on_the_lab_model(testbed: ModelEstate, connect_to: Connect) -> None:
    results = run(testbed, connect_to)
    assert list(results) == CASE_NAMES
    assert {name: passed for name, (passed, _) in results.items()} == dict.fromkeys(
        CASE_NAMES, True
    ), results
    assert leftovers(testbed.windows(TEST_SERVER)) == []


def test_a_host_that_leaves_the_instance_key_open_fails_that_case(
    testbed: ModelEstate, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = WindowsHost._tsp_instance_configure

    def inherit(self: WindowsHost, op: TspInstanceConfigure) -> dict[str, object]:
        data = real(self, op)
        record = self.settings_of(op.instance)
        assert record is not None
        record.acl = inherited_software_acl()  # as a script that forgot the ACL would leave it
        return data

    monkeypatch.setattr(WindowsHost, "_tsp_instance_configure", inherit)
    results = run(testbed, lambda windows: in_process({TEST_SERVER: windows})(HOST))
    passed, message = results["TSP instance created"]
    assert not passed
    assert message.startswith("the settings key is not protected and readable by ")
    assert "BUILTIN\\USERS" in message
    assert all(ok for name, (ok, _) in results.items() if name != "TSP instance created")


def test_what_a_failed_case_leaves_is_cleaned_up(
    testbed: ModelEstate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that writes another port than asked fails the firewall case with the rule
    still there; the cleanup removes it."""
    real = WindowsHost._firewall_upsert

    def wrong_port(self: WindowsHost, op: FirewallUpsert) -> dict[str, object]:
        return real(
            self, op.model_copy(update={"rule": op.rule.model_copy(update={"local_ports": "1"})})
        )

    monkeypatch.setattr(WindowsHost, "_firewall_upsert", wrong_port)
    windows = testbed.windows(TEST_SERVER)
    results = run(testbed, lambda w: in_process({TEST_SERVER: w})(HOST))
    assert results["firewall rule"] == (
        False,
        "after writing port 9, the group shows (ports, enabled) [('1', False)]",
    )
    assert results["cleanup"] == (True, "nothing of the run is left on the host")
    assert leftovers(windows) == []


def test_a_host_holding_a_tsp_instance_is_refused_before_anything_changes(
    testbed: ModelEstate,
) -> None:
    windows = testbed.windows(TEST_SERVER)
    windows.state.system32["nfontsp_k6732.tsp"] = SystemFile("NFONTSP_K6732.TSP")  # left behind
    windows.record.clear()
    request, profile = gather_request(testbed.estate, HOST), profile_for(testbed.estate, HOST)
    with (
        in_process({TEST_SERVER: windows})(HOST) as connector,
        pytest.raises(ProvisionerError) as refused,
    ):
        run_cases(connector, request, profile)
    assert str(refused.value) == (
        "TAPITEST holds tenants (TSP instance K6732): conformance runs only on a test server "
        "that holds none; name one with --server"
    )
    assert len(windows.record) == 1  # the one gather that looked


def test_conformance_on_a_lab_test_server_from_the_command_line(
    lab_for: LabFor, tmp_path: Path
) -> None:
    estate = lab_for(write_manifests(tmp_path / "testbed", manifests_of_the_test_server()))
    assert estate.apply().code == 0
    result = estate.cli("conformance", estate.manifests, "--server", TEST_SERVER)
    assert result.code == 0, result.output
    lines = result.out.splitlines()
    assert [line.split(" (")[0] for line in lines[:-1]] == [f"  ✓ {n}" for n in CASE_NAMES]
    assert lines[-1].startswith(f"{TEST_SERVER}: {len(CASE_NAMES)} of {len(CASE_NAMES)} cases")
    assert leftovers(estate.windows(TEST_SERVER)) == []


def test_conformance_refuses_a_server_the_manifests_give_tenants_in_one_line(
    lab_for: LabFor,
) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    result = estate.cli("conformance", estate.manifests, "--server", "tapi01")
    assert result.code == 1
    assert result.out == ""
    assert result.err == (
        "error: the manifests put tenants on this host (k6732): conformance runs only on a test "
        "server that holds none; name one with --server\n"
    )
    assert estate.commands()["tapi01"] == 0  # refused before anything was sent
