"""Saved plans (``plan --out``): applied as saved, refused when the world moved since.

No state file is needed to detect that: the saved plan carries a digest of every manifest file,
of the inventory and of every host's facts as the plan read them. ``apply --plan`` checks the
manifests and the inventory before it contacts anything, then gathers again and compares.
A saved plan holds no secret: changes show ``(sensitive)``, and host digests are one-way hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioner import __version__
from provisioner.errors import ProvisionerError
from provisioner.manifest.loader import manifest_files
from provisioner.plan.model import Change, Plan
from provisioner.render.json_format import (
    FORMAT_VERSION,
    change_from_json,
    change_to_json,
    plan_to_json,
)


class StalePlanError(ProvisionerError):
    """The saved plan no longer describes the estate; make a new one."""


def manifest_digest(paths: Sequence[str | Path]) -> str:
    """A digest of the manifests' contents, independent of where the checkout lies.

    Each file counts with its name relative to the path argument it came from (a directory, or
    the file itself), so the same commit digests alike in any clone and from any directory.
    """
    digest = hashlib.sha256()
    for raw in paths:
        root = Path(raw)
        files, _ = manifest_files([root])
        for file in files:
            name = file.name if file == root else file.relative_to(root).as_posix()
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()


def inventory_digest(path: Path | None) -> str | None:
    """A digest of the inventory file the operator chose, or None without one."""
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ProvisionerError(f"{path}: cannot read the inventory: {exc.strerror}") from None


class _Envelope(BaseModel):
    """The saved-plan file around the plan document; anything else in it is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format_version: str
    kind: Literal["saved-plan"]
    manifests: list[str] = Field(min_length=1)
    manifest_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    inventory_digest: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    fingerprints: dict[str, str]
    targets: list[str]
    plan: dict[str, Any]


