"""Account names compare as Windows compares them: case-insensitively, one character at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.manifest.models import domain_user_key


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("NFON\\jdoe", "nfon\\JDOE"),
        ("NFON\\Straße", "nfon\\STRAßE"),  # ß has no one-character uppercase: it stays
        ("NFON\\Ærø", "nfon\\æRØ"),
        ("NFON\\ᾳ", "NFON\\ᾼ"),  # its one-character uppercase is the titlecase form
    ],
)
def test_spellings_of_one_account_share_a_key(one: str, other: str) -> None:
    assert domain_user_key(one) == domain_user_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("NFON\\Straße", "NFON\\STRASSE"),  # str.upper() would make them one account
        ("NFON\\ﬁle", "NFON\\FILE"),  # a ligature is a character of its own
        ("NFON\\ǰ", "NFON\\J̌"),
    ],
)
def test_accounts_python_would_merge_stay_apart(one: str, other: str) -> None:
    assert domain_user_key(one) != domain_user_key(other)


@given(st.text(min_size=1, max_size=20))
def test_the_key_never_changes_the_length_and_is_its_own_key(name: str) -> None:
    key = domain_user_key(name)
    assert len(key) == len(name)  # one character for one, as Windows' upcase table maps
    assert domain_user_key(key) == key
