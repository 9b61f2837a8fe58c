"""What all resource kinds share: matching desired and live resources."""

from __future__ import annotations

from provisioner.resources.base import Resource, pair_up


def resource(address: str) -> Resource:
    return Resource(address, "line_assignment", "crm01", {})


def test_addresses_pair_as_windows_compares_names() -> None:
    """Without case, one character at a time: ``ß`` has no capital in Windows' upcase table,
    so ``STRAßE`` and ``STRASSE`` are two accounts, while ``i`` and ``I`` are one."""
    wanted = [resource("tenant/t/line_assignment/NFON\\STRAßE"), resource("server/s/rule/Mixed")]
    found = [resource("tenant/t/line_assignment/nfon\\STRASSE"), resource("server/s/rule/mIXED")]
    pairs = [
        (w.address if w else None, f.address if f else None) for w, f in pair_up(wanted, found)
    ]
    assert pairs == [
        ("tenant/t/line_assignment/NFON\\STRAßE", None),
        ("server/s/rule/Mixed", "server/s/rule/mIXED"),
        (None, "tenant/t/line_assignment/nfon\\STRASSE"),
    ]
