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

Relative paths in an inventory are relative to the inventory file's directory; relative paths in
a manifest are relative to the current directory.

:func:`check` holds an inventory against the manifests before anything is sent: every host it
names exists, it weakens no WinRM rule the manifests keep, every secret reference in use resolves
and every CA file in use exists. Each problem names the file and line that caused it, once.
"""

from __future__ import annotations

import difflib
import os
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from provisioner.errors import Location, ManifestError, ProvisionerError
from provisioner.manifest import loader
from provisioner.manifest.loader import Document, PathKey
from provisioner.manifest.models import (
    CtiApiSettings,
    SecretRef,
    TapiClients,
    TapiServer,
    WinRMSettings,
)
from provisioner.manifest.validate import Estate, describe
from provisioner.secrets import Secret, SecretError, resolve

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
    _document: Document | None = PrivateAttr(default=None)

    def entry(self, host: str) -> tuple[str, WinRMSettings] | None:
        """This host's entry (its key as written, its settings); names compare without case."""
        return next(((k, v) for k, v in self.hosts.items() if k.lower() == host.lower()), None)

    def endpoint_settings(self, host: str, manifest: WinRMSettings) -> WinRMSettings:
        """Manifest settings, then the inventory's defaults, then its entry for this host."""
        merged = self.winrm.merged_over(manifest)
        found = self.entry(host)
        entry = found[1] if found else None
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
        return ChainMap(os.environ, self.secrets)  # not a copy: read once per tenant

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
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        path_keys, message, at_key = describe(first, Inventory)
        location = loader.SourceMap().locate(documents[0], path_keys, key=at_key)
        raise ProvisionerError(f"{location}: {message}") from None
    inventory._document = documents[0]
    return inventory


def check(
    inventory: Inventory, estate: Estate, hosts: Iterable[str], *, services: bool = True
) -> list[ManifestError]:
    """Every problem of the inventory against the manifests for a run on ``hosts`` (and, with
    ``services``, the directory and the tenants' PBXs), offline.

    The secrets and CA files checked are those the run would use: the inventory's where it
    overrides the manifests, the manifests' elsewhere.
    """
    checker = _Checker(inventory, estate)
    checker.host_names()
    for host in hosts:
        checker.host(host)
    if services:
        checker.services()
    return checker.problems


