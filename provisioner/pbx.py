"""What each tenant's PBX says, through the NFON CTI API: which lines exist, whether login works.

Per tenant and run: ONE login and ONE extension listing, tenants in parallel. A tenant whose
login or listing fails gets a problem of its own; the other tenants plan on::

    read_pbx(estate, inventory, ["k6732"]) →
        PbxFacts(extensions={"k6732": {"1200": "Reception", "1254": "Marius", ...}}, calls=2)
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from provisioner.errors import ProvisionerError
from provisioner.inventory import Inventory
from provisioner.manifest.models import CtiApiSettings, Tenant
from provisioner.manifest.validate import Estate
from provisioner.plan.model import PlanProblem
from provisioner.transports.cti_api import CTIClient


@dataclass
class PbxFacts:
    extensions: dict[str, dict[str, str]] = field(default_factory=dict)  # tenant → number → name
    problems: list[PlanProblem] = field(default_factory=list)
    calls: int = 0


def cti_settings(estate: Estate, inventory: Inventory, tenant: Tenant) -> CtiApiSettings:
    """The CTI API settings for a tenant: the inventory's, else its Site's (paths resolved)."""
    site = estate.site_of(estate.servers[tenant.server])
    settings = inventory.cti_api or (site.cti_api if site else None) or CtiApiSettings()
    if inventory.cti_api is not None and inventory.cti_api.ca_file:
        settings = settings.model_copy(
            update={"ca_file": inventory.path(inventory.cti_api.ca_file)}
        )
    return settings


class Transports:
    """One connection pool per CTI API endpoint, shared by every tenant's client.

    A thousand tenants would otherwise cost a thousand TLS handshakes and CA loads.
    """

    def __init__(self, parallelism: int) -> None:
        self._limits = httpx.Limits(
            max_connections=parallelism, max_keepalive_connections=parallelism
        )
        self._pools: dict[str | None, httpx.HTTPTransport] = {}
        self._lock = threading.Lock()

    def get(self, ca_file: str | None) -> httpx.HTTPTransport:
        with self._lock:  # tenants ask from many threads at once: build each pool once
            return self._get(ca_file)

    def _get(self, ca_file: str | None) -> httpx.HTTPTransport:
        if ca_file not in self._pools:
            try:
                verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
            except (OSError, ssl.SSLError) as exc:
                raise ProvisionerError(
                    f"the CA file {ca_file} for the NFON CTI API cannot be loaded ({exc}): "
                    "set cti_api.ca_file to a readable PEM file"
                ) from None
            self._pools[ca_file] = httpx.HTTPTransport(verify=verify, limits=self._limits)
        return self._pools[ca_file]

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def client_for(
    estate: Estate, inventory: Inventory, tenant: Tenant, transports: Transports
) -> CTIClient:
    settings = cti_settings(estate, inventory, tenant)
    return CTIClient(
        tenant.k_account,
        inventory.resolve(tenant.cti_password),
        base_url=settings.base_url,
        transport=transports.get(settings.ca_file),  # brings the TLS settings
        allow_insecure=settings.allow_insecure,
    )


def read_pbx(
    estate: Estate, inventory: Inventory, tenants: Iterable[str], *, parallelism: int = 10
) -> PbxFacts:
    facts = PbxFacts()

    transports = Transports(parallelism)

    def one(name: str) -> tuple[str, dict[str, str] | None, str, int]:
        tenant = estate.tenants[name]
        try:
            # not closed one by one: closing a client would close the shared pool
            client = client_for(estate, inventory, tenant, transports)
        except ProvisionerError as exc:
            return name, None, str(exc), 0
        try:
            extensions = client.extensions()
            return name, {e.number: e.name for e in extensions}, "", client.calls
        except ProvisionerError as exc:
            return name, None, str(exc), client.calls

    names = sorted(tenants)
    workers = max(1, min(parallelism, len(names)))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, names))
    finally:
        transports.close()
    for name, numbers, error, calls in results:
        facts.calls += calls
        if numbers is None:
            facts.problems.append(PlanProblem(f"tenant {name}: NFON CTI API: {error}", tenant=name))
            continue
        facts.extensions[name] = numbers
    return facts


def unassigned_extensions(estate: Estate, facts: PbxFacts) -> list[str]:
    """Notes for drift: extensions of a PBX that no assignment names (information only)."""
    notes = []
    for name, numbers in sorted(facts.extensions.items()):
        assigned = {line for a in estate.tenants[name].assignments for line in a.lines}
        spare = sorted(set(numbers) - assigned, key=lambda x: (len(x), x))
        if spare:
            notes.append(f"tenant {name}: extensions no one is assigned: {', '.join(spare)}")
    return notes
