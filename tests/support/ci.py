"""One rule for every test that needs a real part (Samba, Chromium, NFON's OpenAPI document)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def part_unavailable(reason: str, needed_for: str) -> NoReturn:
    """Fail under CI, where a missing part is a broken build; skip on a developer's machine."""
    if in_ci():
        pytest.fail(f"{reason} (CI needs {needed_for})", pytrace=False)
    pytest.skip(reason)
