"""The one-regex shortcut for ``DOMAIN\\sam`` accepts only what the full checks accept."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.manifest import models

ACCOUNTS = st.text(alphabet='ab\\/:*?"<>|., .;=+[]\x01\x1f-_é', max_size=24) | st.builds(
    lambda d, s: f"{d}\\{s}",
    st.text(alphabet="ABZ09-é .\x02", min_size=0, max_size=17),
    st.text(alphabet="abz09-_.é *\x03", min_size=0, max_size=22),
)


def full_checks_accept(value: str) -> bool:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "_PLAIN_ACCOUNT", re.compile(r"(?!)"))  # the shortcut never taken
        try:
            models._domain_account(value)
        except ValueError:
            return False
        return True


@given(value=ACCOUNTS)
def test_the_shortcut_accepts_nothing_the_checks_refuse(value: str) -> None:
    if models._PLAIN_ACCOUNT.fullmatch(value):
        assert full_checks_accept(value), value


@pytest.mark.parametrize(
    "value", ["NFON\\alice", "NFON\\MAUERSBERGERM", "BENCH\\t7u42", "A\\" + "a" * 20]
)
def test_the_shortcut_takes_the_common_spellings(value: str) -> None:
    assert models._PLAIN_ACCOUNT.fullmatch(value)
