"""Rollouts against the lab, through the command line: waves converge, a second rollout has
nothing to do, a wave that fails too much halts and ``--resume`` converges once the fault is
gone, and each host costs one gather and one batch per wave."""

from __future__ import annotations

from pathlib import Path

from provisioner.state.rollouts import Rollouts, RolloutState
from tests.loop.generated import AssignmentSpec, EstateSpec, ServerSpec, TenantSpec, write_estate
from tests.loop.test_winrm_budget import scripts_run
from tests.support.lab import EXAMPLES, CliResult, LabEstate, LabFor


def rollout(estate: LabEstate, *extra: str | Path) -> CliResult:
    return estate.cli("rollout", estate.manifests, "--auto-approve", *extra)


def state_of(estate: LabEstate, run_id: int | None = None) -> RolloutState:
    """A rollout's state (the latest one without an ID: rollouts share their IDs with runs)."""
    with estate.store() as store:
        rollouts = Rollouts(store)
        chosen = rollouts.latest() if run_id is None else run_id
        assert chosen is not None, "no rollout was recorded"
        return rollouts.load(chosen)


def tenant_states(state: RolloutState) -> dict[str, tuple[int, str]]:
    return {t.tenant: (t.wave, t.status) for t in state.tenants}


def instances(estate: LabEstate, server: str) -> set[str]:
    return {r.k_account for r in estate.windows(server).state.tsp_settings.values()}


def three_servers(directory: Path, *, tenants_per_server: int = 3) -> Path:
    """srv1..srv3, each with its own tenants (two users, two lines each)."""
    servers = [ServerSpec(f"srv{n}", n) for n in (1, 2, 3)]
    tenants = [
        TenantSpec(
            f"t{s}{t}",
            f"K{s}{t:03d}",
            f"srv{s}",
            assignments=[AssignmentSpec(f"NFON\\u{s}{t}{u}", [f"{100 + u}"]) for u in range(2)],
        )
        for s in (1, 2, 3)
        for t in range(tenants_per_server)
    ]
    return write_estate(EstateSpec(servers, tenants), directory)


def test_the_multi_tenant_example_converges_in_waves_and_a_second_rollout_has_nothing_to_do(
    lab_for: LabFor,
) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    first = rollout(estate, "--waves", "1,50%,100%")
    assert first.code == 0, first.output
    state = state_of(estate, 1)
    assert state.status == "complete"
    assert [w.status for w in state.waves] == ["done"] * 4
    # one tenant a wave, the canary first (in name order)
    assert tenant_states(state) == {
        "k6732": (1, "done"),
        "k7001": (2, "done"),
        "k8450": (3, "done"),
    }
    assert "Rollout 1 complete: 3 tenants: 3 done." in first.out
    assert instances(estate, "crm01") == {"K6732", "K7001", "K8450"}
    assert estate.plan().code == 0

    estate.reset_counters()
    second = rollout(estate, "--waves", "1,50%,100%")
    assert second.code == 0, second.output
    # one read, and the host's lock given back after its last wave: nothing else sent
    assert scripts_run(estate) == {"crm01": ["gather", "release"]}
    with estate.store() as store:
        assert store.batches(state_of(estate).run_id) == []


