"""Loading manifest files into plain documents: fast when they are clean, located when not.

A file is read one of three ways, with one meaning:

1. **from the cache** (:mod:`provisioner.manifest.cache`): a file whose bytes were read before
   is not parsed again;
2. **fast**: libyaml's event parser (PyYAML's C binding) and a small builder that knows only
   our YAML subset (below). Anything outside it makes the builder step aside, never guess;
3. **located**: ruamel.yaml, which defines what a manifest means and knows where every value
   was written. It reads the files the fast path stepped aside for, so every problem (a syntax
   error, a duplicate key, a date that does not exist) is reported as ``FILE:LINE:COL``.

:class:`SourceMap` re-reads a file with ruamel's composer (which keeps a line and column on
every node) when a later check needs a position, so a clean estate pays nothing for positions.

**The subset the fast path reads** is YAML 1.2 as ruamel resolves it: block and flow mappings and
sequences, plain and quoted and block scalars, anchors and aliases, several documents per file.
A plain scalar is null (``~``, ``null``, empty), a boolean (only ``true``/``false`` in three
spellings: ``yes``, ``no``, ``on`` and ``off`` stay strings, unlike YAML 1.1), a decimal integer
(``017`` is 17, not octal 15), a decimal float, or else a string (``1:30`` stays a string: no
sexagesimal numbers). The fast path steps aside for everything else, so that ruamel decides:
explicit tags (``!!int "1"``), ``%YAML``/``%TAG`` directives, timestamps (``2024-02-29``),
merge keys (``<<``), ``0x``/``0o``/``0b`` integers, digits with ``_``, ``.inf`` and ``.nan``,
non-string keys, duplicate keys (an error), duplicate anchors, aliases to unknown or unfinished
anchors, deep nesting, and plain scalars holding ``:`` or ``?`` inside flow collections (libyaml
0.2 accepts those where ruamel's libyaml 0.1 refuses them). Any syntax error also sends the file
to ruamel, which words and locates it. ``tests/manifest/test_loader.py`` runs the examples, every
bad-input case and generated text through both paths and compares.

A loaded document is ``Document(file, index, data)``::

    Document(file="manifests/k6732.yaml", index=0,
             data={"kind": "Tenant", "name": "k6732", "server": "tapi01", ...})
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.errors import Location, ManifestError
from provisioner.manifest import cache as manifest_cache

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.nodes import Node

# Both YAML libraries are imported where they are used: a command whose files all come from the
# cache starts without either.

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Bigger files are refused: one tenant per file stays far below this."""

MAX_EXPANDED_VALUES = 1_000_000
"""Anchors and aliases may share values, but not multiply a document beyond this many values."""

MAX_FAST_DEPTH = 64
"""Deeper nesting is left to the located path (which reports what is too deep)."""

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
    """Load every document of every file; collect every problem instead of stopping at the first.

    Files read before come from the cache (unless it is turned off, see
    :func:`provisioner.manifest.cache.enabled`); the others are parsed and then cached.
    """
    files, errors = manifest_files(paths)
    result = LoadResult(errors=errors)
    store = manifest_cache.open_cache()
    with _collector_paused():
        for path in files:
            result.files.append(str(path))
            try:
                result.documents.extend(load_file(path, store))
            except ManifestError as exc:
                result.errors.append(exc)
    return result


def load_file(path: Path, store: manifest_cache.Cache | None = None) -> list[Document]:
    """The documents of one file; ``store`` caches them by content (never pass one for files
    that hold secrets, such as an inventory)."""
    name = str(path)
    raw = read_bytes(path)
    key = hashlib.sha256(raw).hexdigest()
    cached = store.get(key) if store is not None else None
    if cached is not None:
        return [Document(name, index, data) for index, data in cached]
    text = decode(raw, name)
    built = _fast_documents(raw.removeprefix(b"\xef\xbb\xbf"))
    if built is None:
        datas = _located_documents(text, name)
        expansion_checked = False
    else:
        datas, expansion_checked = built.documents, built.plain_tree
    docs = [Document(name, i, data) for i, data in enumerate(datas) if data is not None]
    if not docs:
        raise ManifestError("file holds no YAML document", Location(name, 1, 1))
    if not expansion_checked:
        for doc in docs:
            _check_expansion(doc, text)
    if store is not None:
        store.put(key, [(doc.index, doc.data) for doc in docs])
    return docs


