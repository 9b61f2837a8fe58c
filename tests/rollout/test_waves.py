"""Which tenant goes in which wave, and when a wave has failed too much."""

from __future__ import annotations

import pytest

from provisioner.errors import ProvisionerError
from provisioner.rollout.waves import assign, exceeded, parse_threshold, parse_waves

TENANTS = [f"t{n:02d}" for n in range(20)]


def sizes(waves: list[list[str]]) -> list[int]:
    return [len(w) for w in waves]


def test_steps_count_tenants_cumulatively_canary_first_in_name_order() -> None:
    waves = assign(list(reversed(TENANTS)), parse_waves("1,10%,50%,100%"), {})
    assert sizes(waves) == [1, 1, 8, 10]
    assert waves[0] == ["t00"] and [t for w in waves for t in w] == TENANTS


def test_steps_that_add_nobody_leave_no_empty_wave_and_the_rest_goes_last() -> None:
    assert sizes(assign(TENANTS[:3], parse_waves("1,10%,50%,100%"), {})) == [1, 1, 1]
    assert sizes(assign(TENANTS, parse_waves("2,5"), {})) == [2, 3, 15]
    assert assign([], parse_waves("1,100%"), {}) == []


def test_a_pinned_tenant_goes_in_its_wave_and_counts_there() -> None:
    waves = assign(TENANTS[:4], parse_waves("1,50%,100%"), {"t03": 1, "t00": 3})
    assert waves == [["t03"], ["t01"], ["t00", "t02"]]
    assert assign(TENANTS[:2], parse_waves("1"), {"t01": 3}) == [["t00"], ["t01"]]


@pytest.mark.parametrize("text", ["0", "-1", "x", "150%", "0%", "1.5", ""])
def test_bad_steps_are_one_line(text: str) -> None:
    with pytest.raises(ProvisionerError) as refused:
        parse_waves(text)
    assert str(refused.value).startswith("--waves: ")


def test_thresholds_in_tenants_or_percent_of_the_wave() -> None:
    assert not exceeded(parse_threshold("0"), 0, 10)
    assert exceeded(parse_threshold("0"), 1, 10)
    assert not exceeded(parse_threshold("2"), 2, 3)
    assert exceeded(parse_threshold("2"), 3, 3)
    assert not exceeded(parse_threshold("10%"), 1, 10)
    assert exceeded(parse_threshold("10%"), 2, 10)
    assert exceeded(parse_threshold("10%"), 1, 5)  # 20 % failed
    with pytest.raises(ProvisionerError, match="--max-failures: 'x' is neither"):
        parse_threshold("x")
