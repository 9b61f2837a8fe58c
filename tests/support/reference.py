"""Documents some tests read from outside the repository; they are never copied into it.

    openapi = reference_document(CTI_API_DOCUMENT)   # NFON's CTI API OpenAPI document

NFON publishes both: the CTI API's OpenAPI document in its CTI-API repository on GitHub
(NFON-AG/CTI-API), the Multiline TAPI manual on nfon.com. A test looks for them in the directory
``$PROVISIONER_REFERENCE_DIR`` names, else in ``shared/reference`` beside the checkout, where CI
puts them. A missing document fails the test under ``CI=true`` and skips it elsewhere, with a
reason that names the document.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.support.ci import part_unavailable

VARIABLE = "PROVISIONER_REFERENCE_DIR"
BESIDE_THE_CHECKOUT = Path(__file__).resolve().parents[3] / "shared" / "reference"


@dataclass(frozen=True)
class Document:
    file: str
    title: str
    needed_for: str


CTI_API_DOCUMENT = Document(
    "nfon-cti-api.openapi.json",
    "NFON's CTI API OpenAPI document",
    "it to check the CTI API contract",
)
TAPI_MANUAL = Document(
    "nfon-multiline-tapi-manual.de.txt",
    "NFON's Multiline TAPI manual (German, as text)",
    "it to check the manual's tsecimp example",
)


def reference_dir() -> Path:
    chosen = os.environ.get(VARIABLE)
    return Path(chosen) if chosen else BESIDE_THE_CHECKOUT


def reference_document(document: Document, directory: Path | None = None) -> Path:
    """The document's path; fails under CI, skips elsewhere, when it is not there."""
    path = (directory or reference_dir()) / document.file
    if not path.is_file():
        part_unavailable(
            f"{document.title} is missing at {path} (set {VARIABLE} to its directory)",
            document.needed_for,
        )
    return path
