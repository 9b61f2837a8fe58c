"""Rules checked before anything reaches a host: where the package comes from, platform patterns,
lines of one PBX, and invalid documents."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from provisioner.manifest import load_estate
from tests.manifest.estate import SERVER, SITE, TENANT, write_estate


def problems(tmp_path: Path, **files: str) -> list[str]:
    _, errors = load_estate([write_estate(tmp_path, **files)])
    return [str(e).replace(f"{tmp_path}/", "") for e in errors]


# --- platform overrides ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("instance_settings_key", "every tenant on a server would write one registry key"),
        ("instance_file_pattern", "every tenant on a server would copy the TSP to one file"),
        ("instance_provider_name", "every tenant on a server would register one provider name"),
    ],
)
def test_an_instance_pattern_without_instance_is_rejected_at_its_value(
    tmp_path: Path, key: str, what: str
) -> None:
    server = SERVER + f"platform: {{{key}: 'HKLM:\\SOFTWARE\\NFON\\One'}}\n"
    assert problems(tmp_path, tapi01_yaml=server) == [
        f"tapi01.yaml:7:{14 + len(key)}: platform.{key} must contain {{instance}}: without it "
        + what
    ]


def test_a_site_override_is_checked_as_well(tmp_path: Path) -> None:
    site = SITE + "platform:\n  instance_file_pattern: NFONTSP_ALL.TSP\n"
    assert problems(tmp_path, site_yaml=site) == [
        "site.yaml:16:26: platform.instance_file_pattern must contain {instance}: without it "
        "every tenant on a server would copy the TSP to one file"
    ]


def test_an_escaped_brace_is_no_placeholder(tmp_path: Path) -> None:
    server = SERVER + "platform: {instance_file_pattern: 'X_{{instance}}.TSP'}\n"
    [problem] = problems(tmp_path, tapi01_yaml=server)
    assert problem.startswith("tapi01.yaml:7:35: platform.instance_file_pattern must contain")


@pytest.mark.parametrize("value", ["Engine{instance}", "Engine{", "Engine{0}"])
def test_other_keys_take_no_placeholder(tmp_path: Path, value: str) -> None:
    server = SERVER + f"platform: {{cti_engine_service: '{value}'}}\n"
    assert problems(tmp_path, tapi01_yaml=server) == [
        "tapi01.yaml:7:32: platform.cti_engine_service takes no placeholder: only "
        "instance_file_pattern, instance_provider_name, instance_settings_key fill in {instance}"
    ]


def test_the_default_patterns_and_a_good_override_pass(tmp_path: Path) -> None:
    server = SERVER + "platform: {instance_settings_key: 'HKLM:\\SOFTWARE\\X\\{instance}'}\n"
    assert problems(tmp_path, tapi01_yaml=server) == []


# --- one rule for the lines of one PBX ------------------------------------------------------

SECOND_SERVER = SERVER.replace("tapi01", "tapi02").replace("10.0.1.20", "10.0.1.21")
ALICE_100 = """\
kind: Tenant
name: {name}
k_account: K6732
server: {server}
cti_password: {{env: K6732_PW}}
assignments:
  - user: {user}
    lines: ["100"]{shared}
