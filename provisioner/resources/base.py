"""What all resource kinds share: the kind's declaration, the resource record, the host context,
the diff.

Each resource module declares its kinds in ``SPECS``, so that the planner never switches on a
kind: where a change goes in a host's batch (``phase``), whether a live resource that no manifest
names is deleted (``prune``), and which services must restart after a change (``restarts``)::

    SPECS = (KindSpec("tsp_instance", phase=50, restarts=(restart_telephony, restart_cti_engine)),)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from provisioner.errors import ProvisionerError
from provisioner.manifest.models import SecretRef, TapiClients, TapiServer, Tenant, domain_user_key
from provisioner.manifest.validate import Estate
from provisioner.plan.model import Action, Change
from provisioner.platform import Profile
from provisioner.remote.contract import Fingerprint, HostFacts, SealedSecret
from provisioner.secrets import REDACTED, Secret
from provisioner.secrets import resolve as resolve_secret

PRUNED = "not in the manifests (prune is on)"


@dataclass(frozen=True)
class Removal:
    """Why a live resource no manifest names is deleted: in words, and as Terraform's
    ``action_reason`` code (ours where Terraform has none)."""

    reason: str
    code: str = "delete_because_no_resource_config"


PRUNE = Removal(PRUNED)


@dataclass(frozen=True)
class Restart:
    """A service to restart once, after the changes that need it, and why."""

    service: str
    reason: str


def never(ctx: HostContext, resource: Resource) -> Removal | None:
    """The default prune rule: a live resource no manifest names is listed, never deleted."""
    return None


@dataclass(frozen=True)
class KindSpec:
    """What the planner needs to know about a resource kind, declared in the kind's module.

    ``phase`` orders a host's changes (lower first; kinds of one phase keep their module order).
    ``prune`` answers for a live resource that no manifest names: why it is deleted (a
    :class:`Removal`), or None to list it as unmanaged. ``restarts`` give the services (if any,
    on this host) that a change of this kind needs restarted; each is restarted once, after the
    last such change.
    """

    name: str
    phase: int
    prune: Callable[[HostContext, Resource], Removal | None] = never
    restarts: tuple[Callable[[HostContext], Restart | None], ...] = ()


class KindProblem(ProvisionerError):
    """A problem that holds back only this kind's changes on the host, not the whole host."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Resource:
    """One managed object, in canonical form.

    ``attributes`` are compared with ``==`` after canonicalisation on both sides. A secret is
    compared through ``secrets`` (desired side) against ``fingerprints`` (live side): the live
    secret is never read, only the salted digest the host stored when it was set.
    """

    address: str
    kind: str
    host: str
    attributes: Mapping[str, Any]
    tenant: str | None = None
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    fingerprints: Mapping[str, Fingerprint | None] = field(default_factory=dict)
    detail: str = ""  # one line for "unmanaged" listings


@dataclass
class HostContext:
    """Everything the resource modules need to know about one host, without any I/O."""

    name: str  # the manifest name of the host (server name or client host name)
    role: str  # "server" or "client"
    estate: Estate
    profile: Profile
    facts: HostFacts | None
    server: TapiServer | None = None
    clients: TapiClients | None = None
    tenants: list[Tenant] = field(default_factory=list)
    directory: Any = None  # directory facts, when read
    extensions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # tenant → PBX
    skipped_users: Mapping[str, frozenset[str]] = field(default_factory=dict)  # tenant → users
    removed_users: Mapping[str, frozenset[str]] = field(default_factory=dict)  # lines to drop
    cache: dict[str, Any] = field(default_factory=dict)  # derived from facts, computed once
    resolve: Callable[[SecretRef], Secret] = field(
        default=lambda ref: resolve_secret(ref.as_mapping())
    )

    def secret(self, ref: SecretRef) -> Secret:
        """Resolve a reference now, so that a secret the host cannot take is a plan problem."""
        from provisioner.remote.sealing import MAX_SECRET_BYTES

        value = self.resolve(ref)
        if len(value.reveal().encode("utf-8")) > MAX_SECRET_BYTES:
            where = f"${ref.env}" if ref.env else ref.file
            raise ProvisionerError(
                f"the secret in {where} is longer than {MAX_SECRET_BYTES} bytes, more than the "
                "host's key can seal"
            )
        return value

    def seal(self, secret: Secret) -> SealedSecret:
        """Seal a secret to this host's key (the host returned it in its facts)."""
        from provisioner.remote.sealing import seal

        if self.facts is None:
            raise ProvisionerError(f"{self.name}: no facts, so no key to seal a secret to")
        return seal(secret, self.facts.seal_key)