def read_bytes(path: Path) -> bytes:
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ManifestError(
                f"file is {size / 1048576:.1f} MiB; the limit is {MAX_FILE_BYTES // 1048576} MiB: "
                "split it (one file per tenant suits reviews)",
                Location(name, 1, 1),
            )
        return path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{name}: cannot read: {exc.strerror}") from None


def read_text(path: Path) -> str:
    return decode(read_bytes(path), str(path))


def decode(data: bytes, name: str) -> str:
    """The file's text, after the checks that make a YAML parser's errors unnecessary."""
    data = data.removeprefix(b"\xef\xbb\xbf")
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


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Loading builds a million small objects and no cycles: the cyclic garbage collector
    would walk them again and again for nothing (a quarter of the parse time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- the fast path -------------------------------------------------------------------------------


class _OutsideSubset(Exception):
    """The fast path steps aside: the located path reads this file."""


@dataclass
class _Built:
    documents: list[Any]
    plain_tree: bool  # no aliases and few values: nothing can multiply, no expansion check needed


_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
Resolvers = dict[str, list[tuple[str, Any]]]  # first character → (tag, ruamel's lazy pattern)


@functools.cache
def _resolvers() -> Resolvers:
    """ruamel's own YAML 1.2 table (first character → tags and patterns), so that the fast path
    resolves plain scalars exactly as ruamel does."""
    from ruamel.yaml.resolver import implicit_resolvers

    table: Resolvers = {}
    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) in versions:
            for char in first:
                table.setdefault(char, []).append((tag, regexp))
    return table


_DECIMAL = re.compile(r"[-+]?[0-9]+")
_PLAIN_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_TRUE = frozenset({"true", "True", "TRUE"})
_NOT_IN_FLOW = re.compile(r"[:?]")
_NOT_SET: Any = object()


def _plain(value: str, resolvers: Resolvers) -> Any:
    """A plain scalar's value, resolved as ruamel resolves YAML 1.2 (or step aside)."""
    tag = None
    for candidate, regexp in resolvers.get(value[:1], ()):
        if regexp.match(value):
            tag = candidate
            break
    if tag is None:
        return value
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return value in _TRUE
    if tag == _INT and _DECIMAL.fullmatch(value):
        return int(value)  # ValueError beyond 4,300 digits: the located path says so
    if tag == _FLOAT and _PLAIN_FLOAT.fullmatch(value):
        return float(value)
    raise _OutsideSubset(value)


def _fast_documents(data: bytes) -> _Built | None:
    """The file's documents through libyaml, or None when the located path must read it."""
    import yaml
    from yaml._yaml import CParser

    parser = CParser(data)
    try:
        return _build(parser)
    except (yaml.YAMLError, _OutsideSubset, ValueError):
        return None
    finally:
        parser.dispose()


def _build(parser: Any) -> _Built:
    from yaml import events

    resolvers = _resolvers()
    documents: list[Any] = []
    stack: list[Any] = []  # open collections; a mapping is followed by its pending key
    flow = 0  # how many of them are flow collections
    anchors: dict[str, Any] = {}
    unfinished: set[str] = set()
    opened: list[tuple[str | None, bool]] = []  # each open collection's anchor, and if in flow
    values = 0
    aliases = False

    def add(value: Any, *, key_ok: bool) -> None:
        if not stack:
            documents.append(value)
            return
        top = stack[-1]
        if type(top) is list:
            top.append(value)
            return
        pending = stack[-2]
        if pending is _NOT_SET:  # this value is a key
            if not key_ok or type(value) is not str or value in top:
                raise _OutsideSubset("a key that is not a unique string")
            stack[-2] = value
        else:
            top[pending] = value
            stack[-2] = _NOT_SET

    def anchor(name: str | None) -> None:
        if name is not None and (name in anchors or name in unfinished):
            raise _OutsideSubset("an anchor defined twice")

    while True:
        event = parser.get_event()
        kind = type(event)
        if kind is events.ScalarEvent:
            values += 1
            anchor(event.anchor)
            if event.tag is not None:
                raise _OutsideSubset("an explicit tag")
            text = event.value
            if event.implicit[0]:
                if flow and _NOT_IN_FLOW.search(text):
                    raise _OutsideSubset("':' or '?' in a plain scalar inside a flow collection")
                value = _plain(text, resolvers)
            else:
                value = text
            if event.anchor is not None:
                anchors[event.anchor] = value
            add(value, key_ok=True)
        elif kind is events.MappingStartEvent or kind is events.SequenceStartEvent:
            values += 1
            anchor(event.anchor)
            if event.tag is not None:
                raise _OutsideSubset("an explicit tag")
            if len(opened) >= MAX_FAST_DEPTH:
                raise _OutsideSubset("deep nesting")
            if stack and type(stack[-1]) is dict and stack[-2] is _NOT_SET:
                raise _OutsideSubset("a collection as a key")
            if event.anchor is not None:
                unfinished.add(event.anchor)
            opened.append((event.anchor, bool(event.flow_style)))
            flow += bool(event.flow_style)
            if kind is events.MappingStartEvent:
                stack += [_NOT_SET, {}]
            else:
                stack.append([])
        elif kind is events.MappingEndEvent or kind is events.SequenceEndEvent:
            value = stack.pop()
            if kind is events.MappingEndEvent:
                stack.pop()
            name, in_flow = opened.pop()
            flow -= in_flow
            if name is not None:
                unfinished.discard(name)
                anchors[name] = value
            add(value, key_ok=False)
        elif kind is events.AliasEvent:
            if event.anchor not in anchors:
                raise _OutsideSubset("an alias to an unknown or unfinished anchor")
            aliases = True
            add(anchors[event.anchor], key_ok=False)
        elif kind is events.DocumentStartEvent:
            if event.version is not None or event.tags is not None:
                raise _OutsideSubset("a %YAML or %TAG directive")
            anchors.clear()
        elif kind is events.StreamEndEvent:
            return _Built(documents, not aliases and values <= MAX_EXPANDED_VALUES)


