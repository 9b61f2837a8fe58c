"""Connectors are the one way the runner (and every command) reaches a host."""

from __future__ import annotations

import ast
from pathlib import Path

import provisioner
from provisioner.connectors import in_process
from provisioner.host_locks import HostLocks
from provisioner.inventory import Inventory
from provisioner.manifest.models import WinRMSettings
from provisioner.planner import PlanInputs, build_plan
from provisioner.runner import Run
from tests.support.host_model import ModelEstate
from tests.support.state import Unrecorded
from tests.support.testbed import TEST_SERVER, manifests_of_the_test_server

PACKAGE = Path(provisioner.__file__).parent
# What builds a connection to a host: only the factory module may call these.
CONNECTION_MAKERS = {"RemoteHost", "WinRMSession", "InProcessShell"}
# Where they are defined, or where hosts are played rather than reached.
EXEMPT = {"connectors.py", "remote/host.py", "transports/winrm.py"}


def calls_in(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else None
            names.add(function.id if isinstance(function, ast.Name) else name or "")
    return names


def test_only_the_connector_factory_opens_connections_to_hosts() -> None:
    makers = {
        str(path.relative_to(PACKAGE)): sorted(calls_in(path) & CONNECTION_MAKERS)
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in EXEMPT and path.parts[-2] != "lab"
    }
    assert {name: found for name, found in makers.items() if found} == {}


def test_the_runner_plans_and_applies_through_the_connectors_it_is_given(tmp_path: Path) -> None:
    """Hosts behind an address nothing answers: only the in-process connectors reach them."""
    model = ModelEstate.of(tmp_path, manifests_of_the_test_server())
    windows = model.windows(TEST_SERVER)
    unreachable = WinRMSettings(host="127.0.0.1", port=9)
    inventory = Inventory(hosts={TEST_SERVER: unreachable}, secrets=model.values)
    connect = in_process({TEST_SERVER: windows})
    locks = HostLocks("test@connectors")
    with Run(model.estate, inventory, connect=connect, locks=locks) as run:
        facts, problems = run.gather()
        assert problems == []
        plan, host_plans = build_plan(model.estate, PlanInputs(facts, resolve=inventory.resolve))
        assert plan.has_changes
        [result] = run.apply(host_plans, Unrecorded())
        assert result.status == "ok", result.message
        again = PlanInputs(run.gather(release=True)[0], resolve=inventory.resolve)
        after, _ = build_plan(model.estate, again)
    assert not after.has_changes
    assert locks.held == [] and windows.state.lock is None
    assert windows.state.products  # the package the plan installed, in the model
