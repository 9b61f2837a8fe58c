"""Saved plans (``plan --out``): applied as saved, refused when the world moved since.

No state file is needed to detect that: the saved plan carries a digest of every manifest file
and of every host's facts as the plan read them. ``apply --plan`` gathers again and compares.
A saved plan holds no secret: changes show ``(sensitive)``, and host digests are one-way hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def manifest_digest(paths: list[str]) -> str:
    files, _ = manifest_files(paths)
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass
class SavedPlan:
    manifests: list[str]
    inventory: str | None
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
            "inventory": self.inventory,
            "manifest_digest": self.manifest_digest,
            "fingerprints": self.fingerprints,
            "targets": self.targets,
            "plan": self.plan,
        }
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> SavedPlan:
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
            saved = cls(
                manifests=[str(p) for p in document["manifests"]],
                inventory=document.get("inventory"),
                plan=document["plan"],
                fingerprints=dict(document["fingerprints"]),
                manifest_digest=str(document["manifest_digest"]),
                targets=[str(t) for t in document.get("targets", [])],
            )
            saved.changes()
            version = saved.plan.get("provisioner_version")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ProvisionerError(
                f"{path}: not a complete saved plan (make a new one with plan --out)"
            ) from None
        if version != __version__:
            raise ProvisionerError(
                f"{path} was made by provisioner {version}, this is {__version__}: make a new plan"
            )
        return saved

    def changes(self) -> dict[str, Change]:
        """The saved changes by address."""
        return {data["address"]: change_from_json(data) for data in self.plan["resource_changes"]}

    @classmethod
    def of(cls, plan: Plan, manifests: list[str], inventory: str | None) -> SavedPlan:
        return cls(
            manifests=[str(Path(p).resolve()) for p in manifests],
            inventory=str(Path(inventory).resolve()) if inventory else None,
            plan=plan_to_json(plan),
            fingerprints=dict(plan.fingerprints),
            manifest_digest=manifest_digest(manifests),
            targets=list(plan.targets),
        )

    def check_fresh(self, plan: Plan) -> None:
        """Refuse when the manifests, a host or the resulting changes differ from the saved ones."""
        if manifest_digest(self.manifests) != self.manifest_digest:
            raise StalePlanError("the manifests changed since this plan was made: run plan again")
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


def _same(saved: Change, now: Change) -> bool:
    """The same change: action, both sides and which secrets change (a rotated secret counts)."""
    return (saved.action, saved.before, saved.after, sorted(saved.sensitive_changed)) == (
        now.action,
        now.before,
        now.after,
        sorted(now.sensitive_changed),
    )
