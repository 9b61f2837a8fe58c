"""``provisioner export``: manifests from a live server that validate, plan empty and drift clean.

Each example is applied in the lab, then exported from the server alone (no manifests given):
the export must describe that server so exactly that ``plan`` right after has nothing to do and
``drift`` finds nothing. Then the same after hand changes (``provisioner.lab.tamper``), and with
Active Directory, where a hand-made assignment of a user the directory does not know is written
commented out, with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from provisioner.directory.model import ADUser, DirectoryFacts
from provisioner.export import firewall_rules, tenant_manifest
from provisioner.lab.tamper import tamper
from provisioner.lab.windows_host import TsecUser
from provisioner.manifest.models import SecretRef, Tenant, domain_user_key
from provisioner.resources.base import Resource
from tests.loop.test_directory_in_plan import CLIENT_TAPI, ADLabFor, ad_lab  # noqa: F401
from tests.support.lab import EXAMPLES, LabEstate, LabFor, secret_hits


def server_of(estate: LabEstate) -> str:
    return next(name for name, host in estate.lab.hosts.items() if host.role == "server")


def export(estate: LabEstate, *args: str | Path) -> Path:
    out = estate.directory / "exported"
    result = estate.cli("export", *args, "--server", server_of(estate), "--out", out)
    assert result.code == 0, result.output
    return out


def server_inventory(estate: LabEstate) -> Path:
    """The lab's inventory for the exported server alone: an inventory entry that names a host
    the manifests do not (the lab's workstations) is an error."""
    yaml = YAML()
    inventory = yaml.load(estate.lab.inventory_path.read_text(encoding="utf-8"))
    inventory["hosts"] = {server_of(estate): inventory["hosts"][server_of(estate)]}
    inventory.setdefault("base_dir", str(estate.lab.inventory_path.parent))
    path = estate.directory / "server-inventory.yaml"
    with path.open("w", encoding="utf-8") as stream:
        yaml.dump(inventory, stream)
    return path


def assert_adopted(estate: LabEstate, *paths: Path, drift: int = 0) -> None:
    """validate passes, plan has nothing to do, drift finds nothing (or what it should)."""
    validated = estate.cli("validate", *paths)
    assert validated.code == 0, validated.output
    inventory = ("--inventory", server_inventory(estate))
    planned = estate.cli("plan", *paths, "--detailed-exitcode", *inventory)
    assert planned.code == 0, planned.output
    assert "No changes" in planned.out
    drifted = estate.cli("drift", *paths, *inventory)
    assert drifted.code == drift, drifted.output


@pytest.mark.parametrize("example", ["client-tapi", "multi-tenant"])
def test_an_applied_example_exports_to_manifests_whose_plan_is_empty(
    example: str, lab_for: LabFor
) -> None:
    estate = lab_for(EXAMPLES / example)
    assert estate.apply().code == 0
    # client-tapi's Telephony administrators name the users' domain; multi-tenant's do not
    out = export(estate, *(["--domain", "NFON"] if example == "multi-tenant" else []))
    model = estate.model()
    written = sorted(p.name for p in out.glob("*.yaml"))
    assert written == sorted(
        ["site.yaml", f"{server_of(estate)}.yaml"] + [f"{t}.yaml" for t in model.tenants]
    )
    assert_adopted(estate, out)

    tenant = next(iter(model.tenants.values()))
    text = (out / f"{tenant.name}.yaml").read_text(encoding="utf-8")
    assert f"cti_password: {{env: {tenant.k_account}_CTI_PASSWORD}}  # GUESS:" in text
    line_name = next(line for line in text.splitlines() if line.startswith("line_name_format:"))
    assert "# GUESS: read from the settings key the profile assumes" in line_name
    files = {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.yaml")}
    assert secret_hits(estate.lab.values, files) == []
    server = files[f"{server_of(estate)}.yaml"]
    assert "# package:" in server and "a host does not record either" in server


def test_what_changed_by_hand_is_what_is_exported(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    tamper(estate.lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    tamper(estate.lab, "tapi01", "unassign-user", "NFON\\jdoe")
    tamper(estate.lab, "tapi01", "stop-service", "NFONCTIEngine")
    out = export(estate)
    assert_adopted(estate, out)
    server = (out / "tapi01.yaml").read_text(encoding="utf-8")
    assert "nfon-tapi-in-smb" not in server and "nfon-tapi-in-rpc-epmap" in server
    assert "state: stopped" in server
    assert "JDOE" not in (out / "k6732.yaml").read_text(encoding="utf-8")


def test_users_the_directory_does_not_know_or_disabled_are_written_commented_out() -> None:
    tenant = Tenant(
        kind="Tenant", name="k1", k_account="K1", server="s", cti_password=SecretRef(env="X")
    )

    def listed(user: str, *lines: str) -> Resource:
        key = domain_user_key(user)
        return Resource(f"tenant/k1/line_assignment/{key}", "line_assignment", "s",
                        {"lines": list(lines)}, tenant="k1")  # fmt: skip

    directory = DirectoryFacts(
        users={
            "NFON\\ANNA": ADUser("Anna", "NFON", "Anna", False, "CN=Anna", "cn=anna"),
            "NFON\\GONE": None,
            "NFON\\OLD": ADUser("old", "NFON", None, True, "CN=old", "cn=old"),
        }
    )
    found = [listed("NFON\\ANNA", "100"), listed("NFON\\GONE", "101"), listed("NFON\\OLD", "100")]
    text = tenant_manifest(tenant, found, directory).text()
    assert "  - user: NFON\\Anna\n    lines: ['100']\n" in text  # as the directory spells it
    assert "shared" not in text  # OLD is not exported, so line 100 has one user
    assert text.endswith(
        "# Found on the server, not exported (uncomment once resolved):\n"
        "#   - user: NFON\\GONE  # not exported: the directory does not know this user "
        "(assigned by hand?)\n"
        "#     lines: ['101']\n"
        "#   - user: NFON\\OLD  # not exported: the user is disabled in the directory\n"
        "#     lines: ['100']\n"
    )


def test_users_sharing_a_line_need_their_domain_known(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "multi-tenant")
    assert estate.apply().code == 0
    result = estate.cli("export", "--server", "crm01", "--out", estate.directory / "out")
    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "does not read one way only" in result.err
    assert "it is DOMAIN now, name another with --domain" in result.err


def test_export_takes_the_site_from_the_given_manifests(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    site = estate.manifests / "site.yaml"
    out = export(estate, site)
    assert not (out / "site.yaml").exists()
    assert_adopted(estate, site, out)


def test_export_never_overwrites(lab_for: LabFor) -> None:
    estate = lab_for(EXAMPLES / "client-tapi")
    assert estate.apply().code == 0
    out = estate.directory / "exported"
    out.mkdir()
    (out / "k6732.yaml").write_text("kind: Tenant\n")
    result = estate.cli("export", "--server", "tapi01", "--out", out)
    assert result.code == 1
    assert (
        result.err.strip()
        == f"error: {out / 'k6732.yaml'} exists: export into an empty directory, then merge what you need"
    )
    assert (out / "k6732.yaml").read_text() == "kind: Tenant\n"


@pytest.mark.samba
def test_a_user_the_directory_does_not_know_is_written_commented_out(ad_lab: ADLabFor) -> None:  # noqa: F811
    ad = ad_lab(CLIENT_TAPI)
    estate = ad.estate
    assert estate.apply().code == 0
    windows = estate.windows("tapi01")
    with windows.lock:
        some_line = next(u.lines[0] for u in windows.state.tsec_users.values() if u.lines)
        windows.state.tsec_users["NFON\\GHOST"] = TsecUser("NFON\\ghost", lines=[some_line])
    out = export(estate)
    text = (out / "k6732.yaml").read_text(encoding="utf-8")
    assert (
        "#   - user: NFON\\GHOST  # not exported: the directory does not know this user "
        "(assigned by hand?)"
    ) in text
    assert f"  - user: NFON\\{ad.sam('jdoe')}\n" in text  # spelled as the directory spells it
    assert_adopted(estate, out, drift=2)
    inventory = server_inventory(estate)
    items = estate.cli("drift", out, "--format", "json", "--inventory", inventory).json()["items"]
    assert [(i["category"], i["address"]) for i in items] == [
        ("unmanaged", "tenant/k6732/line_assignment/NFON\\GHOST")
    ]


def test_a_firewall_rule_the_manifest_language_cannot_say_is_written_commented_out() -> None:
    def rule(name: str, local_ports: list[str]) -> Resource:
        attributes = {
            "direction": "in", "action": "allow", "protocol": "tcp", "local_ports": local_ports,
            "remote_ports": ["any"], "remote_addresses": ["any"], "profiles": ["any"],
            "enabled": True, "description": "",
        }  # fmt: skip
        return Resource(f"server/s/firewall_rule/{name}", "firewall_rule", "s", attributes)

    rules, left_out = firewall_rules([rule("ok", ["135"]), rule("keyword", ["RPC-EPMap"])])
    assert [r["name"] for r in rules] == ["ok"] and rules[0]["local_ports"] == [135]
    assert len(left_out) == 1
    assert left_out[0].startswith("# firewall rule 'keyword' not exported: local_ports.0: ")
