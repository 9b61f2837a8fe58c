"""How a remote script and its data reach a Windows host, and how its answer comes back.

Data never becomes code. The command line is a constant: ``powershell.exe ... -EncodedCommand``
with the static ``templates/bootstrap.ps1``. Everything else travels over stdin::

    <templates/gather.ps1, byte for byte>
    #==provisioner-json==#
    {"contract":1,"role":"server","firewall_group":"NFON-TAPI-Provisioner",...}

The bootstrap splits stdin at that line, parses the JSON, runs the script with it as its one
parameter and prints the one JSON document the script returns (or an error document and exit
code 1)::

    >>> script = load("gather")
    >>> script.identity  # doctest: +SKIP
    'gather/2:3f9c0a6d2b7e4411'
    >>> payload = stdin_payload(script, GatherRequest(role="client", firewall_group="G"))
    >>> parse_payload(payload)[1]["firewall_group"]
    'G'
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

import provisioner
from provisioner.errors import ProvisionerError
from provisioner.remote.contract import (
    CONTRACT_VERSION,
    ApplyRequest,
    GatherRequest,
    LockInfo,
    LockRefusal,
    UploadRequest,
)

ScriptName = Literal["gather", "apply", "upload"]
T = TypeVar("T", bound=BaseModel)

SEPARATOR = "#==provisioner-json==#"
"""The line between the script text and its JSON data on stdin."""

POWERSHELL = "powershell.exe"
_POWERSHELL_OPTIONS = ("-NoLogo", "-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass")
_HEADER = re.compile(r"\A# provisioner-contract: (?P<name>[a-z]+) (?P<version>\d+)\r?\n")
_REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "gather": GatherRequest,
    "apply": ApplyRequest,
    "upload": UploadRequest,
}
_CLIXML_MARKER = "#< CLIXML"
_CLIXML_DOCUMENT = re.compile(r"<Objs\b.*?(?:</Objs>|\Z)", re.DOTALL)  # cut short: to the end
_CLIXML_ERROR_STRING = re.compile(r'<S\s+S="Error"\s*>(.*?)</S>', re.DOTALL)
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
_MAX_ERROR_TEXT = 600  # characters of a host's error text that a message carries


class RemoteScriptError(ProvisionerError):
    """A remote script failed, or answered something that is not its contract's document."""


class LockRefused(RemoteScriptError):
    """A gather asked for the host's lock and another owner holds it: it read nothing else."""

    def __init__(self, holder: LockInfo) -> None:
        super().__init__(f"the host's lock is held by {one_line(holder.owner)}")
        self.holder = holder


class TemplateError(ProvisionerError):
    """A shipped template is missing or malformed (a broken installation)."""


