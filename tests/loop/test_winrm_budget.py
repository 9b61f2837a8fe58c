"""Round trips: a host's cost does not grow with its resources.

A plan is ONE gather command per host; an apply is the plan's gather, ONE batch and ONE
verifying gather. The one documented exception: a server whose batch creates a TSP instance
gets a second gather and batch, for the lines the new instance shows only after its restart.
A plan also reads each tenant's PBX with one login and one listing. A package sent from the
workstation is one more command, before the batch, and only when the host must install it and
does not hold it yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.remote import scripts
from tests.loop.generated import (
    AssignmentSpec,
    EstateSpec,
    RuleSpec,
    ServerSpec,
    TenantSpec,
    write_estate,
)
from tests.support.lab import EXAMPLES, LabEstate, LabFor

FIRST_APPLY_WITH_NEW_INSTANCE = ["gather", "apply", "gather", "apply", "gather"]
APPLY = ["gather", "apply", "gather"]


def scripts_run(estate: LabEstate) -> dict[str, list[str]]:
    """Per host, the scripts of the commands it received since the counters were reset; an
    empty batch that only gives the host's lock back is a ``release``."""
    return {
        name: [scripts.kind_of(payload) for payload in host.server.counters.stdin_payloads]
        for name, host in estate.lab.hosts.items()
    }


def change_every_host(estate: LabEstate) -> None:
    for host in estate.lab.hosts.values():
        with host.windows.lock:
            host.windows.state.firewall_rules[0].enabled = False


def test_a_plan_is_one_gather_per_host_and_one_login_and_listing_per_tenant(
    lab_for: LabFor,
) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    estate.reset_counters()
    assert estate.plan().code == 2
    assert scripts_run(estate) == {"crm01": ["gather"]}
    assert estate.lab.cti is not None
    for k_account in ("K6732", "K7001", "K8450"):
        assert estate.lab.cti.count(k_account, path="/login", method="POST") == 1
        assert estate.lab.cti.count(k_account, path="/extensions/phone/data", method="GET") == 1
        assert estate.lab.cti.count(k_account) == 2