"""


def tenant(name: str, server: str, user: str, shared: bool = False) -> str:
    flag = "\n    shared: true" if shared else ""
    return ALICE_100.format(name=name, server=server, user=user, shared=flag)


def test_one_pbx_on_two_servers_gives_a_line_to_one_user(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        k6732_yaml=tenant("k6732", "tapi01", "NFON\\alice"),
        tapi02_yaml=SECOND_SERVER,
        k6732b_yaml=tenant("k6732b", "tapi02", "NFON\\bob"),
    )
    assert found == [
        "k6732b.yaml:8:13: line 100 is already assigned to NFON\\alice in tenant 'k6732' of "
        "K6732 (k6732.yaml:7:11): set 'shared: true' on both assignments to give it to several "
        "users"
    ]


def test_the_same_rule_holds_inside_one_tenant(tmp_path: Path) -> None:
    both = TENANT.replace('lines: ["101", "102"]', 'lines: ["100"]')
    assert problems(tmp_path, k6732_yaml=both) == [
        "k6732.yaml:10:13: line 100 is already assigned to NFON\\alice: set 'shared: true' on "
        "both assignments to give it to several users"
    ]


def test_shared_on_both_sides_gives_the_line_to_both(tmp_path: Path) -> None:
    assert (
        problems(
            tmp_path,
            k6732_yaml=tenant("k6732", "tapi01", "NFON\\alice", shared=True),
            tapi02_yaml=SECOND_SERVER,
            k6732b_yaml=tenant("k6732b", "tapi02", "NFON\\bob", shared=True),
        )
        == []
    )


def test_another_pbx_has_its_own_line_100(tmp_path: Path) -> None:
    other = tenant("k7001", "tapi02", "NFON\\carol").replace("K6732", "K7001")
    assert problems(tmp_path, tapi02_yaml=SECOND_SERVER, k7001_yaml=other) == []


# --- a document that failed its own checks feeds no rule across documents -----------------

CRM = "NFON\\crm"
ALLOWED_SITE = SITE.replace(
    "  bind_password: {env: AD_PW}\n",
    "  bind_password: {env: AD_PW}\n  cross_tenant_users: [NFON\\crm]\n",
)


def crm_tenants() -> dict[str, str]:
    return {
        "k6732_yaml": tenant("k6732", "tapi01", CRM),
        "k7001_yaml": tenant("k7001", "tapi01", CRM).replace("K6732", "K7001"),
    }


def test_cross_tenant_users_let_one_account_into_two_tenants(tmp_path: Path) -> None:
    assert problems(tmp_path, site_yaml=ALLOWED_SITE, **crm_tenants()) == []


def test_a_typo_in_a_server_file_is_the_only_problem(tmp_path: Path) -> None:
    typo = SERVER.replace("client_subnets:", "client_subnet:")
    assert problems(tmp_path, site_yaml=ALLOWED_SITE, tapi01_yaml=typo, **crm_tenants()) == [
        "tapi01.yaml:4:1: unknown field 'client_subnet' (did you mean 'client_subnets'?)"
    ]


def test_a_typo_in_the_site_file_is_the_only_problem(tmp_path: Path) -> None:
    typo = ALLOWED_SITE.replace("dns_servers:", "dns_server:")
    found = problems(tmp_path, site_yaml=typo, **crm_tenants())
    assert [p.split(": ", 1)[0] for p in found] == ["site.yaml:1:1", "site.yaml:10:1"]


# --- where the package comes from ---------------------------------------------------------

CONTENT = b"an MSI, as far as this test is concerned"
SHA256 = hashlib.sha256(CONTENT).hexdigest()


def with_package(source: str, extra: str = "", sha256: str = SHA256) -> str:
    return (
        SERVER + f"package:\n  version: '1.0.0'\n  source: '{source}'\n  sha256: {sha256}\n{extra}"
    )


def errors_of(directory: Path, server: str) -> list[str]:
    (directory / "NFONTAPI.msi").write_bytes(CONTENT)
    _, errors = load_estate([write_estate(directory, tapi01_yaml=server)])
    return [f"{e.location.line}:{e.location.column}: {e.message}" for e in errors if e.location]


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (
            with_package("\\\\files.nfon.test\\software\\NFONTAPI.msi"),
            "9:11: package.source '\\\\files.nfon.test\\software\\NFONTAPI.msi': over WinRM the "
            "host cannot use your credentials to read a share (the second hop); give a file on "
            "this workstation or an https:// URL, or set host_reads_share: true if the host "
            "reads the share by itself",
        ),
        (
            with_package("http://files.nfon.test/NFONTAPI.msi"),
            "9:11: package.source 'http://files.nfon.test/NFONTAPI.msi': the host fetches only "
            "https:// URLs; or give a file on this workstation, which is sent over WinRM",
        ),
        (
            with_package("missing.msi"),
            "9:11: package.source: {dir}/missing.msi cannot be read (No such file or "
            "directory); a relative path is relative to this manifest's folder",
        ),
        (
            with_package("NFONTAPI.msi", sha256="ab" * 32),
            f"9:11: package.source: {{dir}}/NFONTAPI.msi has sha256 {SHA256}, not "
            f"package.sha256 {'ab' * 32}",
        ),
        (
            with_package("https://files.nfon.test/x.msi", "  host_reads_share: true\n"),
            "11:21: host_reads_share is for UNC sources only",
        ),
        (
            SERVER + "platform: {msiexec_timeout_seconds: 0}\n",
            "7:37: platform.msiexec_timeout_seconds: a number of seconds from 1 to 86400, not '0'",
        ),
    ],
    ids=["unc", "http", "missing-file", "wrong-file", "reads-share-not-unc", "timeout-zero"],
)
def test_a_package_the_host_cannot_get_is_refused_offline(
    tmp_path: Path, server: str, expected: str
) -> None:
    assert errors_of(tmp_path, server) == [expected.format(dir=tmp_path)]


@pytest.mark.parametrize(
    "server",
    [
        with_package("NFONTAPI.msi"),
        with_package("https://files.nfon.test/NFONTAPI.msi"),
        with_package("\\\\files\\software\\NFONTAPI.msi", "  host_reads_share: true\n"),
        SERVER + "platform: {command_timeout_seconds: 600, verpatch_path: 'D:\\Tools\\vp.exe'}\n",
    ],
    ids=["workstation-file", "https", "share-the-host-reads", "platform-numbers"],
)
def test_each_way_the_host_can_get_it_is_valid(tmp_path: Path, server: str) -> None:
    assert errors_of(tmp_path, server) == []
