"""The JSON Schema of one manifest document, for editors' YAML plugins and for CI checks."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from provisioner.manifest.models import AnyDocument

SCHEMA_ID = "https://provisioner.invalid/schema/manifest-v1.json"


def manifest_schema() -> dict[str, Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[AnyDocument, Field(discriminator="kind")])
    schema = adapter.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "NFON Multiline TAPI provisioner manifest document",
        **schema,
    }
