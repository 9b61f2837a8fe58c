"""The NFON TAPI package: versions compared as numbers, a same-ProductCode upgrade installed as
a reinstall, no downgrade, and a workstation file sent only when the host lacks it."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.lab.windows_host import LAB_PACKAGES, ProductRecord, lab_package_bytes
from provisioner.plan.model import Action
from provisioner.remote.contract import PackageInstall
from provisioner.resources.package import canonical_version, version_key
from provisioner.runner import build_steps
from tests.manifest.estate import SITE
from tests.support.host_model import ModelEstate

CODE_10 = next(p.product_code for p in LAB_PACKAGES if p.version == "1.0.0")


def sha256_of(version: str) -> str:
    return next(p.sha256 for p in LAB_PACKAGES if p.version == version)


def server(version: str, source: str = "", extra: str = "") -> str:
    source = source or f"https://files.nfon.test/NFONTAPI-{version}.msi"
    return f"""\
kind: TapiServer
name: tapi01
address: 10.0.1.20
cti_engine: null
package:
  version: "{version}"
  source: {source}
  sha256: {sha256_of(version)}
{extra}"""


def model(tmp_path: Path, text: str) -> ModelEstate:
    return ModelEstate.of(tmp_path, {"site.yaml": SITE, "tapi01.yaml": text})


def installed(estate: ModelEstate, *versions_and_codes: tuple[str, str]) -> None:
    estate.windows("tapi01").state.products = [
        ProductRecord(code, "NFON TAPI", version) for version, code in versions_and_codes
    ]


def package_change(estate: ModelEstate):
    return next((c for c in estate.plan().changes if c.kind == "package"), None)


def install_operation(estate: ModelEstate) -> PackageInstall:
    _, host_plans = estate.build()
    host_plan = host_plans["server/tapi01"]
    change = next(c for c in host_plan.changes if c.kind == "package")
    (step,) = build_steps(host_plan, [change])[0]
    assert isinstance(step.operation, PackageInstall)
    return step.operation


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1.9.0", "1.10.0"), ("1.0", "1.0.1"), ("1.2.3", "1.2.3.1"), ("2", "10")],
)
def test_versions_compare_as_numbers(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)


@pytest.mark.parametrize(
    ("spelling", "canonical"), [("1.0", "1.0.0"), ("1.0.0.0", "1.0.0"), ("01.10", "1.10.0")]
)
def test_one_spelling_per_version(spelling: str, canonical: str) -> None:
    assert canonical_version(spelling) == canonical


def test_the_same_version_in_another_spelling_is_no_change(tmp_path: Path) -> None:
    estate = model(tmp_path, server("1.0.0"))
    installed(estate, ("1.0", CODE_10))  # Windows Installer's DisplayVersion may be shorter
    change = package_change(estate)
    assert change is not None and change.action is Action.NOOP


def test_the_newest_installed_version_counts(tmp_path: Path) -> None:
    estate = model(tmp_path, server("1.10.0"))
    installed(estate, ("1.10.0", "{00000000-0000-0000-0000-000000000110}"), ("1.9.0", CODE_10))
    change = package_change(estate)
    assert change is not None and change.action is Action.NOOP


def test_a_newer_installed_version_is_a_problem_not_a_downgrade(tmp_path: Path) -> None:
    estate = model(tmp_path, server("1.9.0"))
    installed(estate, ("1.10.0", "{00000000-0000-0000-0000-000000000110}"))
    plan = estate.plan()
    assert package_change(estate) is None
    (problem,) = plan.problems
    assert problem.host == "tapi01"
    assert "has NFON TAPI 1.10.0, newer than package.version 1.9.0" in problem.message


def test_a_package_with_the_installed_product_code_upgrades_as_a_reinstall(
    tmp_path: Path,
) -> None:
    plain = model(tmp_path / "plain", server("1.0.1"))
    installed(plain, ("1.0.0", CODE_10))
    operation = install_operation(plain)
    assert (operation.reinstall, operation.installed_product_code) == (False, CODE_10)
    response = plain.apply()["server/tapi01"]
    message = next(r.message for r in response.results if r.status == "failed")
    assert "1638" in message and f"set package.product_code: '{CODE_10}'" in message

    told = model(tmp_path / "told", server("1.0.1", extra=f'  product_code: "{CODE_10}"\n'))
    installed(told, ("1.0.0", CODE_10))
    assert install_operation(told).reinstall is True
    assert told.apply()["server/tapi01"].status == "ok"
    assert [p.version for p in told.windows("tapi01").state.products] == ["1.0.1"]
    assert not told.plan().actionable


def test_a_workstation_package_is_sent_once(tmp_path: Path) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "NFONTAPI-1.0.0.msi").write_bytes(lab_package_bytes("1.0.0"))
    estate = model(tmp_path, server("1.0.0", source="NFONTAPI-1.0.0.msi"))
    operation = install_operation(estate)
    assert (operation.fetch, operation.source) == ("upload", "NFONTAPI-1.0.0.msi")
    assert estate.apply()["server/tapi01"].status == "ok"
    assert estate.uploads == [f"tapi01 {sha256_of('1.0.0')}"]
    estate.windows("tapi01").state.products.clear()  # uninstalled behind our back
    assert estate.apply()["server/tapi01"].status == "ok"
    assert len(estate.uploads) == 1  # the host still held it