class _Checker:
    def __init__(self, inventory: Inventory, estate: Estate) -> None:
        self.inventory = inventory
        self.estate = estate
        self.documents = estate.host_documents()
        self.source_map = loader.SourceMap()
        self.problems: list[ManifestError] = []
        self._reported: set[tuple[str, Location | None]] = set()

    def host_names(self) -> None:
        known = {name.lower() for name in self.documents}
        for name in self.inventory.hosts:
            if name.lower() in known:
                continue
            hint = difflib.get_close_matches(name, list(self.documents), n=1)
            self.add_inventory(
                ("hosts", name),
                f"hosts: {name!r} is not a server or workstation of the manifests"
                + (
                    f" (did you mean {hint[0]!r}?)"
                    if hint
                    else ": give the manifests that name it too, or remove the entry"
                ),
                key=True,
            )

    def host(self, name: str) -> None:
        doc = self.documents[name]
        manifest = self.estate.winrm_for(doc)
        settings = self.inventory.endpoint_settings(name, manifest)
        found = self.inventory.entry(name)
        layers: list[tuple[PathKey, ...]] = [("hosts", found[0])] if found else []
        layers.append(("winrm",))
        insecure = settings.insecurity()
        if insecure is not None and manifest.insecurity() is None:
            field, message = insecure
            self.add_inventory(self._set_by(layers, field, "allow_insecure", "auth"), message)
        if settings.password is not None:
            own = self._set_by(layers, "password")
            where = self.inventory_location(own) if own else self._manifest_winrm(doc, "password")
            self.secret(settings.password, where)
        own = self._set_by(layers, "ca_file")
        if own:
            layer = self._layer(own[:-1])
            assert layer is not None and layer.ca_file is not None
            self.ca_file(layer.ca_file, self.inventory_location(own), inventory=True)
        elif manifest.ca_file is not None:
            where = self._manifest_winrm(doc, "ca_file")
            self.ca_file(manifest.ca_file, where, inventory=False)

    def services(self) -> None:
        """The directory's bind password and CA, the CTI API's CA and each tenant's secrets."""
        overlay = self.inventory.directory
        if overlay is None or overlay.enabled:
            for site in self.estate.sites.values():
                origin = self.estate.origin[("Site", site.name)]
                if overlay is not None and overlay.bind_password is not None:
                    where = self.inventory_location(("directory", "bind_password"))
                    self.secret(overlay.bind_password, where)
                else:
                    where = self.locate(origin, ("directory", "bind_password"))
                    self.secret(site.directory.bind_password, where)
                if overlay is not None and overlay.ca_file:
                    where = self.inventory_location(("directory", "ca_file"))
                    self.ca_file(overlay.ca_file, where, inventory=True)
                elif site.directory.ca_file:
                    where = self.locate(origin, ("directory", "ca_file"))
                    self.ca_file(site.directory.ca_file, where, inventory=False)
        cti = self.inventory.cti_api
        if cti is not None and cti.ca_file:
            self.ca_file(cti.ca_file, self.inventory_location(("cti_api", "ca_file")), True)
        elif cti is None:
            for site in self.estate.sites.values():
                if site.cti_api.ca_file:
                    origin = self.estate.origin[("Site", site.name)]
                    where = self.locate(origin, ("cti_api", "ca_file"))
                    self.ca_file(site.cti_api.ca_file, where, inventory=False)
        # located only when something is wrong: a position costs a second parse of the file
        for tenant in self.estate.tenants.values():
            origin = self.estate.origin[("Tenant", tenant.name)]
            self.secret(tenant.cti_password, partial(self.locate, origin, ("cti_password",)))
        for server in self.estate.servers.values():
            password = server.telephony.service_password
            if password is not None:
                origin = self.estate.origin[("TapiServer", server.name)]
                located = partial(self.locate, origin, ("telephony", "service_password"))
                self.secret(password, located)

    def secret(
        self, ref: SecretRef, where: Location | Callable[[], Location | None] | None
    ) -> None:
        try:
            self.inventory.resolve(ref)
        except SecretError as exc:
            self.add(where() if callable(where) else where, str(exc))

    def ca_file(self, value: str, where: Location | None, inventory: bool) -> None:
        path = Path(self.inventory.path(value) if inventory else value)
        if path.is_file():
            return
        if Path(value).is_absolute():
            self.add(where, f"CA file {value} does not exist")
            return
        base = (
            f"the inventory's directory ({self.inventory.base_dir})"
            if inventory
            else f"the current directory ({Path.cwd()})"
        )
        self.add(where, f"CA file {value} does not exist: a relative path is relative to {base}")

    def _set_by(self, layers: Sequence[tuple[PathKey, ...]], *fields: str) -> tuple[PathKey, ...]:
        """The first inventory path (host entry, then defaults) that sets one of ``fields``
        (``null`` sets nothing: the layers below it count, as when the settings are merged)."""
        for field_name in fields:
            for layer in layers:
                settings = self._layer(layer)
                if settings is not None and getattr(settings, field_name) is not None:
                    return (*layer, field_name)
        return ()

    def _layer(self, layer: tuple[PathKey, ...]) -> WinRMSettings | None:
        if layer == ("winrm",):
            return self.inventory.winrm
        return self.inventory.hosts.get(str(layer[1]))

    def _manifest_winrm(self, doc: TapiServer | TapiClients, field_name: str) -> Location | None:
        """Where the host's own document sets the field, else its Site."""
        kind = "TapiServer" if isinstance(doc, TapiServer) else "TapiClients"
        if field_name in doc.winrm.model_fields_set:
            return self.locate(self.estate.origin[(kind, doc.name)], ("winrm", field_name))
        site = self.estate.site_of(doc)
        if site is None:
            return None
        return self.locate(self.estate.origin[("Site", site.name)], ("winrm", field_name))

    def locate(self, doc: Document, path: Sequence[PathKey]) -> Location:
        return self.source_map.locate(doc, path)

    def inventory_location(self, path: Sequence[PathKey], *, key: bool = False) -> Location | None:
        document = self.inventory._document
        return self.source_map.locate(document, path, key=key) if document else None

    def add_inventory(self, path: Sequence[PathKey], message: str, *, key: bool = False) -> None:
        self.add(self.inventory_location(path, key=key), message)

    def add(self, where: Location | None, message: str) -> None:
        if (message, where) not in self._reported:
            self._reported.add((message, where))
            self.problems.append(ManifestError(message, where))