def test_a_wave_failing_past_the_threshold_halts_and_resume_converges(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    cti = estate.lab.cti
    assert cti is not None
    cti.outage("K7001")  # the second wave's tenant cannot log in to its PBX
    halted = rollout(estate, "--waves", "1,50%,100%")
    assert halted.code == 1, halted.output
    state = state_of(estate, 1)
    assert state.status == "halted"
    assert [w.status for w in state.waves] == ["done", "done", "halted", "waiting"]
    statuses = tenant_states(state)
    assert statuses["k6732"] == (1, "done")
    assert statuses["k7001"] == (2, "failed")
    assert statuses["k8450"] == (3, "waiting")  # not started
    failure = next(t for t in state.tenants if t.tenant == "k7001").message
    assert failure.startswith("held back: tenant k7001: "), failure
    assert "Not started: k8450" in halted.out
    assert "Resume with: provisioner rollout --resume 1" in halted.out
    assert instances(estate, "crm01") == {"K6732"}  # nothing of k7001 or k8450 was applied

    cti.end_outage("K7001")
    resumed = estate.cli("rollout", "--resume", "1", "--auto-approve")
    assert resumed.code == 0, resumed.output
    assert state_of(estate, 1).status == "complete"
    assert set(tenant_states(state_of(estate, 1)).values()) == {
        (1, "done"),
        (2, "done"),
        (3, "done"),
    }
    assert estate.plan().code == 0


def test_failures_within_the_threshold_go_on_and_exit_1(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.lab.cti is not None
    estate.lab.cti.outage("K7001")
    result = rollout(estate, "--waves", "1,50%,100%", "--max-failures", "1")
    assert result.code == 1, result.output
    state = state_of(estate, 1)
    assert state.status == "complete"
    assert tenant_states(state)["k8450"] == (3, "done")
    assert tenant_states(state)["k7001"] == (2, "failed")
    assert "tenant k7001 (wave 2, crm01): held back: tenant k7001: " in result.out


def test_a_manifest_pins_a_tenants_wave(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    manifest = estate.manifests / "k8450.yaml"
    manifest.write_text(manifest.read_text() + "wave: 1\n")
    assert rollout(estate, "--waves", "1,100%").code == 0
    states = tenant_states(state_of(estate, 1))
    assert states == {"k8450": (1, "done"), "k6732": (2, "done"), "k7001": (2, "done")}


def test_each_host_costs_one_gather_and_one_batch_per_wave(lab_for: LabFor, tmp_path: Path) -> None:
    estate = lab_for(three_servers(tmp_path / "manifests"))
    assert rollout(estate, "--waves", "1,50%,100%").code == 0
    assert estate.plan().code == 0
    # every tenant changes: a rollout of the change, wave by wave
    for manifest in estate.manifests.glob("t*.yaml"):
        manifest.write_text(manifest.read_text().replace("debug_level: 0", "debug_level: 3"))
    estate.reset_counters()
    result = rollout(estate, "--waves", "1,50%,100%")
    assert result.code == 0, result.output
    state = state_of(estate)
    waves_of = {
        name: sum(any(t.server == name for t in wave.tenants) for wave in state.waves)
        for name in ("srv1", "srv2", "srv3")
    }
    assert sum(waves_of.values()) > 3  # some server takes part in more than one wave
    # wave 0 reads each host (nothing to do there); then per wave of the host ONE batch and
    # ONE verifying gather, whose facts plan the host's next wave
    assert scripts_run(estate) == {
        name: ["gather"] + ["apply", "gather"] * waves_of[name] for name in waves_of
    }
    assert estate.plan().code == 0


def test_targets_narrow_a_rollout_to_tenants_and_servers(lab_for: LabFor, tmp_path: Path) -> None:
    estate = lab_for(three_servers(tmp_path / "manifests"))
    result = rollout(estate, "--target", "server=srv2", "--target", "tenant=t11")
    assert result.code == 0, result.output
    state = state_of(estate, 1)
    assert {t.tenant for t in state.tenants} == {"t11", "t20", "t21", "t22"}
    assert sorted(u.host for u in state.waves[0].units) == ["server/srv1", "server/srv2"]
    assert instances(estate, "srv3") == set()
    assert instances(estate, "srv1") == {"K1001"}

    for selector, expected in [
        ("tenant=nobody", "--target 'tenant=nobody' matches nothing in the manifests"),
        ("server/srv1/*", "a rollout works whole tenants and hosts: use tenant=NAME"),
    ]:
        refused = rollout(estate, "--target", selector)
        assert refused.code == 1
        assert expected in refused.err and "Traceback" not in refused.output


def test_rollout_status_shows_the_latest_or_any_rollout(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.cli("rollout", "status").code == 1  # none yet
    assert rollout(estate, "--waves", "1,100%").code == 0
    latest = estate.cli("rollout", "status")
    assert latest.code == 0
    assert latest.out.startswith("Rollout 1 complete: 3 tenants: 3 done.")
    markdown = estate.cli("rollout", "status", "1", "--format", "markdown")
    assert "| 1 | canary | done | 1 | 1 tenant: 1 done |" in markdown.out
    missing = estate.cli("rollout", "status", "9")
    assert missing.code == 1 and "there is no rollout 9" in missing.err


def test_a_read_that_ran_again_is_kept_with_its_unit(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    server = estate.server("crm01")
    server.faults.http_status_on_action = ("Receive", 503)
    server.faults.http_status_times = 1  # the first gather's reply is lost once
    result = rollout(estate, "--waves", "100%")
    assert result.code == 0, result.output
    [retried] = [line for line in result.err.splitlines() if "retried" in line]
    assert retried.startswith("crm01: gather retried in a fresh shell after: ")
    [wave_0] = state_of(estate).waves[0].units
    assert (wave_0.status, wave_0.message) == ("done", retried)
