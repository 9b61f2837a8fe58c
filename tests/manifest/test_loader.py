"""The loader: manifest paths, and two ways of reading YAML that mean the same.

A directory is its whole tree (``tenants/**/*.yaml``), in one stable order. The fast path
(libyaml through PyYAML, and our builder) either steps aside or gives exactly what the located
path (ruamel.yaml) gives: same values, same types, same key order. Every scalar the loader builds
is built or reported at its place.
"""

from __future__ import annotations

import datetime
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner.cli import main
from provisioner.errors import ProvisionerError
from provisioner.inventory import load_inventory
from provisioner.manifest import load_estate, loader
from provisioner.manifest.loader import manifest_files
from tests.manifest.estate import TENANT, write_estate
from tests.manifest.test_bad_inputs import CASES
from tests.support.lab import EXAMPLES, LabFor, run_cli


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("kind: Site\n")


def test_a_directory_is_its_tree_in_the_order_of_the_paths_within_it(tmp_path: Path) -> None:
    touch(
        tmp_path,
        "site.yaml",
        "tenants/zz/k9.yaml",
        "tenants/a/k2.yml",
        "tenants/a/k10.yaml",
        "tenants/a.yaml",
        "servers/tapi01.yaml",
        ".github/workflows/ci.yaml",
        "tenants/.draft.yaml",
        "tenants/notes.txt",
    )
    files, errors = manifest_files([tmp_path])
    assert errors == []
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "servers/tapi01.yaml",
        "site.yaml",
        "tenants/a/k10.yaml",
        "tenants/a/k2.yml",
        "tenants/a.yaml",
        "tenants/zz/k9.yaml",
    ]


def test_the_order_does_not_depend_on_the_order_files_were_made(tmp_path: Path) -> None:
    names = [f"tenants/{group}/k{n}.yaml" for group in "cab" for n in (3, 1, 2)]
    touch(tmp_path / "one", *names)
    touch(tmp_path / "two", *reversed(names))
    first, _ = manifest_files([tmp_path / "one"])
    second, _ = manifest_files([tmp_path / "two"])
    assert [f.relative_to(tmp_path / "one") for f in first] == [
        f.relative_to(tmp_path / "two") for f in second
    ]


def test_a_symlinked_directory_loop_ends(tmp_path: Path) -> None:
    touch(tmp_path, "tenants/k1.yaml")
    os.symlink(tmp_path, tmp_path / "tenants" / "loop")
    files, errors = manifest_files([tmp_path])
    assert errors == [] and [f.name for f in files] == ["k1.yaml"]


def test_a_tree_without_manifests_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, ".hidden/site.yaml")
    (tmp_path / "readme.txt").write_text("x")
    _, errors = manifest_files([tmp_path])
    assert [str(e) for e in errors] == [f"{tmp_path}: directory holds no *.yaml files"]


def tree_of(example: Path, root: Path) -> Path:
    """An example laid out as teams do: ``site.yaml``, ``servers/``, ``tenants/<group>/``."""
    for file in sorted(example.glob("*.yaml")):
        text = file.read_text(encoding="utf-8")
        kind = text.split("kind: ", 1)[1].split("\n", 1)[0]
        folder = {"Site": ".", "TapiServer": "servers", "TapiClients": "clients"}.get(kind)
        folder = folder or f"tenants/{file.stem[:2]}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, root / folder / file.name)
    return root


def test_validate_takes_a_tree(tmp_path: Path) -> None:
    tree = tree_of(EXAMPLES / "multi-tenant", tmp_path / "estate")
    assert (tree / "tenants" / "k6" / "k6732.yaml").is_file()
    result = run_cli("validate", str(tree))
    assert result.code == 0, result.output
    assert result.out.startswith("valid: 5 files, 5 documents")


def test_plan_and_drift_take_a_tree(lab_for: LabFor, tmp_path: Path) -> None:
    estate = lab_for(tree_of(EXAMPLES / "multi-tenant", tmp_path / "estate"))
    assert (estate.manifests / "tenants" / "k8" / "k8450.yaml").is_file()
    assert estate.plan().code == 2
    assert estate.apply().code == 0
    assert estate.plan().code == 0
    assert estate.drift().code == 0


# --- two ways of reading YAML ----------------------------------------------------------------


