"""Tamper actions change a running lab behind the provisioner's back, and say clearly when not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from provisioner.errors import ProvisionerError
from provisioner.lab.tamper import ACTIONS, tamper
from provisioner.remote.tsecimp import merge_providers, parse_listing
from tests.support.lab import EXAMPLES, LabEstate, LabFor, running_lab


@pytest.fixture(scope="module")
def untouched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabEstate]:
    """A lab no test changes (the actions here are refused)."""
    with running_lab(tmp_path_factory.mktemp("tamper"), EXAMPLES / "client-tapi") as estate:
        yield estate


def test_actions_change_the_model_and_its_listener(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    windows = estate.windows("tapi01")
    tamper(estate.lab, "tapi01", "set-system", "elevated=false")
    tamper(estate.lab, "tapi01", "set-system", "pending_reboot=Windows Update, file renames")
    tamper(estate.lab, "tapi01", "set-system", "system_drive_free_bytes=1024")
    assert (windows.state.system.elevated, windows.state.system.pending_reboot) == (
        False,
        ["Windows Update", "file renames"],
    )
    assert windows.state.system.system_drive_free_bytes == 1024
    tamper(estate.lab, "tapi01", "set-winrm", "max_envelope_size_kb=150")
    assert (windows.state.winrm.max_envelope_size_kb, estate.server("tapi01").max_envelope_kb) == (
        150,
        150,
    )
    tamper(estate.lab, "tapi01", "open-rpc-port", "135")
    assert windows.state.firewall_rules[-1].local_ports == "135"


def test_a_forged_line_name_prints_an_entry_of_another_line(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    windows = estate.windows("tapi01")

    def k6732_lines() -> list[str | None]:
        listed = merge_providers(parse_listing(windows.tsecimp_listing() or ""))
        provider = next(p for p in listed if p.name.endswith("K6732"))
        return [line.addresses[0] if line.addresses else None for line in provider.lines]

    before = k6732_lines()
    assert "forge" in tamper(estate.lab, "tapi01", "forge-line-name", "K6732/1254")
    after = k6732_lines()
    assert len(after) == len(before) + 1  # a line the PBX does not have
    assert None in after  # the forged name's own line: the copy took its entries


@pytest.mark.parametrize(
    ("host", "action", "argument", "message"),
    [
        ("tapi01", "grow-horns", "x", "unknown tamper action 'grow-horns' (known: "),
        ("nope", "stop-service", "x", "lab has no host 'nope' (known: tapi01, "),
        ("tapi01", "stop-service", "Nope", "lab: tapi01 has no service 'Nope'"),
        ("tapi01", "set-system", "nope=1", "lab: tapi01 takes field=value, a field of: "),
        ("tapi01", "set-system", "system_drive_free_bytes=lots", "lab: tapi01 takes a whole"),
        ("tapi01", "install-package", "9.9", "lab: tapi01 knows no package of version '9.9'"),
        ("tapi01", "remove-file", "C:\\nope.exe", "lab: tapi01 has no file 'C:\\\\nope.exe'"),
        ("tapi01", "open-rpc-port", "http", "lab: tapi01 cannot open 'http': not a port number"),
        ("tapi01", "forge-line-name", "K0000/1", "lab: 'K0000'"),
    ],
)
def test_an_action_that_cannot_be_done_says_why_in_one_line(
    untouched: LabEstate, host: str, action: str, argument: str, message: str
) -> None:
    with pytest.raises(ProvisionerError) as refused:
        tamper(untouched.lab, host, action, argument)
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_every_action_is_described() -> None:
    assert all(text and not text.endswith(".") for text in ACTIONS.values())