def sensitive_changes(desired: Resource, live: Resource) -> list[str]:
    changed = []
    for name, secret in desired.secrets.items():
        stored = live.fingerprints.get(name)
        if stored is None or secret.fingerprint(bytes.fromhex(stored.salt)) != stored.hmac:
            changed.append(name)
    return changed


def diff(desired: Resource | None, live: Resource | None, *, reason_prefix: str = "") -> Change:
    """Compare one resource; ``None`` on a side means it does not exist there."""
    base = desired or live
    assert base is not None
    change = Change(
        address=base.address, action=Action.NOOP, kind=base.kind, host=base.host, tenant=base.tenant
    )
    if desired is None and live is not None:
        change.action, change.before = Action.DELETE, dict(live.attributes)
        change.reason = reason_prefix or PRUNED
        return change
    assert desired is not None
    after = dict(desired.attributes) | {name: REDACTED for name in desired.secrets}
    change.after = after
    if live is None:
        change.action = Action.CREATE
        change.reason = reason_prefix or "does not exist"
        change.sensitive_changed = sorted(desired.secrets)
        return change
    before = dict(live.attributes) | {name: REDACTED for name in desired.secrets}
    change.before = before
    differing = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    secrets = sensitive_changes(desired, live)
    change.sensitive_changed = secrets
    if differing or secrets:
        change.action = Action.UPDATE
        change.reason = reason_prefix or _reason(differing, secrets)
    return change


def _reason(differing: list[str], secrets: list[str]) -> str:
    parts = []
    if differing:
        parts.append(f"{', '.join(differing)} differ{'s' if len(differing) == 1 else ''}")
    if secrets:
        parts.append(f"{', '.join(secrets)} changed (sensitive)")
    return "; ".join(parts)


def pair_up(
    desired: Iterable[Resource], live: Iterable[Resource]
) -> list[tuple[Resource | None, Resource | None]]:
    """Match desired and live resources by address, desired order first, then live extras.

    Addresses compare as Windows compares names, without case one character at a time
    (:func:`~provisioner.manifest.models.domain_user_key`), never with Python's full case mapping.
    """
    live_by_address = {domain_user_key(r.address): r for r in live}
    pairs: list[tuple[Resource | None, Resource | None]] = []
    seen = set()
    for resource in desired:
        key = domain_user_key(resource.address)
        seen.add(key)
        pairs.append((resource, live_by_address.get(key)))
    pairs.extend((None, r) for key, r in live_by_address.items() if key not in seen)
    return pairs


def digest(value: Any) -> str:
    """A stable digest of JSON-able data (sorted keys), for fingerprints of what a plan read."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def facts_digest(facts: HostFacts) -> str:
    """What a plan read from a host, minus what changes on every read: the lock, the preflight
    facts (free disk space, quotas, other groups' rules), the package cache, and whether the
    Telephony service runs (the gather's own ``tsecimp /d`` starts it when it is stopped, after
    reading it; no resource compares it)."""
    preflight = {"system", "winrm", "open_rpc_rules", "package_source_readable"}
    data = facts.model_dump(mode="json", exclude={"lock", "package_cache", *preflight})
    if data.get("telephony"):
        data["telephony"]["service"].pop("state", None)
    return digest(data)
