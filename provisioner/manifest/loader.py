"""Loading manifest files into plain documents, fast, with exact positions only when needed.

The happy path parses with the C-accelerated safe loader and keeps no positions at all. When a
problem must be reported, :class:`SourceMap` re-reads that one file with the composer (which
keeps a line and column on every node) and turns the problem's path into ``FILE:LINE:COL``.
So a clean estate of 1,000 files pays nothing for positions, and an error still points at the
exact value.

A loaded document is ``Document(file, index, data)``::

    Document(file="manifests/k6732.yaml", index=0,
             data={"kind": "Tenant", "name": "k6732", "server": "tapi01", ...})
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from provisioner.errors import Location, ManifestError

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Bigger files are refused: one tenant per file stays far below this."""

MAX_EXPANDED_VALUES = 1_000_000
"""Anchors and aliases may share values, but not multiply a document beyond this many values."""

PathKey = str | int
"""One step of a path inside a document: a mapping key or a list index."""


@dataclass(frozen=True)
class Document:
    file: str
    index: int  # position of the document in its file, from 0
    data: Any


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    errors: list[ManifestError] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def manifest_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[ManifestError]]:
    """Expand files and directory trees into a file list.

    A directory stands for every ``*.yaml`` and ``*.yml`` file below it (``tenants/**/*.yaml``),
    in one order on every machine: sorted by their path within the directory, compared name by
    name. Hidden files and directories (``.git``, ``.github``) are not manifests and are skipped.
    """
    files: list[Path] = []
    errors: list[ManifestError] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = _yaml_tree(path)
            if not found:
                errors.append(ManifestError(f"{path}: directory holds no *.yaml files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            errors.append(ManifestError(f"{path}: no such file or directory"))
    return files, errors


def _yaml_tree(root: Path) -> list[Path]:
    found: list[tuple[tuple[str, ...], Path]] = []
    for directory, subdirectories, names in os.walk(root):  # symlinked directories not followed
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        for name in names:
            file = Path(directory) / name
            if not name.startswith(".") and file.suffix in (".yaml", ".yml") and file.is_file():
                found.append((file.relative_to(root).parts, file))
    return [file for _, file in sorted(found)]


def load(paths: Iterable[str | Path]) -> LoadResult:
    """Load every document of every file; collect every problem instead of stopping at the first."""
    files, errors = manifest_files(paths)
    result = LoadResult(errors=errors)
    for path in files:
        result.files.append(str(path))
        try:
            result.documents.extend(load_file(path))
        except ManifestError as exc:
            result.errors.append(exc)
    return result


def load_file(path: Path) -> list[Document]:
    name = str(path)
    text = read_text(path)
    yaml = YAML(typ="safe", pure=False)
    try:
        raw_docs = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        location = _mark_location(name, exc)
        message = _yaml_message(exc)
        if _char_at(text, location) == "\t":
            message = "a tab cannot indent YAML: use spaces"
        raise ManifestError(message, location) from None
    except YAMLError as exc:  # an unmarked parser error: still one line, never a traceback
        raise ManifestError(" ".join(str(exc).split()), Location(name, 1, 1)) from None
    except RecursionError:
        raise ManifestError("nesting is too deep", Location(name, 1, 1)) from None
    docs = [Document(name, i, data) for i, data in enumerate(raw_docs) if data is not None]
    if not docs:
        raise ManifestError("file holds no YAML document", Location(name, 1, 1))
    for doc in docs:
        _check_expansion(doc, text)
    return docs


def read_text(path: Path) -> str:
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(
                f"file is {size / 1048576:.1f} MiB; the limit is {MAX_FILE_BYTES // 1048576} MiB: "
                "split it (one file per tenant suits reviews)",
                Location(name, 1, 1),
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{name}: cannot read: {exc.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(
            f"byte 0x{data[exc.start]:02x} is not UTF-8: save the file as UTF-8",
            Location(name, line, column),
        ) from None
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ManifestError(
            "file holds NUL characters: is it a binary file?", Location(name, line, 1)
        )
    if not text.strip():
        raise ManifestError("file is empty", Location(name, 1, 1))
    return text


def _yaml_message(exc: MarkedYAMLError) -> str:
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.__class__.__name__ == "DuplicateKeyError" or "duplicate key" in problem:
        # ruamel's text for this runs over several lines and links to its documentation
        key = problem.split('"')[1] if '"' in problem else "?"
        return f"duplicate key {key!r}: a key may appear once per mapping"
    text = " ".join(problem.split())
    if exc.context and exc.problem:
        text = f"{text} ({' '.join(exc.context.split())})"
    return text


def _mark_location(file: str, exc: MarkedYAMLError) -> Location:
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return Location(file, 1, 1)
    return Location(file, mark.line + 1, mark.column + 1)


def _char_at(text: str, location: Location) -> str:
    lines = text.split("\n")
    if location.line > len(lines):
        return ""
    line = lines[location.line - 1]
    return line[location.column - 1] if location.column <= len(line) else ""


def _check_expansion(doc: Document, text: str) -> None:
    """Refuse documents whose aliases multiply them ("billion laughs") or refer to themselves.

    Shared values are counted once per use, with a memo per object, so this costs one pass over
    the distinct values, not over the expansion.
    """
    memo: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, dict | list):
            return 1
        key = id(value)
        if key in memo:
            return memo[key]
        if key in in_progress:
            raise _Recursive
        in_progress.add(key)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        total = 1
        for _, item in items:
            total += size(item)
            if total > MAX_EXPANDED_VALUES:
                break
        in_progress.discard(key)
        memo[key] = total
        return total

    try:
        total = size(doc.data)
    except _Recursive:
        raise ManifestError("an alias refers to its own anchor", _first_alias(doc, text)) from None
    except RecursionError:
        raise ManifestError("nesting is too deep", Location(doc.file, 1, 1)) from None
    if total > MAX_EXPANDED_VALUES:
        raise ManifestError(
            f"anchors and aliases expand this document beyond {MAX_EXPANDED_VALUES:,} values",
            _first_alias(doc, text),
        )


class _Recursive(Exception):
    pass


def _first_alias(doc: Document, text: str) -> Location:
    yaml = YAML(typ="safe", pure=False)
    index = -1
    for event in yaml.parse(text):
        kind = type(event).__name__
        if kind == "DocumentStartEvent":
            index += 1
        elif kind == "AliasEvent" and index == doc.index:
            return Location(doc.file, event.start_mark.line + 1, event.start_mark.column + 1)
    return Location(doc.file, 1, 1)


class SourceMap:
    """Positions of values in the loaded files, computed per file on first use.

    >>> SourceMap().locate(Document("t.yaml", 0, {}), ("assignments", 3, "user"))
    Location(file='t.yaml', line=14, column=11)   # for a file where that value sits there
    """

    def __init__(self) -> None:
        self._nodes: dict[str, list[Node]] = {}

    def locate(self, doc: Document, path: Sequence[PathKey], *, key: bool = False) -> Location:
        """Where the value at ``path`` was written (or its key, with ``key=True``).

        A path that goes further than the document (a missing field) stops at the deepest
        existing node, which is where the field should be added.
        """
        root = self._document_node(doc)
        if root is None:
            return Location(doc.file, 1, 1)
        node: Node = root
        key_node: Node | None = None
        for step in path:
            child = _child(node, step)
            if child is None:
                break
            key_node, node = child
        target = key_node if key and key_node is not None else node
        return Location(doc.file, target.start_mark.line + 1, target.start_mark.column + 1)

    def _document_node(self, doc: Document) -> Node | None:
        if doc.file not in self._nodes:
            try:
                text = read_text(Path(doc.file))
                yaml = YAML(typ="safe", pure=False)
                self._nodes[doc.file] = [n for n in yaml.compose_all(text) if n is not None]
            except (ManifestError, YAMLError):
                self._nodes[doc.file] = []
        nodes = self._nodes[doc.file]
        return nodes[doc.index] if doc.index < len(nodes) else None


def _child(node: Node, step: PathKey) -> tuple[Node | None, Node] | None:
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(step):
                return key_node, value_node
        return None
    if isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return None, node.value[step]
    return None
