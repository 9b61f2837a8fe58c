"""Parsed manifest files by content, so that an unchanged file is never parsed twice.

A GitOps repository changes a few files per pull request; the other thousand are read from
here. An entry holds the documents of one file as JSON, under a key made of the SHA-256 of the
file's bytes, the tool's version and the schema's version (a digest of the loader's and the
models' code, so that a change to either is a new version even between releases). It lives at
``.provisioner/cache/manifests/ab/abcdef....json`` (under ``$PROVISIONER_STATE_DIR`` when that
is set)::

    {"format": 1, "key": "abcdef...", "sha256": "<of the payload>", "documents": 1}
    [[0, {"kind": "Tenant", "name": "k6732", ...}]]

An entry is untrusted input: it is plain JSON (never pickle), read only up to a size limit, and
used only when its header matches the key asked for, the payload's digest matches the header,
and the payload has the documented shape. Anything else (truncated, garbage, another version,
edited by hand) is ignored and written anew. What an entry yields is checked by the schema like
any freshly parsed document: the cache saves the YAML parsing, never a check. Only files whose
documents are plain JSON values (string keys, finite numbers) are cached; an inventory, which
may hold secret values, never is. A cache that cannot be written is silently not used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provisioner import __version__

FORMAT = 1
MAX_ENTRY_BYTES = 64 * 1024 * 1024
_enabled = True


def enabled(value: bool) -> None:
    """Turn the cache on or off for this process (``--no-cache``)."""
    global _enabled
    _enabled = value


def directory() -> Path:
    base = Path(os.environ.get("PROVISIONER_STATE_DIR", ".provisioner"))
    return base / "cache" / "manifests"


def open_cache() -> Cache | None:
    """The cache, or None when it is turned off."""
    return Cache(directory()) if _enabled else None


def _code_digest() -> str:
    """The tool's version and the code of the loader and of the schema (the models), so that
    a changed parser or schema never reads entries another one wrote."""
    digest = hashlib.sha256(f"{__version__} {FORMAT}".encode())
    here = Path(__file__).parent
    for name in ("loader.py", "cache.py", "models.py"):
        with contextlib.suppress(OSError):  # from an archive without sources: the version must do
            digest.update((here / name).read_bytes())
    return digest.hexdigest()


_CODE = _code_digest()

Entry = Sequence[tuple[int, Any]]
"""The documents of one file: (index in the file, data)."""


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0
        self._marked = False  # the .gitignore beside the entries was written (or found)

    def key(self, content_sha256: str) -> str:
        return hashlib.sha256(f"{_CODE} {content_sha256}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, content_sha256: str) -> list[tuple[int, Any]] | None:
        """The documents cached for a file with this content, or None (then parse it)."""
        key = self.key(content_sha256)
        try:
            with self.path(key).open("rb") as stream:
                raw = stream.read(MAX_ENTRY_BYTES + 1)
        except OSError:
            self.misses += 1
            return None
        documents = _parse_entry(raw, key) if len(raw) <= MAX_ENTRY_BYTES else None
        if documents is None:
            self.misses += 1
        else:
            self.hits += 1
        return documents

    def put(self, content_sha256: str, documents: Entry) -> None:
        """Store a file's documents, when they are plain JSON values; never fails."""
        if not all(_plain_json(data) for _, data in documents):
            return
        key = self.key(content_sha256)
        try:
            payload = json.dumps(
                [[index, data] for index, data in documents],
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
            ).encode()
        except (ValueError, RecursionError):
            return
        header = {
            "format": FORMAT,
            "key": key,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "documents": len(documents),
        }
        import tempfile  # only a run that writes entries needs it

        target = self.path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not self._marked:
                _ignore_in_git(self.root.parent)
                self._marked = True
            with tempfile.NamedTemporaryFile(
                "wb", dir=target.parent, prefix=".tmp-", delete=False
            ) as stream:
                stream.write(json.dumps(header).encode() + b"\n" + payload)
            os.replace(stream.name, target)
        except OSError:
            return


def _parse_entry(raw: bytes, key: str) -> list[tuple[int, Any]] | None:
    head, newline, payload = raw.partition(b"\n")
    if not newline:
        return None
    try:
        header = json.loads(head)
        if not (
            isinstance(header, dict)
            and header.get("format") == FORMAT
            and header.get("key") == key
            and header.get("sha256") == hashlib.sha256(payload).hexdigest()
        ):
            return None
        body = json.loads(payload, parse_constant=_refuse)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, list) or len(body) != header.get("documents") or not body:
        return None
    documents: list[tuple[int, Any]] = []
    previous = -1
    for item in body:
        if not (isinstance(item, list) and len(item) == 2):
            return None
        index, data = item
        if type(index) is not int or index <= previous or data is None:
            return None
        previous = index
        documents.append((index, data))
    return documents


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _plain_json(value: Any) -> bool:
    """Whether JSON gives this value back exactly: str keys, no NaN or infinity, no dates."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            if not all(type(k) is str for k in item):
                return False
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is float:
            if item != item or item in (float("inf"), float("-inf")):
                return False
        elif kind not in (str, int, bool) and item is not None:
            return False
    return True


def _ignore_in_git(root: Path) -> None:
    marker = root / ".gitignore"
    if not marker.exists():
        marker.write_text("# the provisioner's cache of parsed manifests\n*\n", encoding="utf-8")
