"""The inventory overlay: the same manifests against lab, staging or production.

A manifest says *what* an estate is; an inventory says *where* it is for one environment. It maps
manifest host names to endpoints and credentials, points the directory and the CTI API elsewhere,
and may carry values for the manifests' ``{env: NAME}`` references (the lab writes one)::

    winrm: {scheme: https, auth: basic, user: lab, password: {env: LAB_WINRM_PASSWORD},
            ca_file: ca.pem, allow_insecure: true}
    hosts:
      tapi01: {host: 127.0.0.1, port: 40001}
    cti_api: {base_url: "https://127.0.0.1:40100/v1", ca_file: ca.pem}
    directory: {ldap_url: "ldaps://127.0.0.1:636", ca_file: samba-ca.pem}
    secrets: {LAB_WINRM_PASSWORD: "...", K6732_CTI_PASSWORD: "..."}

Relative paths in an inventory are relative to the inventory file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from provisioner.errors import ProvisionerError
from provisioner.manifest import loader
from provisioner.manifest.models import CtiApiSettings, SecretRef, WinRMSettings
from provisioner.manifest.validate import describe
from provisioner.secrets import Secret, resolve

ENVIRONMENT_VARIABLE = "PROVISIONER_INVENTORY"


class DirectoryOverlay(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # false: do not read AD (a lab without a domain controller)
    ldap_url: str | None = None
    start_tls: bool | None = None
    ca_file: str | None = None
    bind_user: str | None = None
    bind_password: SecretRef | None = None


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    winrm: WinRMSettings = WinRMSettings()
    hosts: dict[str, WinRMSettings] = Field(default_factory=dict)
    cti_api: CtiApiSettings | None = None
    directory: DirectoryOverlay | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    base_dir: str = "."

    def endpoint_settings(self, host: str, manifest: WinRMSettings) -> WinRMSettings:
        """Manifest settings, then the inventory's defaults, then its entry for this host."""
        merged = self.winrm.merged_over(manifest)
        entry = self.hosts.get(host)
        if entry is not None:
            merged = entry.merged_over(merged)
        if merged.ca_file and (self.winrm.ca_file or (entry and entry.ca_file)):
            merged = merged.model_copy(update={"ca_file": self.path(merged.ca_file)})
        return merged

    def path(self, value: str) -> str:
        path = Path(value)
        return str(path if path.is_absolute() else Path(self.base_dir) / path)

    def environ(self) -> Mapping[str, str]:
        """Values for ``{env: NAME}``: the process environment first, then the inventory's."""
        return {**self.secrets, **os.environ}

    def resolve(self, ref: SecretRef) -> Secret:
        return resolve(ref.as_mapping(), environ=self.environ())


EMPTY = Inventory()


def inventory_file(path: str | Path | None) -> Path | None:
    """The inventory the operator chose: ``path``, else ``$PROVISIONER_INVENTORY``, else none."""
    chosen = path or os.environ.get(ENVIRONMENT_VARIABLE)
    return Path(chosen) if chosen else None


def load_inventory(path: str | Path | None) -> Inventory:
    """The inventory at ``path`` (or ``$PROVISIONER_INVENTORY``), or an empty one."""
    file = inventory_file(path)
    if file is None:
        return EMPTY
    documents = loader.load_file(file)
    if len(documents) != 1 or not isinstance(documents[0].data, dict):
        raise ProvisionerError(f"{file}: an inventory is one YAML mapping")
    data = dict(documents[0].data)
    data.setdefault("base_dir", str(file.resolve().parent))
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path_keys, message, at_key = describe(first, Inventory)
        location = loader.SourceMap().locate(documents[0], path_keys, key=at_key)
        raise ProvisionerError(f"{location}: {message}") from None
