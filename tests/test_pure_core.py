"""The core (load, validate, expand, diff, plan, render) imports no transport library."""

from __future__ import annotations

import subprocess
import sys


def test_the_core_imports_no_transport() -> None:
    code = (
        "import sys\n"
        "import provisioner.manifest, provisioner.planner, provisioner.plan\n"
        "import provisioner.render.text, provisioner.render.json_format\n"
        "import provisioner.render.markdown, provisioner.render.drift\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'ldap3', 'httpx', 'winrm', 'requests', 'spnego'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