def test_an_apply_is_one_batch_and_one_verifying_gather_per_host(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    estate.reset_counters()
    assert estate.apply().code == 0
    assert scripts_run(estate) == {
        "tapi01": FIRST_APPLY_WITH_NEW_INSTANCE,
        "ws-0101": APPLY,
        "ws-0102": APPLY,
        "ws-0103": APPLY,
    }
    change_every_host(estate)
    estate.reset_counters()
    assert estate.apply().code == 0
    assert set(map(tuple, scripts_run(estate).values())) == {tuple(APPLY)}
    # one shell per host for the whole command
    assert {h.server.counters.messages.get("Create") for h in estate.lab.hosts.values()} == {1}


def requests_sent(estate: LabEstate, host: str) -> list[dict[str, Any]]:
    """The requests (JSON) of the commands a host received since the counters were reset."""
    payloads = estate.server(host).counters.stdin_payloads
    return [scripts.parse_payload(payload)[1] for payload in payloads]


def test_the_hosts_lock_costs_no_command_of_its_own(lab_for: LabFor) -> None:
    """The plan's gather takes the lock, the batch renews it, the verifying gather gives it
    back; a host with nothing to do gets it back with one empty batch instead."""
    estate = lab_for(EXAMPLES / "client-tapi")
    estate.reset_counters()
    assert estate.apply().code == 0
    for host in ("tapi01", "ws-0101"):
        locks = [request["lock"] for request in requests_sent(estate, host)]
        assert all(lock["owner"] == locks[0]["owner"] for lock in locks)
        assert [lock["release"] for lock in locks] == [False] * (len(locks) - 1) + [True]
        assert estate.windows(host).state.lock is None
    estate.reset_counters()
    assert estate.apply().code == 0  # nothing to do
    for host in estate.lab.hosts:
        [gather, release] = requests_sent(estate, host)
        assert gather["lock"]["release"] is False and "steps" not in gather
        assert release["steps"] == [] and release["lock"]["release"] is True
        assert estate.windows(host).state.lock is None
    estate.reset_counters()
    assert estate.plan().code == 0
    assert all(request["lock"] is None for request in requests_sent(estate, "tapi01"))


def estate_of(size: int) -> EstateSpec:
    """One server and a workstation; ``size`` tenants of ``10 * size`` users, ``5 * size`` rules."""
    tenants = [
        TenantSpec(
            f"k{2000 + t}",
            f"K{2000 + t}",
            "tapi01",
            assignments=[
                AssignmentSpec(f"NFON\\t{t}-user{u:03d}", [str(3000 + u), str(5000 + u)])
                for u in range(10 * size)
            ],
        )
        for t in range(size)
    ]
    rules = [
        RuleSpec(
            name=f"extra-{r}",
            direction="in",
            protocol="tcp",
            local_ports=[20000 + r, "7000-7010"],
            remote_ports=[],
            remote_addresses=[f"10.9.{r}.0/24"],
            profiles="any",
            action="allow",
            enabled=True,
            description=f"rule {r}",
        )
        for r in range(5 * size)
    ]
    return EstateSpec([ServerSpec("tapi01", 1, rules=rules)], tenants, clients=["ws-0001"])


def budget(lab_for: LabFor, directory: Path, size: int) -> tuple[int, list[dict[str, list[str]]]]:
    """(changes of the first plan, the scripts each phase sent): plan, apply, plan, apply again."""
    estate = lab_for(write_estate(estate_of(size), directory))
    changes = len(estate.plan_json()["resource_changes"])
    phases = []
    for phase in ("plan", "apply", "plan", "apply again"):
        if phase == "apply again":
            change_every_host(estate)
        estate.reset_counters()
        result = estate.plan() if phase == "plan" else estate.apply()
        assert result.code in (0, 2), result.output
        phases.append(scripts_run(estate))
    return changes, phases


def test_the_round_trips_do_not_grow_with_the_number_of_resources(
    lab_for: LabFor, tmp_path: Path
) -> None:
    small_changes, small = budget(lab_for, tmp_path / "small", 1)
    large_changes, large = budget(lab_for, tmp_path / "large", 4)
    assert large_changes > 5 * small_changes  # the comparison means something
    assert small == large
    assert small[0] == {"tapi01": ["gather"], "ws-0001": ["gather"]}
    assert small[1] == {"tapi01": FIRST_APPLY_WITH_NEW_INSTANCE, "ws-0001": APPLY}
    assert small[3] == {"tapi01": APPLY, "ws-0001": APPLY}


def test_a_workstation_package_is_sent_once_before_the_batch_that_installs_it(
    lab_for: LabFor, tmp_path: Path
) -> None:
    anna = AssignmentSpec("NFON\\anna", ["3000"])
    tenant = TenantSpec("k2000", "K2000", "tapi01", assignments=[anna])
    spec = EstateSpec([ServerSpec("tapi01", 1, package_from="workstation")], [tenant])
    estate = lab_for(write_estate(spec, tmp_path / "manifests"))
    estate.reset_counters()
    assert estate.apply().code == 0
    assert scripts_run(estate) == {
        "tapi01": ["gather", "upload", *FIRST_APPLY_WITH_NEW_INSTANCE[1:]]
    }
    change_every_host(estate)
    estate.reset_counters()
    assert estate.apply().code == 0
    assert scripts_run(estate) == {"tapi01": APPLY}
    with estate.windows("tapi01").lock:  # uninstalled behind our back: the host still holds it
        estate.windows("tapi01").state.products.clear()
    estate.reset_counters()
    assert estate.apply().code == 0
    assert scripts_run(estate) == {"tapi01": APPLY}
