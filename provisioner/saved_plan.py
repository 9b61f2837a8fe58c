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

from provisioner.errors import ProvisionerError
from provisioner.manifest.loader import manifest_files
from provisioner.plan.model import Plan
from provisioner.render.json_format import FORMAT_VERSION, change_from_json, plan_to_json


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
        if not isinstance(document, dict) or document.get("kind") != "saved-plan":
            raise ProvisionerError(f"{path}: not a saved plan (make one with plan --out)")
        if document.get("format_version") != FORMAT_VERSION:
            raise ProvisionerError(
                f"{path}: saved-plan format {document.get('format_version')!r} is not "
                f"{FORMAT_VERSION!r}: make a new plan with this version"
            )
        return cls(
            manifests=list(document["manifests"]),
            inventory=document.get("inventory"),
            plan=document["plan"],
            fingerprints=dict(document["fingerprints"]),
            manifest_digest=document["manifest_digest"],
            targets=list(document.get("targets", [])),
        )

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
        saved = {c["address"]: c for c in self.plan["resource_changes"]}
        moved_hosts = sorted(
            host
            for host, digest in self.fingerprints.items()
            if plan.fingerprints.get(host) != digest
        )
        now = {c.address: c for c in plan.actionable}
        moved = sorted(
            address
            for address in set(saved) | set(now)
            if address not in now
            or address not in saved
            or change_from_json(saved[address]).before != now[address].before
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
