"""One precedence on every command path: an error (1) wins over changes or drift (2)."""

from __future__ import annotations

from provisioner.lab.tamper import tamper
from tests.support.lab import EXAMPLES, LabFor

RULE = "server/tapi01/firewall_rule/nfon-tapi-in-smb"


def test_an_error_wins_over_changes_and_drift(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")  # drift...
    estate.server("ws-0102").stop()  # ...and a host that cannot be read

    plan = estate.plan()
    assert plan.code == 1, plan.output
    assert RULE in plan.out and "ws-0102" in plan.out

    drift = estate.drift()
    assert drift.code == 1, drift.output
    assert RULE in drift.out

    applied = estate.apply()
    assert applied.code == 1, applied.output  # the rule is back; ws-0102 is still unread
    again = estate.plan()
    assert again.code == 1 and RULE not in again.out, again.output


def test_without_an_error_changes_and_drift_exit_2(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    assert estate.plan().code == 2
    assert estate.drift().code == 2
    assert estate.apply().code == 0
    assert estate.plan().code == 0 and estate.drift().code == 0
