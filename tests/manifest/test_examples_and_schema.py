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
