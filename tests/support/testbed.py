"""A designated test server: a TapiServer that holds no tenants and no managed firewall rules.

It is what ``provisioner conformance`` runs on (``examples/first-contact/tapitest.yaml``, beside
the client-tapi example's Site); applying it installs the NFON package and configures TapiSrv,
as an admin would before running the conformance suite on a real test server::

    model = prepared_test_server(tmp_path)            # applied in-process
    windows = model.windows(TEST_SERVER)              # the lab's Windows model
"""

from __future__ import annotations

from pathlib import Path

from tests.support.host_model import ModelEstate
from tests.support.lab import EXAMPLES, ROOT

TEST_SERVER = "tapitest"
SERVER_MANIFEST = (ROOT / "examples" / "first-contact" / f"{TEST_SERVER}.yaml").read_text("utf-8")


def manifests_of_the_test_server() -> dict[str, str]:
    return {
        "site.yaml": (EXAMPLES / "client-tapi" / "site.yaml").read_text(encoding="utf-8"),
        f"{TEST_SERVER}.yaml": SERVER_MANIFEST,
    }


def prepared_test_server(directory: Path) -> ModelEstate:
    """The test server's manifests, applied in-process to a fresh lab host."""
    model = ModelEstate.of(directory, manifests_of_the_test_server())
    responses = model.apply()
    assert all(r.status == "ok" for r in responses.values()), responses
    return model
