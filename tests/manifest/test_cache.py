"""The manifest cache: an unchanged file is read from it; a bad entry is never believed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.cli import main
from provisioner.inventory import load_inventory
from provisioner.manifest import cache, load_estate, loader
from tests.manifest.estate import TENANT, write_estate


@pytest.fixture(autouse=True)
def cache_on() -> Iterator[None]:
    yield
    cache.enabled(True)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISIONER_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def tenant_file(tmp_path: Path, text: str = TENANT) -> Path:
    path = tmp_path / "k6732.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def entry_path(store: cache.Cache, path: Path) -> Path:
    return store.path(store.key(hashlib.sha256(path.read_bytes()).hexdigest()))


def reference(path: Path) -> list[loader.Document]:
    return loader.load_file(path)  # no cache: parsed from the YAML


def test_the_second_read_comes_from_the_cache(tmp_path: Path) -> None:
    path = tenant_file(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    first = loader.load_file(path, store)
    assert (store.hits, store.misses) == (0, 1)
    assert entry_path(store, path).is_file()
    second = loader.load_file(path, store)
    assert (store.hits, store.misses) == (1, 1)
    assert second == first == reference(path)


def test_a_changed_file_is_parsed_again(tmp_path: Path) -> None:
    path = tenant_file(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    loader.load_file(path, store)
    path.write_text(TENANT.replace("alice", "carol"), encoding="utf-8")
    documents = loader.load_file(path, store)
    assert documents[0].data["assignments"][0]["user"] == "NFON\\carol"
    assert store.hits == 0


def _corrupt_truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _corrupt_garbage(raw: bytes) -> bytes:
    return bytes(range(256)) * 4


def _corrupt_wrong_version(raw: bytes) -> bytes:
    head, _, payload = raw.partition(b"\n")
    header = json.loads(head)
    header["format"] = cache.FORMAT + 1
    return json.dumps(header).encode() + b"\n" + payload


def _corrupt_other_key(raw: bytes) -> bytes:  # an entry written by another version of the tool
    head, _, payload = raw.partition(b"\n")
    header = json.loads(head)
    header["key"] = "0" * 64
    return json.dumps(header).encode() + b"\n" + payload


def _corrupt_tampered(raw: bytes) -> bytes:  # edited by hand: the digest no longer matches
    return raw.replace(b"NFON\\\\alice", b"NFON\\\\mallory")


def _forge(payload: bytes, raw: bytes, documents: int | None = None) -> bytes:
    head, _, _ = raw.partition(b"\n")
    header = json.loads(head)
    header["sha256"] = hashlib.sha256(payload).hexdigest()
    if documents is not None:
        header["documents"] = documents
    return json.dumps(header).encode() + b"\n" + payload


def _corrupt_not_json_numbers(raw: bytes) -> bytes:
    return _forge(b'[[0, {"kind": "Tenant", "debug_level": NaN}]]', raw)


def _corrupt_wrong_shape(raw: bytes) -> bytes:
    return _forge(b'{"kind": "Tenant"}', raw)


def _corrupt_null_document(raw: bytes) -> bytes:
    return _forge(b"[[0, null]]", raw)


def _corrupt_index_not_a_number(raw: bytes) -> bytes:
    return _forge(b'[["0", {"kind": "Tenant"}]]', raw)


def _corrupt_wrong_count(raw: bytes) -> bytes:
    return _forge(b'[[0, {"kind": "Tenant"}]]', raw, documents=2)


CORRUPTIONS = {
    name.removeprefix("_corrupt_"): function
    for name, function in dict(globals()).items()
    if name.startswith("_corrupt_")
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_bad_entry_is_ignored_and_written_anew(tmp_path: Path, corruption: str) -> None:
    path = tenant_file(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    loader.load_file(path, store)
    entry = entry_path(store, path)
    good = entry.read_bytes()
    entry.write_bytes(CORRUPTIONS[corruption](good))
    assert store.get(hashlib.sha256(path.read_bytes()).hexdigest()) is None
    assert loader.load_file(path, store) == reference(path)
    assert entry.read_bytes() == good  # rewritten
    assert loader.load_file(path, store) == reference(path)
    assert store.hits == 1


def test_an_oversized_entry_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tenant_file(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    loader.load_file(path, store)
    monkeypatch.setattr(cache, "MAX_ENTRY_BYTES", 10)
    assert store.get(hashlib.sha256(path.read_bytes()).hexdigest()) is None


def test_values_json_cannot_carry_are_not_cached(tmp_path: Path) -> None:
    path = tenant_file(tmp_path, TENANT + "when: 2024-02-29\n")
    store = cache.Cache(tmp_path / "cache")
    loader.load_file(path, store)
    assert not entry_path(store, path).exists()


def test_an_unwritable_cache_is_not_used(tmp_path: Path) -> None:
    path = tenant_file(tmp_path)
    (tmp_path / "cache").write_text("a file where the directory should be")
    store = cache.Cache(tmp_path / "cache" / "manifests")
    assert loader.load_file(path, store) == reference(path)


def test_an_inventory_is_never_cached(tmp_path: Path, state_dir: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("secrets: {K6732_PW: hunter2}\n", encoding="utf-8")
    load_inventory(inventory)
    assert not state_dir.exists()


def an_estate(tmp_path: Path) -> Path:
    (tmp_path / "estate").mkdir()
    return write_estate(tmp_path / "estate")


def loaded_entry(tmp_path: Path) -> tuple[Path, Path]:
    """An estate loaded once with the cache on, and the cache entry of its tenant file."""
    estate = an_estate(tmp_path)
    load_estate([estate])
    store = cache.open_cache()
    assert store is not None
    return estate, entry_path(store, estate / "k6732.yaml")


def forge_entry(entry: Path, old: bytes, new: bytes) -> None:
    """Edit the entry's payload and fix its digest, as a deliberate forger would."""
    _, _, payload = entry.read_bytes().partition(b"\n")
    entry.write_bytes(_forge(payload.replace(old, new), entry.read_bytes()))


def forged_estate(tmp_path: Path) -> Path:
    """An estate whose cached tenant now says something the file does not."""
    estate, entry = loaded_entry(tmp_path)
    forge_entry(entry, b"NFON\\\\alice", b"NFON\\\\forged")
    return estate


def render_users(estate: Path, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["render", "tsecimp", *options, "--tenant", "k6732", str(estate)])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_commands_use_the_cache_and_no_cache_bypasses_it(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    estate = forged_estate(tmp_path)
    # a forged entry is believed (it passes every check): that proves the cache is read
    assert "NFON\\forged" in render_users(estate, capsys)
    assert "NFON\\alice" in render_users(estate, capsys, "--no-cache")
    assert "NFON\\forged" in render_users(estate, capsys)  # the next command uses it again


def test_what_the_cache_yields_is_validated_again(tmp_path: Path, state_dir: Path) -> None:
    estate, entry = loaded_entry(tmp_path)
    forge_entry(entry, b'"K6732"', b'"X6732"')
    _, errors = load_estate([estate])
    assert any("'X6732' is not valid" in str(e) for e in errors), errors


def test_the_cache_lives_under_the_state_directory(tmp_path: Path, state_dir: Path) -> None:
    load_estate([an_estate(tmp_path)])
    entries = list((state_dir / "cache" / "manifests").glob("*/*.json"))
    assert len(entries) == 4
    assert (state_dir / "cache" / ".gitignore").read_text().splitlines()[-1] == "*"
