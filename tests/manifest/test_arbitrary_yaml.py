"""Whatever bytes a manifest holds, validate answers in lines and exit codes, never a traceback."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from provisioner.cli import main
from tests.manifest.estate import TENANT

LINE = re.compile(r"^(\S+:\d+:\d+: .+|.+: no such file or directory)$")

YAMLISH = st.text(
    alphabet=st.sampled_from(list("abk: -[]{}&*!|>'\"#\n\t ,?%@`\\0123456789.\u00e9\u2603")),
    max_size=300,
)
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
KEYS = st.sampled_from(
    ["kind", "name", "k_account", "server", "cti_password", "assignments", "lines", "user", "x"]
)


def run_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(path)])
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out + err


def check_output(code: int, output: str) -> None:
    assert code in (0, 1)
    assert "Traceback" not in output
    problem_lines = [
        line for line in output.splitlines() if line and not re.match(r"^\d+ problem|^valid:", line)
    ]
    for line in problem_lines:
        assert LINE.match(line), line


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=YAMLISH)
def test_arbitrary_text(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    check_output(*run_validate(path, capsys))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.dictionaries(KEYS, VALUES, max_size=8),
    kind=st.sampled_from(["Tenant", "Site", "TapiServer", "TapiClients", 3, None]),
)
def test_arbitrary_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, object], kind: object
) -> None:
    data = {"kind": kind, **data}
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, stream)
    path = tmp_path / "m.yaml"
    path.write_text(stream.getvalue(), encoding="utf-8")
    code, output = run_validate(path, capsys)
    check_output(code, output)
    assert code == 1  # a random document is never a complete, valid estate


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(min_value=0, max_value=len(TENANT)), noise=st.binary(max_size=8))
def test_mangled_tenant_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int, noise: bytes
) -> None:
    raw = TENANT.encode()
    path = tmp_path / "m.yaml"
    path.write_bytes(raw[:cut] + noise + raw[cut:])
    check_output(*run_validate(path, capsys))
