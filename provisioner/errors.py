"""The error types every layer raises.

A :class:`ProvisionerError` is something the user can act on: the command line prints its
message as one line and exits 1, never with a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass


class ProvisionerError(Exception):
    """An error the user can fix; ``str(error)`` says how, in one line."""


@dataclass(frozen=True, order=True)
class Location:
    """Where in a manifest something was written: ``manifests/k6732.yaml:12:7``."""

    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ManifestError(ProvisionerError):
    """One problem in the manifests, with the place it was written when that is known."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class TransportError(ProvisionerError):
    """A host, directory or API could not be reached or refused us; the message says what to fix."""


class Interrupted(ProvisionerError):
    """Ctrl-C: what was on its way finished and is recorded; nothing else was sent (exit 130)."""
