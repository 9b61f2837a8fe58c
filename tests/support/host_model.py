"""Manifests planned and applied in-process against the lab's Windows model (no WinRM, no TLS).

Fast enough for resource tests, and the same code path as a real run from the plan to the
contract: the runner's gather request, the planner, the runner's batch and upload steps::

    model = ModelEstate.of(tmp_path, {"site.yaml": SITE, "tapi01.yaml": SERVER})
    plan = model.plan()                       # facts gathered from the modelled hosts
    responses = model.apply()                 # {"server/tapi01": ApplyResponse(...)}
    model.windows("tapi01").state.services    # the modelled host, to change behind our back
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.lab.windows_host import AdminSetup, WindowsHost
from provisioner.manifest import load_estate
from provisioner.manifest.models import SecretRef
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Action, Plan
from provisioner.planner import HostPlan, PlanInputs, build_plan, hosts, profile_for
from provisioner.remote.contract import (
    ApplyRequest,
    ApplyResponse,
    HostFacts,
    LockRequest,
    UploadRequest,
)
from provisioner.resources import package
from provisioner.runner import apply_request, build_steps, gather_request
from provisioner.secrets import Secret
from tests.support.lab import write_manifests

LOCK = LockRequest(owner="test@model")


@dataclass
class ModelEstate:
    estate: Estate
    windows_hosts: dict[str, WindowsHost]  # by host key, "server/tapi01"
    values: dict[str, str]  # a value for every {env: NAME} the manifests use
    uploads: list[str] = field(default_factory=list)  # "tapi01 <sha256>" per upload sent

    @classmethod
    def of(cls, directory: Path, files: dict[str, str], *, prepared: bool = True) -> ModelEstate:
        """Hosts for the manifests' servers, as their admin left them when ``prepared``
        (verpatch downloaded, service accounts created, packages published)."""
        estate, errors = load_estate([write_manifests(directory, files)])
        assert not errors, [str(e) for e in errors]
        values = {name: f"value-of-{name}" for name in _variables(estate)}
        setup: dict[str, AdminSetup] = {}
        for host in hosts(estate):
            if host.role == "server":
                setup.setdefault(host.key, AdminSetup()).learn(
                    estate.servers[host.name], profile_for(estate, host)
                )
        downloads = {url: c for s in setup.values() for url, c in s.downloads.items()}
        windows_hosts = {}
        for host in hosts(estate):
            windows = WindowsHost.fresh(
                host.name.upper(),
                host.role,
                web=downloads.get,  # type: ignore[arg-type]
            )
            if prepared:
                setup.get(host.key, AdminSetup()).prepare(windows, values)
            windows_hosts[host.key] = windows
        return cls(estate, windows_hosts, values)

    def windows(self, name: str) -> WindowsHost:
        return next(w for key, w in self.windows_hosts.items() if key.endswith(f"/{name}"))

    def facts(self) -> dict[str, HostFacts]:
        return {
            host.key: self.windows_hosts[host.key].gather(gather_request(self.estate, host))
            for host in hosts(self.estate)
        }

    def resolve(self, ref: SecretRef) -> Secret:
        assert ref.env is not None
        return Secret(self.values[ref.env])

    def build(self) -> tuple[Plan, dict[str, HostPlan]]:
        return build_plan(self.estate, PlanInputs(facts=self.facts(), resolve=self.resolve))

    def plan(self) -> Plan:
        return self.build()[0]

    def apply(self) -> dict[str, ApplyResponse]:
        """One batch per host with changes, packages uploaded first, under the host's lock, as
        the runner does (the lock taken by a gather before, given back after)."""
        _, host_plans = self.build()
        responses = {}
        for key, host_plan in host_plans.items():
            acting = [c for c in host_plan.changes if c.action is not Action.NOOP]
            if not acting:
                continue
            steps, _ = build_steps(host_plan, acting)
            windows = self.windows_hosts[key]
            windows.gather(gather_request(self.estate, host_plan.host, LOCK))
            for path, sha256 in package.uploads(host_plan.context, [s.operation for s in steps]):
                content = base64.b64encode(path.read_bytes()).decode()
                windows.upload(UploadRequest(name=path.name, sha256=sha256, content=content))
                self.uploads.append(f"{host_plan.host.name} {sha256}")
            responses[key] = windows.apply(apply_request(host_plan, LOCK, steps))
            windows.apply(ApplyRequest(lock=LOCK.model_copy(update={"release": True}), steps=[]))
        return responses


def _variables(estate: Estate) -> set[str]:
    refs: list[SecretRef | None] = [s.directory.bind_password for s in estate.sites.values()]
    for server in estate.servers.values():
        refs += [server.telephony.service_password, server.winrm.password]
    refs += [t.cti_password for t in estate.tenants.values()]
    return {ref.env for ref in refs if ref is not None and ref.env}
