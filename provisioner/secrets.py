"""Secrets: references in manifests, a redacting type in code.

A manifest only ever names where a secret lives::

    cti_password: {env: K6732_CTI_PASSWORD}
    cti_password: {file: /run/secrets/k6732}

:func:`resolve` turns a reference into a :class:`Secret`, whose ``str``, ``repr``, JSON and log
forms are all ``(sensitive)``. Only code that must send the value calls :meth:`Secret.reveal`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic_core import core_schema

from provisioner.errors import ProvisionerError

REDACTED = "(sensitive)"


class Secret:
    """A value that never shows itself.

    >>> s = Secret("hunter2"); str(s), repr(s), f"{s}"
    ('(sensitive)', 'Secret((sensitive))', '(sensitive)')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plain value: call this only where it is sent to the system that needs it."""
        return self._value

    def fingerprint(self, salt: bytes) -> str:
        """A keyed digest that lets a host prove it holds this value without returning it."""
        return hmac.new(salt, self._value.encode(), hashlib.sha256).hexdigest()

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).digest()))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda v: v if isinstance(v, Secret) else Secret(str(v)),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _: REDACTED),
        )


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret in it shown as ``(sensitive)``, and nothing else changed.

    A secret counts where it stands as a token of its own, not inside a longer word: a
    one-letter secret "y" leaves "Temporary" alone, while "pw: y." becomes "pw: (sensitive).".
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        before = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
        after = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
        text = re.sub(before + re.escape(secret) + after, lambda _: REDACTED, text)
    return text


class SecretError(ProvisionerError):
    """A secret reference could not be resolved."""


def resolve(
    ref: Mapping[str, str], *, environ: Mapping[str, str] | None = None, base: Path | None = None
) -> Secret:
    """Resolve ``{env: NAME}`` or ``{file: PATH}`` (relative to ``base``) to a :class:`Secret`.

    ``environ`` defaults to the process environment; the inventory adds lab values to it.
    """
    env = os.environ if environ is None else environ
    if "env" in ref:
        name = ref["env"]
        if name not in env:
            raise SecretError(
                f"environment variable {name} is not set (a secret reference needs it)"
            )
        return Secret(env[name])
    path = Path(ref["file"])
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        return Secret(path.read_text(encoding="utf-8-sig").rstrip("\r\n"))
    except OSError as exc:
        raise SecretError(f"secret file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:  # its text would hold the secret's bytes: do not quote it
        raise SecretError(f"secret file {path} is not UTF-8: save it as UTF-8") from None
