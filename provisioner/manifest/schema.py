"""The JSON Schema of one manifest document, for editors' YAML plugins and for CI checks.

One schema per kind, chosen by ``kind`` with ``if``/``then``::

    {"required": ["kind"], "properties": {"kind": {"enum": ["Site", ...]}},
     "allOf": [{"if": {"properties": {"kind": {"const": "Tenant"}}},
                "then": {"$ref": "#/$defs/Tenant"}}, ...]}

so that an editor (yaml-language-server) and a validator report a mistake inside a Tenant at the
field that holds it (``debug_level: 12`` at ``debug_level``), not as "matches none of the
alternatives" at the top of the document, as a plain ``oneOf``/``anyOf`` of the kinds would.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from provisioner.manifest.models import KINDS, AnyDocument

SCHEMA_ID = "https://provisioner.invalid/schema/manifest-v1.json"


def manifest_schema() -> dict[str, Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(AnyDocument)
    definitions = adapter.json_schema(mode="validation")["$defs"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "NFON Multiline TAPI provisioner manifest document",
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"description": "what the document describes", "enum": list(KINDS)},
        },
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": f"#/$defs/{model.__name__}"},
            }
            for kind, model in KINDS.items()
        ],
        "$defs": definitions,
    }
