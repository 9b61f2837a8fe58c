"""The captured and hand-made host outputs in ``tests/fixtures/hosts/`` (see its README).

Each folder holds what one host printed (``listing.txt``, and for captures ``facts.json``,
``doctor.json``, ``versions.txt``) and ``expected.json``: what it is, the example manifests it
belongs to (``example``, ``server``) and, where someone checked it by hand, the providers and
problems the listing must read as::

    for fixture in host_fixtures():
        fixture.listing, fixture.expected.get("problems")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.manifest import load_estate
from provisioner.manifest.validate import Estate
from provisioner.planner import Host, PlanInputs, context
from provisioner.remote.contract import HostFacts, SealKey
from provisioner.resources.base import HostContext
from tests.support.lab import EXAMPLES

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"


@dataclass(frozen=True)
class HostFixture:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def expected(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "expected.json").read_text("utf-8"))
        return data

    @property
    def listing(self) -> str | None:
        """As the host printed it: byte order mark and line breaks kept."""
        path = self.path / "listing.txt"
        return path.read_bytes().decode("utf-8") if path.is_file() else None

    @property
    def facts(self) -> HostFacts | None:
        path = self.path / "facts.json"
        return HostFacts.model_validate_json(path.read_bytes()) if path.is_file() else None

    @property
    def doctor(self) -> dict[str, str] | None:
        """Each check's status as the capture's doctor run reported it."""
        path = self.path / "doctor.json"
        if not path.is_file():
            return None
        return {c["check"]: c["status"] for c in json.loads(path.read_text("utf-8"))["checks"]}

    def estate(self) -> Estate:
        estate, errors = load_estate([EXAMPLES / self.expected["example"]])
        assert not errors
        return estate

    def host(self) -> Host:
        name = self.expected["server"]
        role = "server" if name in self.estate().servers else "client"
        return Host(f"{role}/{name}", name, role)

    def context(self) -> HostContext:
        """The example server's plan context over these facts (or a bare listing's)."""
        facts = self.facts or HostFacts(
            computer_name=self.name,
            role="server",
            seal_key=SealKey(modulus="", exponent=""),
            tsecimp_listing=self.listing,
        )
        host = self.host()
        return context(self.estate(), host, PlanInputs(facts={host.key: facts}))


def host_fixtures() -> list[HostFixture]:
    return [HostFixture(path) for path in sorted(FIXTURES.iterdir()) if path.is_dir()]
