"""From loaded documents to a validated :class:`Estate`, collecting every problem on the way.

Each problem names where it was written. Positions are looked up lazily through
:class:`~provisioner.manifest.loader.SourceMap`, so a clean estate never pays for them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from provisioner.errors import ManifestError
from provisioner.manifest import loader
from provisioner.manifest.loader import Document, PathKey, SourceMap
from provisioner.manifest.models import (
    KINDS,
    AnyDocument,
    Site,
    TapiClients,
    TapiServer,
    Tenant,
    WinRMSettings,
)

_PATTERN_HINTS = {
    "name": "use lower-case letters, digits and '-' (at most 63, not starting or ending with '-')",
    "k_account": "a K-account is 'K' followed by letters or digits, e.g. K6732",
    "lines": 'an extension is a quoted string of digits, e.g. "1254"',
    "sha256": "a SHA-256 is 64 hexadecimal characters",
    "version": 'a version is numbers with dots, e.g. "1.0.0"',
    "netbios_domain": "a NetBIOS domain has 1-15 letters, digits or '-'",
    "ldap_url": "write ldaps://host[:port] or ldap://host[:port]",
    "env": "an environment variable name has letters, digits and '_'",
}


@dataclass
class Estate:
    """Every validated document, by kind and name, and where each was written."""

    sites: dict[str, Site] = field(default_factory=dict)
    servers: dict[str, TapiServer] = field(default_factory=dict)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    clients: dict[str, TapiClients] = field(default_factory=dict)
    origin: dict[tuple[str, str], Document] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    invalid: set[tuple[str, str]] = field(default_factory=set)
    """Documents that failed their own checks: references to them are not reported again."""

    def has(self, kind: str, name: str) -> bool:
        """Whether a document of this kind and name exists, valid or not."""
        return name in self.by_kind(kind) or (kind, name) in self.invalid

    def any_invalid(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.invalid)

    def by_kind(self, kind: str) -> dict[str, Any]:
        registries: dict[str, dict[str, Any]] = {
            "Site": self.sites,
            "TapiServer": self.servers,
            "Tenant": self.tenants,
            "TapiClients": self.clients,
        }
        return registries[kind]

    def incomplete(self, tenant: Tenant) -> bool:
        """Whether a document the tenant depends on (its server, that server's Site) failed its
        own checks: rules across documents then leave the tenant out rather than guess."""
        server = self.servers.get(tenant.server)
        if server is None:
            return ("TapiServer", tenant.server) in self.invalid
        if server.site is not None:
            return ("Site", server.site) in self.invalid
        return self.any_invalid("Site")

    def winrm_for(self, doc: TapiServer | TapiClients) -> WinRMSettings:
        """A host's WinRM settings in the manifests: its own over its Site's. A TapiClients
        ``winrm.host`` means nothing (each host is reached by its own name)."""
        own = (
            doc.winrm
            if isinstance(doc, TapiServer)
            else doc.winrm.model_copy(update={"host": None})
        )
        site = self.site_of(doc)
        return own.merged_over(site.winrm if site else None)

    def host_documents(self) -> dict[str, TapiServer | TapiClients]:
        """Every host name the manifests give (servers and workstations) → its document."""
        hosts: dict[str, TapiServer | TapiClients] = dict(self.servers)
        for clients in self.clients.values():
            hosts.update(dict.fromkeys(clients.hosts, clients))
        return hosts

    def site_of(self, doc: TapiServer | TapiClients) -> Site | None:
        """The Site a host belongs to: the one it names, or the only one there is."""
        if doc.site is not None:
            return self.sites.get(doc.site)
        return next(iter(self.sites.values())) if len(self.sites) == 1 else None


@dataclass
class Problems:
    """Problems found so far; each becomes one ``FILE:LINE:COL: message`` line."""

    source_map: SourceMap = field(default_factory=SourceMap)
    errors: list[ManifestError] = field(default_factory=list)

    def add(
        self, doc: Document, path: Sequence[PathKey], message: str, *, key: bool = False
    ) -> None:
        self.errors.append(ManifestError(message, self.source_map.locate(doc, path, key=key)))

    def extend(self, errors: Iterable[ManifestError]) -> None:
        self.errors.extend(errors)

    def sorted(self) -> list[ManifestError]:
        def order(e: ManifestError) -> tuple[str, int, int, str]:
            loc = e.location
            return (loc.file, loc.line, loc.column, e.message) if loc else ("", 0, 0, e.message)

        return sorted(self.errors, key=order)


def load_estate(paths: Iterable[str | Path]) -> tuple[Estate, list[ManifestError]]:
    """Load, parse and check the manifests under ``paths``: the estate and every problem found."""
    from provisioner.manifest.rules import check_estate

    loaded = loader.load(paths)
    problems = Problems()
    problems.extend(loaded.errors)
    estate = parse_documents(loaded.documents, problems)
    estate.files = loaded.files
    if not loaded.errors:
        check_estate(estate, problems)
    return estate, problems.sorted()


def parse_documents(documents: Iterable[Document], problems: Problems) -> Estate:
    estate = Estate()
    for doc in documents:
        model = parse_document(doc, problems)
        if model is None:
            data = doc.data if isinstance(doc.data, dict) else {}
            kind, name = data.get("kind"), data.get("name")
            if isinstance(kind, str) and kind in KINDS and isinstance(name, str):
                estate.invalid.add((kind, name))
            continue
        registry = estate.by_kind(model.kind)
        if model.name in registry:
            first = estate.origin[(model.kind, model.name)]
            where = problems.source_map.locate(first, ("name",))
            problems.add(
                doc, ("name",), f"{model.kind} {model.name!r} is already defined at {where}"
            )
            continue
        registry[model.name] = model
        estate.origin[(model.kind, model.name)] = doc
    return estate


def parse_document(doc: Document, problems: Problems) -> AnyDocument | None:
    data = doc.data
    if not isinstance(data, dict):
        problems.add(
            doc, (), f"a document must be a mapping with 'kind' and 'name', not {_type(data)}"
        )
        return None
    kind = data.get("kind")
    if kind is None:
        problems.add(doc, (), f"'kind' is missing: one of {', '.join(KINDS)}")
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        hint = difflib.get_close_matches(str(kind), KINDS, n=1)
        suffix = f" (did you mean {hint[0]}?)" if hint else f": one of {', '.join(KINDS)}"
        problems.add(doc, ("kind",), f"unknown kind {kind!r}{suffix}")
        return None
    model_type = KINDS[kind]
    try:
        return model_type.model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            path, message, at_key = describe(error, model_type)
            problems.add(doc, path, message, key=at_key)
        return None
    except RecursionError:
        problems.add(doc, (), "nesting is too deep")
        return None


def describe(error: ErrorDetails, model_type: type) -> tuple[tuple[PathKey, ...], str, bool]:
    """Turn one pydantic error into (path, one-line message, whether to point at the key)."""
    path = tuple(step for step in error["loc"] if isinstance(step, str | int))
    dotted = _dotted(path)
    kind = error["type"]
    if kind == "extra_forbidden":
        field_name = str(path[-1])
        known = _known_fields(model_type, path[:-1])
        hint = difflib.get_close_matches(field_name, known, n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        where = f" in {_dotted(path[:-1])}" if len(path) > 1 else ""
        return path, f"unknown field {field_name!r}{where}{suffix}", True
    if kind == "missing":
        return path, f"{dotted} is required", False
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "string_pattern_mismatch":
        field_name = next((str(p) for p in reversed(path) if isinstance(p, str)), "")
        message = f"{error['input']!r} is not valid: {_PATTERN_HINTS.get(field_name, message)}"
    elif kind in ("string_type", "int_type", "bool_type", "list_type", "dict_type", "model_type"):
        message = f"{message.lower()}, not {_type(error['input'])}"
        message = message[0].upper() + message[1:]
    elif kind in ("literal_error", "enum"):
        message = f"{error['input']!r} is not allowed: {message.lower()}"
    return path, f"{dotted}: {message}" if dotted else message, False


def _known_fields(model_type: type, path: tuple[PathKey, ...]) -> list[str]:
    current: Any = model_type
    for step in path:
        if isinstance(step, int):
            continue
        fields = getattr(current, "model_fields", {})
        if step not in fields:
            return []
        current = _inner_model(fields[step].annotation)
    return list(getattr(current, "model_fields", {}))


def _inner_model(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if hasattr(candidate, "model_fields"):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if hasattr(inner, "model_fields"):
                return inner
    return None


def _dotted(path: Sequence[PathKey]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def _type(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
    }.get(type(value), type(value).__name__)
