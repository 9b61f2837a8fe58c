"""Apply, then plan: nothing left to do (no perpetual diffs from normalisation).

For both examples, and for generated estates whose manifests spell the same things in many
valid ways (ports out of order, ``x`` and ``x-x``, all profiles for ``any``, names in either case).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.manifest import load_estate
from provisioner.resources.package import version_key
from tests.loop.generated import EstateSpec, estates, layout_of, write_estate
from tests.support.lab import EXAMPLES, LabEstate, LabFor, running_lab


def assert_apply_then_nothing(estate: LabEstate) -> None:
    first = estate.plan()
    assert first.code == 2, first.output
    applied = estate.apply()
    assert applied.code == 0, applied.output
    again = estate.plan()
    assert again.code == 0, f"a plan right after apply is not empty:\n{again.output}"
    assert "No changes" in again.out
    drift = estate.drift()
    assert drift.code == 0, drift.output


@pytest.mark.parametrize("example", ["client-tapi", "multi-tenant"])
def test_example_apply_then_plan_is_empty(lab_for: LabFor, example: str) -> None:
    estate = lab_for(EXAMPLES / example)
    assert_apply_then_nothing(estate)
    # and a second apply has nothing to do: it exits 0 without sending a batch (each host: its
    # gather, then its lock given back)
    estate.reset_counters()
    second = estate.apply()
    assert second.code == 0, second.output
    assert set(estate.commands().values()) == {2}, estate.commands()
    assert set(estate.batches().values()) == {0}, estate.batches()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=estates())
def test_generated_estate_apply_then_plan_is_empty(spec: EstateSpec) -> None:
    with tempfile.TemporaryDirectory(prefix="generated-") as temporary:
        directory = Path(temporary)
        manifests = write_estate(spec, directory / "manifests")
        _, errors = load_estate([manifests])
        assert not errors, [str(e) for e in errors]  # the generator writes valid manifests only
        with running_lab(directory, manifests) as estate:
            assert_apply_then_nothing(estate)


@st.composite
def transitions(draw: st.DrawFn) -> tuple[EstateSpec, EstateSpec]:
    """An estate and a later version of it: same hosts and tenants, everything else redrawn,
    except that the package is never older (a downgrade is a plan problem, not a change)."""
    before = draw(estates())
    after = draw(estates(layout_of(before)))
    installed = {server.name: server.package_version or "0" for server in before.servers}
    servers = [
        replace(
            server,
            package_version=max(server.package_version, installed[server.name], key=version_key),
        )
        if server.package_version
        else server
        for server in after.servers
    ]
    return before, replace(after, servers=servers)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(versions=transitions())
def test_applying_a_changed_estate_leaves_nothing_to_do(
    versions: tuple[EstateSpec, EstateSpec],
) -> None:
    """Updates, not only creations: lines moved between users, rules re-spelled or replaced,
    formats and levels changed, the shared user's lines across tenants replaced."""
    before, after = versions
    with tempfile.TemporaryDirectory(prefix="generated-") as temporary:
        directory = Path(temporary)
        first = write_estate(before, directory / "before")
        second = write_estate(after, directory / "after")
        with running_lab(directory, first, also=[second]) as estate:
            assert estate.apply().code == 0
            estate.manifests = second
            changed = estate.apply()
            assert changed.code == 0, changed.output
            again = estate.plan()
            assert again.code == 0, f"a plan right after apply is not empty:\n{again.output}"
