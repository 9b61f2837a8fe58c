"""What each tenant's PBX says, through the NFON CTI API: which lines exist, whether login works.

Per tenant and run: ONE login and ONE extension listing, tenants in parallel. A tenant whose
login or listing fails gets a problem of its own; the other tenants plan on::

    read_pbx(estate, inventory, ["k6732"]) →
        PbxFacts(extensions={"k6732": frozenset({"1200", "1254", ...})}, problems=[], calls=2)
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.models import Tenant
from provisioner.manifest.validate import Estate
from provisioner.plan.model import PlanProblem
from provisioner.transports.cti_api import CTIClient


@dataclass
class PbxFacts:
    extensions: dict[str, frozenset[str]] = field(default_factory=dict)  # tenant → numbers
    names: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant → number → name
    problems: list[PlanProblem] = field(default_factory=list)
    calls: int = 0


def client_for(estate: Estate, inventory: Inventory, tenant: Tenant) -> CTIClient:
    server = estate.servers[tenant.server]
    site = estate.site_of(server)
    settings = inventory.cti_api or (site.cti_api if site else None)
    base_url = settings.base_url if settings else None
    ca_file = settings.ca_file if settings else None
    if inventory.cti_api is not None and inventory.cti_api.ca_file:
        ca_file = inventory.path(inventory.cti_api.ca_file)
    kwargs = {"base_url": base_url} if base_url else {}
    return CTIClient(
        tenant.k_account,
        inventory.resolve(tenant.cti_password),
        verify=ca_file or True,
        **kwargs,  # type: ignore[arg-type]
    )


def read_pbx(
    estate: Estate, inventory: Inventory, tenants: Iterable[str], *, parallelism: int = 10
) -> PbxFacts:
    facts = PbxFacts()

    def one(name: str) -> tuple[str, dict[str, str] | None, str, int]:
        tenant = estate.tenants[name]
        try:
            with client_for(estate, inventory, tenant) as client:
                try:
                    extensions = client.extensions()
                    return name, {e.number: e.name for e in extensions}, "", client.calls
                except ProvisionerError as exc:
                    return name, None, str(exc), client.calls
        except ProvisionerError as exc:
            return name, None, str(exc), 0

    names = sorted(tenants)
    workers = max(1, min(parallelism, len(names)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, names))
    for name, numbers, error, calls in results:
        facts.calls += calls
        if numbers is None:
            facts.problems.append(PlanProblem(f"tenant {name}: NFON CTI API: {error}", tenant=name))
            continue
        facts.extensions[name] = frozenset(numbers)
        facts.names[name] = numbers
    return facts


def unassigned_extensions(estate: Estate, facts: PbxFacts) -> list[str]:
    """Notes for drift: extensions of a PBX that no assignment names (information only)."""
    notes = []
    for name, numbers in sorted(facts.extensions.items()):
        assigned = {line for a in estate.tenants[name].assignments for line in a.lines}
        spare = sorted(numbers - assigned, key=lambda x: (len(x), x))
        if spare:
            notes.append(f"tenant {name}: extensions no one is assigned: {', '.join(spare)}")
    return notes
