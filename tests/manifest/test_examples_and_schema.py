"""The shipped examples validate, and validate against the published JSON Schema too."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from provisioner.manifest import load_estate, loader
from provisioner.manifest.schema import manifest_schema

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
SCENARIOS = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())


def test_there_are_both_scenarios() -> None:
    assert {"client-tapi", "multi-tenant"} <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_example_validates(scenario: str) -> None:
    estate, errors = load_estate([EXAMPLES / scenario])
    assert errors == []
    assert estate.servers and estate.tenants


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_example_documents_match_the_json_schema(scenario: str) -> None:
    schema = manifest_schema()
    validator = jsonschema.Draft202012Validator(schema)
    documents = loader.load([EXAMPLES / scenario]).documents
    assert documents
    for doc in documents:
        problems = [e.message for e in validator.iter_errors(doc.data)]
        assert problems == [], f"{doc.file}: {problems}"


def test_schema_rejects_what_validate_rejects() -> None:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    tenant = {
        "kind": "Tenant",
        "name": "k1",
        "k_account": "K1",
        "server": "s",
        "cti_password": {"env": "X"},
        "assignments": [{"user": "NFON\\a", "lines": ["1"]}],
    }
    assert list(validator.iter_errors(tenant)) == []
    assert list(validator.iter_errors({**tenant, "extra": 1}))
    assert list(validator.iter_errors({**tenant, "k_account": "X1"}))
    assert list(validator.iter_errors({**tenant, "kind": "Tennant"}))


def test_schema_is_json_and_names_every_kind() -> None:
    text = json.dumps(manifest_schema())
    for kind in ("Site", "TapiServer", "Tenant", "TapiClients"):
        assert f'"{kind}"' in text


# --- errors where an editor shows them --------------------------------------------------------

TENANT = {
    "kind": "Tenant",
    "name": "k1",
    "k_account": "K1",
    "server": "s",
    "cti_password": {"env": "X"},
    "assignments": [{"user": "NFON\\a", "lines": ["1"]}],
}


def error_paths(document: dict[str, object]) -> list[tuple[str, ...]]:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    return sorted(tuple(map(str, e.absolute_path)) for e in validator.iter_errors(document))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"debug_level": 12}, ("debug_level",)),
        ({"k_account": "X1"}, ("k_account",)),
        (
            {"assignments": [{"user": "NFON\\a", "lines": [1254]}]},
            ("assignments", "0", "lines", "0"),
        ),
        ({"cti_password": {"env": "X", "extra": 1}}, ("cti_password",)),
        ({"number_format": "e164"}, ("number_format",)),
    ],
)
def test_an_error_inside_a_tenant_is_reported_at_its_field(
    change: dict[str, object], path: tuple[str, ...]
) -> None:
    assert error_paths({**TENANT, **change}) == [path]


def test_the_best_match_names_the_field_not_the_document() -> None:
    validator = jsonschema.Draft202012Validator(manifest_schema())
    best = jsonschema.exceptions.best_match(validator.iter_errors({**TENANT, "debug_level": 12}))
    assert best is not None and list(best.absolute_path) == ["debug_level"]
    assert "12 is greater than the maximum of 9" in best.message


def test_an_unknown_kind_is_reported_at_kind() -> None:
    assert error_paths({**TENANT, "kind": "Tennant"}) == [("kind",)]
    assert error_paths({"name": "x"}) == [()]  # no kind: the document says nothing else yet


def test_each_kind_has_its_own_schema_chosen_by_kind() -> None:
    schema = manifest_schema()
    chosen = {rule["if"]["properties"]["kind"]["const"]: rule["then"] for rule in schema["allOf"]}
    assert chosen == {
        kind: {"$ref": f"#/$defs/{kind}"}
        for kind in ("Site", "TapiServer", "Tenant", "TapiClients")
    }
    assert "anyOf" not in schema and "oneOf" not in schema
