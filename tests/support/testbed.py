"""A designated test server: a TapiServer that holds no tenants and no managed firewall rules.

It is what ``provisioner conformance`` runs on. Its manifests reuse the client-tapi example's
Site; applying them installs the NFON package and configures TapiSrv, as an admin would before
running the conformance suite on a real test server::

    model = prepared_test_server(tmp_path)            # applied in-process
    windows = model.windows(TEST_SERVER)              # the lab's Windows model
"""

from __future__ import annotations

from pathlib import Path

from tests.support.host_model import ModelEstate
from tests.support.lab import EXAMPLES

TEST_SERVER = "tapitest"
SERVER_MANIFEST = f"""\
kind: TapiServer
name: {TEST_SERVER}
address: 10.20.1.99
client_subnets: [10.20.2.0/24]
package:
  version: "1.0.0"
  source: https://files.nfon.test/software/NFON/NFONTAPI-1.0.0.msi
  sha256: 099b31ed49b497a3fb2b228b6c82182200292f178f0140b91569066cd792bd1f
"""


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
