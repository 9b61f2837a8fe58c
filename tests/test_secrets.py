"""A Secret never shows itself; references resolve from the environment or a file."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel

from provisioner.secrets import REDACTED, Secret, SecretError, redact, resolve

VALUE = "s3cr3t-Pa55"


def test_every_form_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(VALUE)
    assert str(secret) == repr(secret).removeprefix("Secret(").removesuffix(")") == REDACTED
    assert f"{secret}" == f"{secret!s:>20}".strip() == REDACTED
    with caplog.at_level(logging.INFO):
        logging.getLogger("t").info("password is %s (%r)", secret, secret)
    assert VALUE not in caplog.text

    class Holder(BaseModel):
        password: Secret

    holder = Holder(password=secret)
    assert VALUE not in holder.model_dump_json()
    assert VALUE not in repr(holder)
    assert json.loads(holder.model_dump_json())["password"] == REDACTED
    assert holder.password.reveal() == VALUE


def test_a_secret_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret(VALUE))


def test_fingerprint_is_keyed() -> None:
    secret = Secret(VALUE)
    assert secret.fingerprint(b"a") != secret.fingerprint(b"b")
    assert secret.fingerprint(b"a") == Secret(VALUE).fingerprint(b"a")
    assert VALUE not in secret.fingerprint(b"a")


def test_resolve_env_and_file(tmp_path: Path) -> None:
    assert resolve({"env": "X"}, environ={"X": VALUE}).reveal() == VALUE
    (tmp_path / "pw").write_text(VALUE + "\n")
    assert resolve({"file": "pw"}, base=tmp_path).reveal() == VALUE


def test_resolve_errors_name_the_reference_not_the_value(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="environment variable NOPE is not set"):
        resolve({"env": "NOPE"}, environ={})
    with pytest.raises(SecretError, match="cannot be read"):
        resolve({"file": "missing"}, base=tmp_path)


def test_secret_files_may_carry_a_bom_and_must_be_utf8(tmp_path: Path) -> None:
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf" + VALUE.encode() + b"\r\n")
    assert resolve({"file": "bom"}, base=tmp_path).reveal() == VALUE
    (tmp_path / "utf16").write_bytes("pässword".encode("utf-16"))
    with pytest.raises(SecretError, match="is not UTF-8: save it as UTF-8") as caught:
        resolve({"file": "utf16"}, base=tmp_path)
    assert "ssword" not in str(caught.value)  # no part of the value is quoted


def test_non_ascii_secrets_compare() -> None:
    assert Secret("pässwörd") == Secret("pässwörd")
    assert Secret("pässwörd") != Secret("passwort")


@pytest.mark.parametrize(
    ("text", "secrets", "shown"),
    [
        ("Temporary failure", ["y"], "Temporary failure"),
        ("password y rejected", ["y"], f"password {REDACTED} rejected"),
        (
            '{"error": "bad password hunter2."}',
            ["hunter2"],
            f'{{"error": "bad password {REDACTED}."}}',
        ),
        ("token=ab!c&x=1", ["ab!c"], f"token={REDACTED}&x=1"),
        ("x!ab", ["!ab"], f"x{REDACTED}"),  # a secret that starts with a symbol needs no boundary
        ("abcdef abc", ["abc", "abcdef"], f"{REDACTED} {REDACTED}"),
        ("nothing here", ["", "zz"], "nothing here"),
    ],
)
def test_redaction_hides_each_secret_and_changes_nothing_else(
    text: str, secrets: list[str], shown: str
) -> None:
    assert redact(text, secrets) == shown