@dataclass
class SavedPlan:
    """A plan saved by ``plan --out``: what it would change and what it was made from.

    It records the manifest paths as given (relative ones stay relative, so another clone of the
    same commit can apply it), digests of the manifests and of the operator's inventory, and one
    digest per host of the facts the plan read. It never records where to connect: the
    inventory comes from the operator who applies it.
    """

    manifests: list[str]
    inventory_digest: str | None
    plan: dict[str, Any]
    fingerprints: dict[str, str]
    manifest_digest: str
    targets: list[str]

    def write(self, path: Path) -> None:
        try:
            self._write(path)
        except OSError as exc:
            raise ProvisionerError(f"{path}: cannot write the plan: {exc.strerror}") from None

    def _write(self, path: Path) -> None:
        document = {
            "format_version": FORMAT_VERSION,
            "kind": "saved-plan",
            "manifests": self.manifests,
            "manifest_digest": self.manifest_digest,
            "inventory_digest": self.inventory_digest,
            "fingerprints": self.fingerprints,
            "targets": self.targets,
            "plan": self.plan,
        }
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> SavedPlan:
        """The saved plan at ``path``; anything else is refused in one line."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ProvisionerError(f"{path}: cannot read the saved plan: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ProvisionerError(f"{path}:{exc.lineno}:{exc.colno}: not a saved plan") from None
        except UnicodeDecodeError:
            raise ProvisionerError(f"{path}: not a saved plan (not UTF-8 text)") from None
        if not isinstance(document, dict) or document.get("kind") != "saved-plan":
            raise ProvisionerError(f"{path}: not a saved plan (make one with plan --out)")
        if document.get("format_version") != FORMAT_VERSION:
            raise ProvisionerError(
                f"{path}: saved-plan format {document.get('format_version')!r} is not "
                f"{FORMAT_VERSION!r}: make a new plan with this version"
            )
        try:
            envelope = _Envelope.model_validate(document)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "(document)"
            raise ProvisionerError(
                f"{path}: not a complete saved plan ({where}: {first['msg']}): make a new one "
                "with plan --out"
            ) from None
        version = envelope.plan.get("provisioner_version")
        if not isinstance(version, str):
            raise ProvisionerError(
                f"{path}: not a complete saved plan (plan.provisioner_version is missing): make a "
                "new one with plan --out"
            )
        if version != __version__:
            raise ProvisionerError(
                f"{path} was made by provisioner {version}, this is {__version__}: make a new plan"
            )
        saved = cls(
            manifests=envelope.manifests,
            inventory_digest=envelope.inventory_digest,
            plan=envelope.plan,
            fingerprints=envelope.fingerprints,
            manifest_digest=envelope.manifest_digest,
            targets=envelope.targets,
        )
        try:
            saved.changes()
        except Exception as exc:  # any shape of hand-edited change: one line, never a traceback
            raise ProvisionerError(
                f"{path}: not a complete saved plan (a resource change cannot be read: "
                f"{type(exc).__name__}): make a new one with plan --out"
            ) from None
        return saved

    def changes(self) -> dict[str, Change]:
        """The saved changes by address."""
        changes = self.plan["resource_changes"]
        if not isinstance(changes, list):
            raise TypeError("resource_changes is not a list")
        return {data["address"]: change_from_json(data) for data in changes}

    def held_back(self) -> list[str]:
        """The addresses the saved plan showed as held back by a problem."""
        return [c["address"] for c in self.plan["resource_changes"] if c.get("held_back")]

    @classmethod
    def of(cls, plan: Plan, manifests: Sequence[str | Path], inventory: Path | None) -> SavedPlan:
        return cls(
            manifests=[str(p) for p in manifests],
            inventory_digest=inventory_digest(inventory),
            plan=plan_to_json(plan),
            fingerprints=dict(plan.fingerprints),
            manifest_digest=manifest_digest(manifests),
            targets=list(plan.targets),
        )

    def manifest_paths(self, given: Sequence[Path]) -> list[Path]:
        """Where the plan's manifests are: the paths given, else the plan's own, which must
        exist from here (relative ones are relative to the working directory)."""
        if given:
            return list(given)
        paths = [Path(p) for p in self.manifests]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ProvisionerError(
                f"the plan's manifests {', '.join(missing)} are not found from {Path.cwd()}: run "
                "apply in the directory the plan was made in, or name them: "
                "apply --plan FILE PATH..."
            )
        return paths

    def check_offline(self, manifests: Sequence[Path], inventory: Path | None) -> None:
        """What can be checked before anything is contacted: the manifests and the inventory."""
        if manifest_digest(manifests) != self.manifest_digest:
            raise StalePlanError("the manifests changed since this plan was made: run plan again")
        if inventory_digest(inventory) != self.inventory_digest:
            raise StalePlanError(
                "this plan was made with another inventory "
                f"({'none' if self.inventory_digest is None else 'a different file'}), so for "
                "other endpoints: use the inventory it was made with, or run plan again"
            )

    def check_fresh(self, plan: Plan) -> None:
        """Refuse when a host or the resulting changes differ from the saved ones."""
        saved = self.changes()
        moved_hosts = sorted(
            host
            for host, digest in self.fingerprints.items()
            if plan.fingerprints.get(host) != digest
        )
        # the fresh side takes the same JSON round trip, so tuples and lists compare alike
        now = {c.address: change_from_json(change_to_json(c)) for c in plan.actionable}
        moved = sorted(
            address
            for address in set(saved) | set(now)
            if address not in now or address not in saved or not _same(saved[address], now[address])
        )
        if moved_hosts:
            detail = f"; changes that moved: {', '.join(moved[:10])}" if moved else ""
            raise StalePlanError(
                f"the estate changed since this plan was made ({', '.join(moved_hosts)}){detail}: "
                "run plan again"
            )
        if moved:
            raise StalePlanError(
                f"the plan would differ now ({', '.join(moved[:10])}): run plan again"
            )
        held = sorted(set(self.held_back()) ^ set(plan.held_back))
        if held:  # a problem came or went: what the reviewer saw held back would go, or not
            raise StalePlanError(
                f"the problems changed since this plan was made, so what is held back differs "
                f"({', '.join(held[:10])}): run plan again"
            )


def _same(saved: Change, now: Change) -> bool:
    """The same change: action, both sides and which secrets change (a rotated secret counts)."""
    return (saved.action, saved.before, saved.after, sorted(saved.sensitive_changed)) == (
        now.action,
        now.before,
        now.after,
        sorted(now.sensitive_changed),
    )
