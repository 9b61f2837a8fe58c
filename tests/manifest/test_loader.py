"""Manifest paths: a directory is its whole tree (``tenants/**/*.yaml``), in one stable order."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from provisioner.manifest.loader import manifest_files
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