class ScriptErrorDetail(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    message: str
    line: int | None = None


class ScriptFailure(BaseModel):
    """The error document the bootstrap prints (with exit code 1) when a script throws.

    ``{"contract": 2, "error": {"message": "registry path 'X' is not under HKLM", "line": 57}}``
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    contract: int = CONTRACT_VERSION
    error: ScriptErrorDetail


@dataclass(frozen=True)
class RemoteScript:
    """A shipped script: ``identity`` names its contract and the hash of its exact text."""

    name: str
    text: str
    identity: str  # "gather/2:<first 16 hex digits of sha256(text)>"


def templates_dir() -> Path:
    """``provisioner/_templates`` in an installed wheel, else the repository's ``templates/``."""
    package = Path(provisioner.__file__).parent
    installed = package / "_templates"
    return installed if installed.is_dir() else package.parent / "templates"


def read_template(file_name: str) -> str:
    """The text of one template file, exactly as shipped."""
    path = templates_dir() / file_name
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise TemplateError(f"template {path} cannot be read ({exc.strerror}): reinstall") from None


def identity_of(text: str) -> str | None:
    """``name/version:hash`` from a script's header comment, or None without a header."""
    header = _HEADER.match(text)
    if header is None:
        return None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"{header['name']}/{header['version']}:{digest}"


_INCLUDE = re.compile(r"^# provisioner-include: (?P<file>[a-z_]+\.ps1)\n", re.MULTILINE)


@cache
def load(name: ScriptName) -> RemoteScript:
    """The shipped ``templates/<name>.ps1``, checked to speak this contract version, with the
    text of each ``# provisioner-include: FILE`` line's template in its place (code two scripts
    share; a failing line's number counts in the text as sent)."""
    text = _INCLUDE.sub(lambda line: read_template(line["file"]), read_template(f"{name}.ps1"))
    header = _HEADER.match(text)
    if header is None or header["name"] != name or int(header["version"]) != CONTRACT_VERSION:
        raise TemplateError(
            f"template {name}.ps1 must begin with '# provisioner-contract: {name} "
            f"{CONTRACT_VERSION}'"
        )
    if not text.endswith("\n") or f"\n{SEPARATOR}\n" in f"\n{text}":
        raise TemplateError(f"template {name}.ps1 must end with a newline and hold no separator")
    identity = identity_of(text)
    assert identity is not None  # the header matched above
    return RemoteScript(name=name, text=text, identity=identity)


@cache
def _encoded_bootstrap() -> str:
    return base64.b64encode(read_template("bootstrap.ps1").encode("utf-16-le")).decode("ascii")


def command_line() -> tuple[str, list[str]]:
    """``(command, arguments)``: the same for every script and every host."""
    return POWERSHELL, [*_POWERSHELL_OPTIONS, "-EncodedCommand", _encoded_bootstrap()]


def is_command_line(command: str, arguments: list[str]) -> bool:
    """Whether a received command is :func:`command_line` (WinRS may join the arguments)."""
    expected_command, expected_arguments = command_line()
    received = " ".join([command, *arguments]).split()
    expected = [expected_command, *expected_arguments]
    if len(received) != len(expected) or received[-1] != expected[-1]:  # base64: exact
        return False
    return all(
        got.casefold() == want.casefold() for got, want in zip(received, expected, strict=True)
    )


def stdin_payload(script: RemoteScript, data: BaseModel) -> bytes:
    """Script text, the separator line, then the request as one line of JSON (UTF-8)."""
    expected = _REQUEST_MODELS.get(script.name)
    if expected is None or not isinstance(data, expected):
        raise TypeError(f"the {script.name} script takes a {expected}, not {type(data).__name__}")
    # Compact JSON escapes every newline, so the separator line cannot occur inside it.
    return f"{script.text}{SEPARATOR}\n{data.model_dump_json()}".encode()


def parse_payload(stdin: bytes) -> tuple[str, dict[str, Any]]:
    """The receiving side of :func:`stdin_payload`: ``(script text, data)``."""
    text = stdin.decode("utf-8")
    match = re.search(rf"\r?\n{re.escape(SEPARATOR)}\r?\n", text)
    if match is None:
        raise RemoteScriptError(f"stdin holds no '{SEPARATOR}' line")
    data = json.loads(text[match.end() :])
    if not isinstance(data, dict):
        raise RemoteScriptError("the JSON part of stdin is not an object")
    return text[: match.start()] + "\n", data


def kind_of(stdin: bytes) -> str:
    """What a command's stdin runs: ``gather``, ``apply``, ``upload``, ``release`` (an empty
    batch that only gives the host's lock back), or ``?`` when it is not a script as this
    version ships it. For counting what reached a host (benches and tests)."""
    try:
        text, request = parse_payload(stdin)
    except (RemoteScriptError, ValueError):
        return "?"
    identity = identity_of(text)
    name = next((n for n in get_args(ScriptName) if load(n).identity == identity), "?")
    lock = request.get("lock")
    if (
        name == "apply"
        and not request.get("steps")
        and isinstance(lock, dict)
        and lock.get("release")
    ):
        return "release"
    return name


def failure_document(message: str, line: int | None = None) -> bytes:
    """What the bootstrap prints when a script throws (the simulator prints the same)."""
    failure = ScriptFailure(error=ScriptErrorDetail(message=message, line=line))
    return failure.model_dump_json().encode()


def parse_output(stdout: bytes, model: type[T], *, stderr: bytes = b"", exit_code: int = 0) -> T:
    """The script's one JSON document, validated against ``model``; a clear error if it is not,
    and :class:`LockRefused` when a gather could not take the host's lock.

    Without a document, what powershell.exe said on stderr (CLIXML decoded) and its exit code
    are the error: PowerShell that fails before the bootstrap's own error handling runs
    (Constrained Language Mode, a missing assembly) writes only there.
    """
    text = stdout.decode("utf-8-sig", errors="replace").strip()
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise RemoteScriptError(_no_document(text, stderr, exit_code)) from None
    if not isinstance(document, dict):
        raise RemoteScriptError("the remote script printed JSON that is not an object")
    if "error" in document:
        try:
            failure = ScriptFailure.model_validate(document)
        except ValidationError:
            pass
        else:
            where = f" (script line {failure.error.line})" if failure.error.line else ""
            raise RemoteScriptError(f"the remote script failed: {failure.error.message}{where}")
    if "locked" in document:  # a gather that asked for the host's lock, which another holds
        try:
            refusal = LockRefusal.model_validate(document)
        except ValidationError:
            pass  # reported below as not the model's document
        else:
            raise LockRefused(refusal.locked)
    version = document.get("contract")
    if version != CONTRACT_VERSION:
        raise RemoteScriptError(
            f"the host answered contract version {version!r}, this provisioner speaks "
            f"{CONTRACT_VERSION}: deploy matching versions"
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in exc.errors(include_input=False)[:3]
        )
        raise RemoteScriptError(
            f"the host's answer is not a valid {model.__name__} document: {problems}"
        ) from None


def _no_document(stdout: str, stderr: bytes, exit_code: int) -> str:
    said = clixml_errors(stderr)
    if said:
        return f"powershell.exe failed before the script ran (exit code {exit_code}): {said}"
    if said is not None:
        stderr = b""  # CLIXML without an error record (progress only) says nothing
    if stdout:
        return f"the remote script printed no JSON document (exit code {exit_code}): " + (
            one_line(stdout)
        )
    if stderr.strip():
        text = one_line(stderr.decode("utf-8", errors="replace"))
        return f"the remote script printed nothing (exit code {exit_code}); stderr: {text}"
    return f"the remote script printed nothing (exit code {exit_code}; was it killed?)"


def clixml_errors(stderr: bytes) -> str | None:
    """The error records powershell.exe wrote as CLIXML on stderr, as one line of text.

    ``#< CLIXML`` precedes one or more ``<Objs>`` documents; each ``<S S="Error">`` string is
    part of an error, with characters XML cannot carry written as ``_xHHHH_`` (UTF-16 code
    units, so a surrogate pair is two escapes) and a literal ``_x`` as ``_x005F_x``. Progress
    and other streams are left out. ``None`` when stderr is not CLIXML, ``""`` when it holds no
    error record.
    """
    text = stderr.decode("utf-8", errors="replace")
    if _CLIXML_MARKER not in text:
        return None
    strings: list[str] = []
    for document in _CLIXML_DOCUMENT.findall(text):
        try:
            root = ET.fromstring(document)
        except ET.ParseError:  # cut short or malformed: take what looks like error strings
            strings += [html.unescape(s) for s in _CLIXML_ERROR_STRING.findall(document)]
            continue
        strings += [
            element.text or ""
            for element in root
            if element.tag.rpartition("}")[2] == "S" and element.get("S") == "Error"
        ]
    return one_line(_clixml_unescape("".join(strings)))


def _clixml_unescape(text: str) -> str:
    units = _CLIXML_ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)
    return units.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def one_line(text: str) -> str:
    """Untrusted host text for a one-line message: lines joined, control characters shown as
    U+FFFD (no terminal escapes, no bidi overrides), cut at a few hundred characters."""
    words = " ".join(part.strip() for part in text.splitlines() if part.strip())
    shown = "".join(
        "\ufffd" if unicodedata.category(char) in ("Cc", "Cf") else char for char in words
    )
    return shown if len(shown) <= _MAX_ERROR_TEXT else shown[: _MAX_ERROR_TEXT - 1] + "…"
