"""The lab's Samba AD DC: one per network namespace, never another's, gone with its starter;
bulk seeding through one LDIF import."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.lab import samba
from provisioner.lab.samba import (
    LabUser,
    SambaDC,
    SambaError,
    group_ldif,
    ldif_add_member,
    ldif_entry,
    ou_ldif,
    user_dn,
    users_ldif,
)
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPConnection
from tests.support.lab import ROOT
from tests.support.processes import (
    describe,
    in_new_network_namespace,
    kill_all,
    marked,
    new_marker,
    run_alone,
    wait_until_gone,
)
from tests.support.samba import LabDirectory, samba_unavailable

# -- LDIF --------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_ldif_writes_plain_ascii_as_it_is_and_everything_else_in_base64() -> None:
    password = '"p"'.encode("utf-16-le")
    entry = ldif_entry(
        "CN=Straße,OU=Lab,DC=nfon,DC=test",
        ["top", "user"],
        {
            "sAMAccountName": "jdoe",
            "displayName": ["Jane Doe", " leading space", ":colon", "<angle", "trailing "],
            "description": "two\nlines",
            "unicodePwd": password,
        },
    )
    assert entry.splitlines() == [
        f"dn:: {_b64('CN=Straße,OU=Lab,DC=nfon,DC=test')}",
        "objectClass: top",
        "objectClass: user",
        "sAMAccountName: jdoe",
        "displayName: Jane Doe",
        f"displayName:: {_b64(' leading space')}",
        f"displayName:: {_b64(':colon')}",
        f"displayName:: {_b64('<angle')}",
        f"displayName:: {_b64('trailing ')}",
        f"description:: {_b64('two' + chr(10) + 'lines')}",
        f"unicodePwd:: {base64.b64encode(password).decode()}",
        "",
    ]


# -- the import --------------------------------------------------------------------------------


@pytest.mark.samba
def test_one_import_seeds_users_groups_and_memberships(samba_lab: LabDirectory) -> None:
    dc, suffix = samba_lab.dc, samba_lab.unique("")
    container = f"OU=Import {suffix},{samba_lab.base_dn}"
    password = Secret(f"Imp-{suffix}-9z!")
    odd = LabUser(f"Straße{suffix}", display_name=' Eva "Straße"\nzweite Zeile ')
    bind = LabUser(f"imp{suffix}", display_name="Importer", password=password)
    off = LabUser(f"off{suffix}", disabled=True)
    ldif = (
        ou_ldif(container)
        + users_ldif(container, [odd, bind, off], realm=dc.realm)
        + group_ldif(container, f"grp{suffix}", [user_dn(container, odd)])
        + ldif_add_member(f"CN=grp{suffix},{container}", user_dn(container, off))
    )
    said: list[str] = []
    assert dc.import_ldif(ldif, progress=said.append) == "added 6, skipped 0 of 6"
    assert said == ["added 6, skipped 0 of 6"]
    assert dc.import_ldif(ldif) == "added 0, skipped 6 of 6"  # again: all there already

    conn = samba_lab.conn
    [found] = conn.search_paged(container, f"(sAMAccountName=straße{suffix})", ["displayName"])
    assert found.text("displayName") == odd.display_name
    [group] = conn.search_paged(container, f"(sAMAccountName=grp{suffix})", ["member"])
    assert sorted(group.texts("member")) == sorted(
        [user_dn(container, odd), user_dn(container, off)]
    )
    [disabled] = conn.search_paged(container, f"(sAMAccountName={off.sam})", ["userAccountControl"])
    assert int(disabled.text("userAccountControl") or 0) & samba.UF_ACCOUNTDISABLE
    with LDAPConnection.open(dc.ldap_settings(f"{bind.sam}@{dc.realm.lower()}", password)) as me:
        assert me.root_dse(["defaultNamingContext"]).text("defaultNamingContext") == dc.domain_dn


@pytest.mark.samba
def test_a_failed_import_adds_nothing_and_says_why(samba_lab: LabDirectory) -> None:
    suffix = samba_lab.unique("")
    container = f"OU=Broken {suffix},{samba_lab.base_dn}"
    taken = samba_lab.user(prefix="taken")  # the second entry reuses its sAMAccountName
    ldif = ou_ldif(container) + users_ldif(
        container, [LabUser(f"new{suffix}"), LabUser(taken.sam)], realm=samba_lab.dc.realm
    )
    with pytest.raises(SambaError, match="importing into the lab DC failed"):
        samba_lab.dc.import_ldif(ldif)
    assert not samba_lab.conn.search_paged(samba_lab.base_dn, f"(ou=Broken {suffix})", ["ou"])


# -- one DC per network namespace --------------------------------------------------------------


@pytest.mark.samba
def test_a_second_dc_in_this_namespace_is_refused_and_named(
    samba_dc: SambaDC, tmp_path: Path
) -> None:
    with pytest.raises(SambaError) as caught:
        SambaDC.start(tmp_path)
    message = str(caught.value)
    assert "already runs in this network namespace" in message
    assert str(samba_dc.targetdir) in message
    assert not (tmp_path / "samba").exists(), "nothing of a refused DC is unpacked"


_START_AND_REPORT = """
import json, os, pathlib, sys, time
from provisioner.lab.samba import SambaDC, _Registry
dc = SambaDC.start(pathlib.Path(sys.argv[1]), realm="ACME.TEST", netbios="ACME")
print(json.dumps({"pid": dc.pid, "registry": str(_Registry.path())}), flush=True)
if sys.argv[2] == "stop":
    dc.stop()
else:
    time.sleep(120)
"""


@pytest.mark.samba
def test_a_dc_in_another_network_namespace_is_not_ours(samba_dc: SambaDC, tmp_path: Path) -> None:
    """Another lab (another namespace, same cache) starts its own DC while ours runs, and
    neither registry names the other's DC."""
    command = [sys.executable, "-c", _START_AND_REPORT, str(tmp_path), "stop"]
    done, left = run_alone(command, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout)
    assert theirs["registry"] != str(samba._Registry.path())
    registry = samba._Registry.load()
    assert registry is not None and registry.pid == samba_dc.pid
    assert not left, left


@pytest.mark.samba
def test_a_dc_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Killed without a chance to clean up (SIGKILL), the starter takes its Samba along."""
    marker = new_marker()
    command = [sys.executable, "-c", _START_AND_REPORT, str(tmp_path), "keep"]
    process = subprocess.Popen(
        in_new_network_namespace(command),
        cwd=ROOT,
        env=marked(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else ""
        samba_pid = json.loads(line)["pid"]
        assert Path(f"/proc/{samba_pid}").exists()
    finally:
        process.kill()  # unshare's --kill-child SIGKILLs the starter
        process.wait()
    left = wait_until_gone(marker)
    kill_all(left)
    assert not left, f"left running: {describe(left)}"


def test_a_command_dies_with_its_starter_when_setpriv_is_there() -> None:
    command = samba._dies_with_parent(["samba", "-i"])
    assert command[-2:] == ["samba", "-i"]
    assert command[1:4] == ["--pdeathsig", "KILL", "--"]


@pytest.mark.samba
def test_the_samba_interpreter_is_the_one_samba_tool_runs_on() -> None:
    if samba.samba_missing():
        samba_unavailable(f"Samba is not installed: {', '.join(samba.samba_missing())}")
    done = subprocess.run(
        [samba._samba_python(), "-I", "-c", "import samba, ldb; print(samba.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "provisioner" not in done.stdout