# --- the located path ----------------------------------------------------------------------------


@functools.cache
def _located_constructor() -> type:
    from ruamel.yaml.constructor import SafeConstructor

    class LocatedConstructor(SafeConstructor):
        """ruamel's safe constructor, but a value it cannot build is a located error, not a
        crash (``2024-02-30``, ``!!int "abc"``, ``!!bool maybe``, 5,000 digits)."""

        def construct_object(self, node: Any, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep=deep)
            except _UNBUILDABLE as exc:
                raise _unbuildable(node, exc) from None

        def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
            waiting = len(self.state_generators)
            data = super().construct_non_recursive_object(node, tag)
            if len(self.state_generators) > waiting:  # this node's collection, filled in later
                self.state_generators[-1] = _located(self.state_generators[-1], node)
            return data

    return LocatedConstructor


_UNBUILDABLE = (ValueError, TypeError, KeyError, IndexError, OverflowError, AssertionError)


def _located(generator: Iterator[Any], node: Node) -> Iterator[Any]:
    try:
        yield from generator
    except _UNBUILDABLE as exc:
        raise _unbuildable(node, exc) from None


_TAG_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "timestamp": "a date or time",
    "null": "null",
    "binary": "base64 data",
}


def _unbuildable(node: Node, exc: Exception) -> Exception:
    """A located ruamel error that says why the value could not be built."""
    from ruamel.yaml.constructor import ConstructorError

    return ConstructorError(None, None, _unbuildable_message(node, exc), node.start_mark)


def _unbuildable_message(node: Node, exc: Exception) -> str:
    from ruamel.yaml.nodes import ScalarNode

    tag = str(node.tag).rsplit(":", 1)[-1]
    what = _TAG_NAMES.get(tag, f"!!{tag}")
    reason = str(exc)
    if "integer string conversion" in reason:
        reason = f"{len(str(node.value).lstrip('+-'))} digits are too many"
    elif reason.startswith(("invalid literal", "could not convert")) or not isinstance(
        exc, ValueError | OverflowError
    ):
        reason = "not a valid spelling"
    if not isinstance(node, ScalarNode):
        return f"this {what} cannot be built: {reason}"
    value = node.value
    shown = value if len(value) <= 40 else f"{value[:20]}...{value[-8:]} ({len(value)} characters)"
    hint = " (quote it to keep it as text)" if tag == "timestamp" else ""
    return f"{shown!r} cannot be read as {what}: {reason}{hint}"


def _ruamel() -> YAML:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=False)
    yaml.Constructor = _located_constructor()
    return yaml


def _located_documents(text: str, name: str) -> list[Any]:
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return list(_ruamel().load_all(text))
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
    from ruamel.yaml import YAML

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
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

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
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(step):
                return key_node, value_node
        return None
    if isinstance(node, SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value):
        return None, node.value[step]
    return None