def same(a: Any, b: Any, seen: set[tuple[int, int]] | None = None) -> bool:
    """Equal, with equal types all the way down (``1 == True == 1.0`` does not count).

    Values shared through aliases are compared once (a billion laughs stays cheap)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict | list):
        seen = set() if seen is None else seen
        if (id(a), id(b)) in seen:
            return True
        seen.add((id(a), id(b)))
        if isinstance(a, dict):
            return list(a) == list(b) and all(same(a[k], b[k], seen) for k in a)
        return len(a) == len(b) and all(same(x, y, seen) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def read_both_ways(text: str) -> str:
    """ "stepped aside" or "same"; fails when the fast path reads the text differently."""
    built = loader._fast_documents(text.encode("utf-8"))
    if built is None:
        return "stepped aside"
    reference = list(loader._ruamel().load_all(text))  # must not fail where the fast path read
    assert same(built.documents, reference), (text, built.documents, reference)
    return "same"


@pytest.mark.parametrize(
    "path", sorted(EXAMPLES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_the_fast_path_reads_every_example_as_ruamel_does(path: Path) -> None:
    assert read_both_ways(path.read_text(encoding="utf-8")) == "same"


BAD_TEXTS = [
    pytest.param(text, id=f"{case.id}/{name}")
    for case in CASES
    for name, text in case.values[0].items()
    if isinstance(text, str) and len(text) < 100_000
]


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_every_bad_input_reads_the_same_either_way(text: str) -> None:
    read_both_ways(text)


# YAML 1.1 and 1.2 disagree on these; the located path (ruamel, YAML 1.2) decides, the fast path
# gives the same or steps aside.
SPELLINGS = [
    ("a: yes", {"a": "yes"}, "same"),
    ("a: [no, on, Off, y, N]", {"a": ["no", "on", "Off", "y", "N"]}, "same"),
    ("a: [true, False, TRUE]", {"a": [True, False, True]}, "same"),
    ("a: 017", {"a": 17}, "same"),
    ("a: -0", {"a": 0}, "same"),
    ("a: 0o17", {"a": 15}, "stepped aside"),
    ("a: 0x1F", {"a": 31}, "stepped aside"),
    ("a: 1_000", {"a": 1000}, "stepped aside"),
    ("a: 1:30", {"a": "1:30"}, "same"),
    ("a: 1.5e3", {"a": 1500.0}, "same"),
    ("a: 1e3", {"a": 1000.0}, "same"),
    ("a: .5", {"a": 0.5}, "same"),
    ("a: .inf", {"a": math.inf}, "stepped aside"),
    ("a: [~, null, '', ]", {"a": [None, None, ""]}, "same"),
    ("a: 2024-02-29", {"a": datetime.date(2024, 2, 29)}, "stepped aside"),
    ('a: "2024-02-29"', {"a": "2024-02-29"}, "same"),
    ("b: &x {c: 1}\na:\n  <<: *x\n  d: 2", {"b": {"c": 1}, "a": {"c": 1, "d": 2}}, "stepped aside"),
    ("a: &x [1]\nb: *x", {"a": [1], "b": [1]}, "same"),
    ("a: !!str 1", {"a": "1"}, "stepped aside"),
    ("%YAML 1.1\n---\na: yes", {"a": "yes"}, "stepped aside"),  # always YAML 1.2
    ("1: a", {1: "a"}, "stepped aside"),
    ("a: [http://x]", None, "stepped aside"),  # libyaml 0.2 reads it, ruamel's 0.1 does not
]


@pytest.mark.parametrize(("text", "expected", "path"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_yaml_1_1_spellings_read_as_yaml_1_2(
    tmp_path: Path, text: str, expected: Any, path: str
) -> None:
    assert read_both_ways(text) == path
    file = tmp_path / "m.yaml"
    file.write_text(text, encoding="utf-8")
    if expected is None:
        with pytest.raises(ProvisionerError):
            loader.load_file(file)
    else:
        assert same(loader.load_file(file)[0].data, expected)


def test_a_duplicate_key_is_still_an_error(tmp_path: Path) -> None:
    assert read_both_ways("a: 1\nb: 2\na: 3\n") == "stepped aside"
    file = tmp_path / "m.yaml"
    file.write_text("a: 1\nb: 2\na: 3\n", encoding="utf-8")
    with pytest.raises(ProvisionerError, match=r"m.yaml:3:1: duplicate key 'a'"):
        loader.load_file(file)


# Scalars ruamel cannot build crashed with a traceback: each is now an error at its place.
SCALARS = [
    ("x: 2024-02-30", "1:4", "'2024-02-30' cannot be read as a date or time: day is out of range"),
    (
        "x: 1" + "0" * 4999,
        "1:4",
        "'10000000000000000000...00000000 (5000 characters)' cannot be read as an integer: "
        "5000 digits are too many",
    ),
    ('x: !!int "abc"', "1:4", "'abc' cannot be read as an integer: not a valid spelling"),
    ("x: !!int 0b2", "1:4", "'0b2' cannot be read as an integer: not a valid spelling"),
    ('x: !!float "x"', "1:4", "'x' cannot be read as a number: not a valid spelling"),
    ("x: !!bool maybe", "1:4", "'maybe' cannot be read as true or false: not a valid spelling"),
    ("x: !!timestamp 2001-13-45", "1:4", "'2001-13-45' cannot be read as a date or time: month"),
    ("x: [1, +_]", "1:8", "'+_' cannot be read as an integer: not a valid spelling"),
    ("x: !!omap [{a: 1}, {a: 2}]", "1:4", "this !!omap cannot be built: not a valid spelling"),
]


@pytest.mark.parametrize(("line", "where", "message"), SCALARS, ids=[s[0][:24] for s in SCALARS])
def test_a_scalar_that_cannot_be_built_is_located_in_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, where: str, message: str
) -> None:
    write_estate(tmp_path, k6732_yaml=line + "\n" + TENANT)
    _, errors = load_estate([tmp_path])
    first = str(errors[0]).replace(f"{tmp_path}/", "")
    assert first.startswith(f"k6732.yaml:{where}: {message}"), errors
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(tmp_path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1
    assert "Traceback" not in out + err
    assert f"k6732.yaml:{where}: {message}" in out


@pytest.mark.parametrize(("line", "where", "message"), SCALARS, ids=[s[0][:24] for s in SCALARS])
def test_a_scalar_that_cannot_be_built_is_located_in_an_inventory(
    tmp_path: Path, line: str, where: str, message: str
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts: {}\n" + line + "\n", encoding="utf-8")
    row, column = where.split(":")
    with pytest.raises(ProvisionerError) as raised:
        load_inventory(inventory)
    assert str(raised.value).startswith(f"{inventory}:{int(row) + 1}:{column}: {message}")


ATOMS = st.sampled_from(
    [
        *["yes", "No", "on", "OFF", "true", "False", "null", "~", "", "017", "-0", "+1", "0o17"],
        *["0x1F", "0b11", "1_000", "1:30", "2024-02-29", "2024-02-30", "1.5", "1e3", ".5", "1."],
        *[".inf", "-.Inf", ".nan", "<<", "=", "a:b", "a?b", "http://x", "#x", "'q'", '"d\\x41"'],
        *['"\\\'"', "!!str 1", "!!int x", "!x y", "&a 1", "*a", "*b", "? k", "- i", "k: v"],
    ]
) | st.text(alphabet="ab 0123456789.:-_#'\"\\", max_size=8)


def _node(depth: int) -> st.SearchStrategy[str]:
    if depth == 0:
        return ATOMS
    inner = _node(depth - 1)
    flow_seq = st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")
    flow_map = st.lists(st.tuples(ATOMS, inner), max_size=3).map(
        lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"
    )
    block_map = st.lists(st.tuples(ATOMS, inner), min_size=1, max_size=3).map(
        lambda kv: "\n" + "".join(f"{'  ' * (3 - depth)}{k}: {v}\n" for k, v in kv)
    )
    block_seq = st.lists(inner, min_size=1, max_size=3).map(
        lambda xs: "\n" + "".join(f"{'  ' * (3 - depth)}- {x}\n" for x in xs)
    )
    anchored = st.tuples(st.sampled_from(["&a ", "&b ", ""]), flow_seq | flow_map).map("".join)
    return inner | flow_seq | flow_map | block_map | block_seq | anchored


DOCUMENTS = st.lists(st.tuples(ATOMS, _node(2)), min_size=1, max_size=4).map(
    lambda kv: "".join(f"{k}: {v}\n" for k, v in kv)
) | st.lists(st.sampled_from(["---\n", "...\n", "%YAML 1.2\n", "a: 1\n", "- b\n"]), max_size=5).map(
    "".join
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=DOCUMENTS)
def test_generated_yaml_reads_the_same_either_way(text: str) -> None:
    read_both_ways(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=list("ab: -[]{}&*!|>'\"#\n ,?%@\\0123456789.~<=_"), max_size=60))
def test_arbitrary_text_reads_the_same_either_way(text: str) -> None:
    read_both_ways(text)
