"""Active Directory inside the plan: the whole loop against a real Samba AD DC.

Each test runs an example estate in a lab of its own whose Active Directory is the session's
Samba DC, handed to the lab. One DC serves every test, so each test renames the example's
accounts to names of its own (``NFON\\jdoe`` becomes ``NFON\\jdoe5c1f9a2``) and binds with an
account of its own. Tests then change AD behind the provisioner's back through the DC's
Administrator connection, as an AD admin would::

    def test_x(ad_lab: ADLabFor) -> None:
        ad = ad_lab(EXAMPLES / "client-tapi")
        ad.disable("jdoe")                      # userAccountControl |= ACCOUNTDISABLE
        result = ad.estate.plan()               # provisioner plan MANIFESTS --detailed-exitcode
        assert result.code == 1 and ad.user("jdoe") in result.out

Verification stays on: LDAPS against the lab CA. Under ``CI=true`` a missing Samba fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import ldap3
import pytest
from ldap3.utils.conv import escape_filter_chars
from ruamel.yaml import YAML

from provisioner.directory.reader import MAX_CONNECTIONS, read_directory
from provisioner.inventory import load_inventory
from provisioner.lab.estate import DIRECTORY_PASSWORD_VARIABLE, Lab
from provisioner.lab.samba import (
    UF_ACCOUNTDISABLE,
    LabUser,
    SambaDC,
    create_group,
    create_users,
)
from provisioner.manifest import load_estate
from provisioner.manifest.models import domain_user_key
from provisioner.plan.model import Action
from provisioner.planner import build_plan
from provisioner.remote.scripts import parse_payload
from provisioner.remote.tsecimp import XmlUser, parse_xml
from provisioner.runner import Run
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPConnection, dn_key
from tests.support.lab import EXAMPLES, CliResult, LabEstate, secret_hits
from tests.support.state import Unrecorded

pytestmark = pytest.mark.samba

DOMAIN = "NFON"
LAB_CONTAINER = "OU=Lab Users"  # where provisioner.lab.directory seeds the manifests' accounts
ACCOUNT_OPERATORS = "CN=Account Operators,CN=Builtin"
_DOMAIN_NAME = re.compile(r"NFON\\([\w.-]+)")


class ADEstate:
    """A lab estate whose AD accounts are this test's own, and the DC's admin connection.

    Accounts are named as the example names them: ``ad.user("jdoe")`` is the renamed
    ``NFON\\jdoe5c1f9a2`` the manifests now hold, ``ad.dn("jdoe")`` its DN.
    """

    def __init__(
        self,
        estate: LabEstate,
        dc: SambaDC,
        admin: LDAPConnection,
        names: dict[str, str],
        suffix: str,
    ) -> None:
        self.estate = estate
        self.dc = dc
        self.admin = admin
        self.names = names  # the example's account name (lower case) -> this test's
        self.suffix = suffix  # every account and group this test makes ends in it

    # --- names -----------------------------------------------------------------------------

    def sam(self, name: str) -> str:
        return self.names[name.lower()]

    def user(self, name: str) -> str:
        """``NFON\\jdoe5c1f9a2``, as the manifests write it."""
        return f"{DOMAIN}\\{self.sam(name)}"

    def key(self, name: str) -> str:
        """The upper-case form addresses use: ``NFON\\JDOE5C1F9A2``."""
        return domain_user_key(self.user(name))

    def dn(self, name: str) -> str:
        return self.dn_of_sam(self.sam(name))

    def dn_of_sam(self, sam: str) -> str:
        found = self.admin.search_paged(
            self.dc.domain_dn, f"(sAMAccountName={escape_filter_chars(sam)})", ["cn"]
        )
        assert len(found) == 1, f"{sam}: {len(found)} entries in AD"
        return found[0].dn

    # --- changing AD behind the provisioner's back -----------------------------------------

    def disable(self, name: str) -> None:
        dn = self.dn(name)
        entry = self.admin.read_entry(dn, ["userAccountControl"])
        assert entry is not None
        flags = int(entry.text("userAccountControl") or 0) | UF_ACCOUNTDISABLE
        self.admin.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(flags)])]})

    def delete(self, name: str) -> None:
        self.admin.delete(self.dn(name))

    def rename(self, name: str, new_sam: str) -> None:
        """A new sAMAccountName; DN and objectSid stay as they were."""
        dn = self.dn(name)
        self.admin.modify(dn, {"sAMAccountName": [(ldap3.MODIFY_REPLACE, [new_sam])]})

    def set_display_name(self, name: str, display_name: str) -> None:
        self.admin.modify(self.dn(name), {"displayName": [(ldap3.MODIFY_REPLACE, [display_name])]})

    def object_sid(self, dn: str) -> bytes:
        entry = self.admin.read_entry(dn, ["objectSid"])
        assert entry is not None
        sid = entry.binary("objectSid")
        assert sid is not None
        return sid

    def new_account(self, prefix: str) -> tuple[str, str]:
        """An enabled user no manifest names: ``(sam, dn)``."""
        sam = f"{prefix[:6]}{self.suffix}"
        [dn] = create_users(
            self.admin, self.container, [LabUser(sam, display_name=f"Hand made {sam}")],
            realm=self.dc.realm,
        )  # fmt: skip
        return sam, dn

    def members(self, group: str) -> set[str]:
        """The DN keys of the direct members of one of the example's groups."""
        dn = self.dn(group)
        return {dn_key(value.decode()) for value in self.admin.read_ranged(dn, "member")}

    def add_member(self, group: str, member_dn: str) -> None:
        self.admin.modify(self.dn(group), {"member": [(ldap3.MODIFY_ADD, [member_dn])]})

    @property
    def container(self) -> str:
        return f"{LAB_CONTAINER},{self.dc.domain_dn}"

    # --- the manifests ---------------------------------------------------------------------

    def edit(self, file: str, old: str, new: str) -> None:
        """Replace ``old`` (which must occur) by ``new`` in one of the copied manifests."""
        path = self.estate.manifests / file
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} is not in {file}"
        path.write_text(text.replace(old, new), encoding="utf-8")

    def site_policy(self, policy: str) -> None:
        self.edit("site.yaml", "directory:\n", f"directory:\n  on_missing_user: {policy}\n")

    def tenant_policy(self, tenant_file: str, policy: str) -> None:
        path = self.estate.manifests / tenant_file
        path.write_text(
            path.read_text(encoding="utf-8") + f"on_missing_user: {policy}\n", encoding="utf-8"
        )

    # --- what the hosts hold ---------------------------------------------------------------

    def tsec_lines(self, host: str, name: str) -> list[str]:
        """The permanent line ids the host's TAPI security file gives a user ([] if none)."""
        entry = self.estate.windows(host).state.tsec_user(self.user(name))
        return list(entry.lines) if entry else []

    def imported_users(self, host: str) -> list[XmlUser]:
        """Every user element of every tsecimp XML the host received, in order."""
        users: list[XmlUser] = []
        for command in self.estate.windows(host).record:
            if not command.stdin:
                continue
            _, data = parse_payload(command.stdin)
            for step in data.get("steps", []):
                if step["operation"].get("op") == "tsecimp.import":
                    users += parse_xml(step["operation"]["xml"])
        return users


_SUFFIX_LENGTH = 7


def _renamed(manifests: Path, suffix: str) -> dict[str, str]:
    """Give every account and group the manifests name a name ending in ``suffix``."""
    estate, errors = load_estate([manifests])
    assert not errors, [str(e) for e in errors]
    names: set[str] = set()
    for tenant in estate.tenants.values():
        names |= {a.user.split("\\")[1] for a in tenant.assignments}
        if tenant.users_group:
            names.add(tenant.users_group.split("\\")[1])
    mapping = {name.lower(): f"{name[: 20 - len(suffix)]}{suffix}" for name in names}

    def rename(match: re.Match[str]) -> str:
        new = mapping.get(match.group(1).lower())
        return f"{DOMAIN}\\{new}" if new else match.group(0)

    for path in manifests.glob("*.yaml"):
        text = _DOMAIN_NAME.sub(rename, path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
    return mapping


def _own_bind_account(lab: Lab, admin: LDAPConnection, dc: SambaDC, suffix: str) -> None:
    """Bind as an account of this test: every lab resets the shared bind account's password
    when it starts, which breaks a lab another worker is running
    (test_a_second_lab_leaves_the_first_labs_directory_usable)."""
    sam = f"svcp{suffix}"
    password = Secret(f"{secrets.token_urlsafe(18)}aA1!")
    container = f"{LAB_CONTAINER},{dc.domain_dn}"
    [dn] = create_users(admin, container, [LabUser(sam, password=password)], realm=dc.realm)
    admin.modify(f"{ACCOUNT_OPERATORS},{dc.domain_dn}", {"member": [(ldap3.MODIFY_ADD, [dn])]})
    yaml = YAML()
    document = yaml.load(lab.inventory_path.read_text(encoding="utf-8"))
    document["directory"]["bind_user"] = f"{sam}@{dc.realm.lower()}"
    document["secrets"][DIRECTORY_PASSWORD_VARIABLE] = password.reveal()
    with lab.inventory_path.open("w", encoding="utf-8") as stream:
        yaml.dump(document, stream)
    lab.values[DIRECTORY_PASSWORD_VARIABLE] = password.reveal()


def _remove_accounts(admin: LDAPConnection, dc: SambaDC, suffix: str) -> None:
    """Delete what this test made (its accounts and groups all end in ``suffix``)."""
    found = admin.search_paged(
        f"{LAB_CONTAINER},{dc.domain_dn}", f"(sAMAccountName=*{suffix})", ["cn"]
    )
    for entry in found:
        admin.delete(entry.dn)


@contextmanager
def running_ad_lab(directory: Path, manifests: Path, dc: SambaDC) -> Iterator[ADEstate]:
    suffix = secrets.token_hex(4)[:_SUFFIX_LENGTH]
    copied = directory / "manifests"
    shutil.copytree(manifests, copied)
    names = _renamed(copied, suffix)
    state_dir = directory / "state"
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        dc.admin_connection() as admin,
        ExitStack() as stack,
    ):
        stack.callback(_remove_accounts, admin, dc, suffix)
        lab = Lab(directory / "lab", [copied], dc=dc)
        stack.callback(lab.stop)
        lab.start()
        assert lab.ad is not None, lab.directory_note
        _own_bind_account(lab, admin, dc, suffix)
        monkeypatch.setenv("PROVISIONER_INVENTORY", str(lab.inventory_path))
        monkeypatch.setenv("PROVISIONER_STATE_DIR", str(state_dir))
        estate = LabEstate(lab, copied, state_dir, monkeypatch)
        yield ADEstate(estate, dc, admin, names, suffix)


ADLabFor = Callable[[Path], ADEstate]


@pytest.fixture
def ad_lab(tmp_path: Path, samba_dc: SambaDC) -> Iterator[ADLabFor]:
    """Start a lab with Active Directory for a manifest directory; stopped at teardown."""
    with ExitStack() as stack:
        started: list[ADEstate] = []

        def start(manifests: Path) -> ADEstate:
            directory = tmp_path / f"estate-{len(started) + 1}"
            started.append(stack.enter_context(running_ad_lab(directory, manifests, samba_dc)))
            return started[-1]

        yield start
        for ad in started:
            outputs = [result.output for result in ad.estate.transcript]
            hits = secret_hits(ad.estate.lab.values, {"output": outputs})
            assert not hits, hits


CLIENT_TAPI = EXAMPLES / "client-tapi"
MULTI_TENANT = EXAMPLES / "multi-tenant"


def problems(result: CliResult) -> list[str]:
    """The plan's problem lines, as printed under "Problems:"."""
    lines = result.out.splitlines()
    if "Problems:" not in lines:
        return []
    start = lines.index("Problems:") + 1
    found = []
    for line in lines[start:]:
        if not line.startswith("  ! "):
            break
        found.append(line[4:])
    return found


def plan_document(ad: ADEstate) -> dict[str, object]:
    result = ad.estate.cli("plan", ad.estate.manifests, "--format", "json")
    document: dict[str, object] = json.loads(result.out)
    return document


def changes_by_address(ad: ADEstate) -> dict[str, dict[str, object]]:
    document = plan_document(ad)
    return {c["address"]: c for c in document["resource_changes"]}  # type: ignore[index, union-attr]


def make_missing(ad: ADEstate, how: str, name: str) -> str:
    """Disable or delete a user; return the reason the plan should give."""
    if how == "disabled":
        ad.disable(name)
        return "is disabled in AD"
    ad.delete(name)
    return "does not exist in AD"


# --- on_missing_user ------------------------------------------------------------------------

MISSING = pytest.mark.parametrize("how", ["disabled", "deleted"])


@MISSING
def test_missing_user_with_policy_error_is_a_problem_and_holds_back_its_tenant(
    ad_lab: ADLabFor, how: str
) -> None:
    ad = ad_lab(CLIENT_TAPI)
    reason = make_missing(ad, how, "jdoe")
    # the tenant's policy wins over the Site's
    ad.site_policy("remove_lines")
    ad.tenant_policy("k6732.yaml", "error")

    plan = ad.estate.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith(f"tenant k6732: {ad.user('jdoe')} {reason}"), problem
    assert "on_missing_user: error" in problem

    applied = ad.estate.apply()
    assert applied.code == 1, applied.output
    assert "Traceback" not in applied.output
    held = [line for line in applied.out.splitlines() if "held back:" in line]
    assert any("tenant/k6732/tsp_instance" in line for line in held), applied.out
    assert any("tenant/k6732/users_group" in line for line in held), applied.out
    # what belongs to no tenant went ahead; nothing of the tenant's did
    windows = ad.estate.windows("tapi01")
    assert windows.state.products, "the package (no tenant) should have been installed"
    assert not windows.state.tsec_users
    assert ad.members("K6732-TAPI-Users") == set()


@MISSING
def test_missing_user_with_policy_skip_leaves_its_lines_alone(ad_lab: ADLabFor, how: str) -> None:
    ad = ad_lab(CLIENT_TAPI)
    assert ad.estate.apply().code == 0
    lines_before = ad.tsec_lines("tapi01", "jdoe")
    assert len(lines_before) == 2
    reason = make_missing(ad, how, "jdoe")
    ad.site_policy("skip")  # the tenant names no policy: the Site's applies

    plan = ad.estate.plan()
    assert plan.code == 0, plan.output
    assert f"tenant k6732: {ad.user('jdoe')} {reason}: skipped" in plan.out
    assert not problems(plan)
    changes = changes_by_address(ad)
    address = f"tenant/k6732/line_assignment/{ad.key('jdoe')}"
    assert address not in changes or changes[address]["change"]["actions"] == ["no-op"]

    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    assert ad.tsec_lines("tapi01", "jdoe") == lines_before
    if how == "disabled":  # still a user of the tenant as far as the group goes
        assert dn_key(ad.dn("jdoe")) in ad.members("K6732-TAPI-Users")


def test_a_user_skipped_by_the_policy_is_not_put_into_the_users_group(ad_lab: ADLabFor) -> None:
    ad = ad_lab(CLIENT_TAPI)
    ad.disable("jdoe")
    ad.site_policy("skip")

    group = changes_by_address(ad)["tenant/k6732/users_group"]
    assert group["change"]["actions"] == ["update"]
    members = group["change"]["after"]["members"]  # type: ignore[index]
    assert ad.user("jdoe") not in members and ad.user("MAUERSBERGERM") in members, members

    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    assert dn_key(ad.dn("jdoe")) not in ad.members("K6732-TAPI-Users")
    assert dn_key(ad.dn("MAUERSBERGERM")) in ad.members("K6732-TAPI-Users")
    assert ad.estate.plan().code == 0


@MISSING
def test_missing_user_with_policy_remove_lines_loses_its_lines(ad_lab: ADLabFor, how: str) -> None:
    ad = ad_lab(CLIENT_TAPI)
    assert ad.estate.apply().code == 0
    assert len(ad.tsec_lines("tapi01", "jdoe")) == 2
    jdoe_dn = ad.dn("jdoe")
    reason = make_missing(ad, how, "jdoe")
    # the tenant's policy wins over the Site's default (error)
    ad.tenant_policy("k6732.yaml", "remove_lines")

    plan = ad.estate.plan()
    assert plan.code == 2, plan.output
    assert f"tenant k6732: {ad.user('jdoe')} {reason}: its lines are removed" in plan.out
    changes = changes_by_address(ad)
    removal = changes[f"tenant/k6732/line_assignment/{ad.key('jdoe')}"]
    assert removal["change"]["actions"] == ["delete"], removal

    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    assert ad.tsec_lines("tapi01", "jdoe") == []
    assert ad.tsec_lines("tapi01", "MAUERSBERGERM"), "the other users keep their lines"
    assert dn_key(jdoe_dn) not in ad.members("K6732-TAPI-Users")
    again = ad.estate.plan()
    assert again.code == 0, again.output


def test_lines_removed_by_the_policy_say_why(ad_lab: ADLabFor) -> None:
    ad = ad_lab(CLIENT_TAPI)
    assert ad.estate.apply().code == 0
    ad.disable("jdoe")
    ad.tenant_policy("k6732.yaml", "remove_lines")
    removal = changes_by_address(ad)[f"tenant/k6732/line_assignment/{ad.key('jdoe')}"]
    assert removal["change"]["actions"] == ["delete"]
    reason = str(removal["reason"])
    assert "on_missing_user" in reason and "prune" not in reason, (
        f"the deletion is explained as {reason!r}; prune is off, the AD policy removes the lines"
    )
    assert removal["action_reason"] == "delete_because_user_not_in_directory"


def test_renamed_user_no_longer_resolves_and_the_policy_applies(ad_lab: ADLabFor) -> None:
    ad = ad_lab(CLIENT_TAPI)
    assert ad.estate.apply().code == 0
    dn = ad.dn("jdoe")
    sid = ad.object_sid(dn)
    new_sam = f"jdoe-new{ad.suffix}"
    ad.rename("jdoe", new_sam)
    assert ad.dn_of_sam(new_sam) == dn and ad.object_sid(dn) == sid  # same account

    plan = ad.estate.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith(f"tenant k6732: {ad.user('jdoe')} does not exist in AD"), problem
    assert new_sam not in plan.out, "the plan must not guess that the new name is the old user"

    # with remove_lines, the old name's lines go, and so does the account's group membership
    ad.tenant_policy("k6732.yaml", "remove_lines")
    changes = changes_by_address(ad)
    assert changes[f"tenant/k6732/line_assignment/{ad.key('jdoe')}"]["change"]["actions"] == [
        "delete"
    ]
    group = changes["tenant/k6732/users_group"]
    assert group["change"]["actions"] == ["update"]
    assert dn_key(dn) in {dn_key(m) for m in group["change"]["before"]["members"]}  # type: ignore[index]
    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    assert ad.tsec_lines("tapi01", "jdoe") == []
    assert dn_key(dn) not in ad.members("K6732-TAPI-Users")

    # the manifest follows the rename: the account gets its lines and membership back
    ad.edit("k6732.yaml", ad.user("jdoe"), f"{DOMAIN}\\{new_sam}")
    changes = changes_by_address(ad)
    assert changes[f"tenant/k6732/line_assignment/NFON\\{new_sam.upper()}"]["change"][
        "actions"
    ] == ["create"]
    assert ad.estate.apply().code == 0
    assert dn_key(dn) in ad.members("K6732-TAPI-Users")
    assert ad.estate.plan().code == 0


# --- friendly names -------------------------------------------------------------------------


def test_friendly_name_defaults_to_the_ad_display_name(ad_lab: ADLabFor) -> None:
    ad = ad_lab(CLIENT_TAPI)
    ad.edit("k6732.yaml", "    friendly_name: Jane Doe\n", "")
    display = 'Doe, Jane <Sales & "Support"> O\'Brien'
    ad.set_display_name("jdoe", display)
    ad.set_display_name("MAUERSBERGERM", "not the manifest's name")

    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    imported = {domain_user_key(u.domain_user): u for u in ad.imported_users("tapi01")}
    assert imported[ad.key("jdoe")].friendly_name == display
    assert imported[ad.key("MAUERSBERGERM")].friendly_name == "Marius Mauersberger"
    entry = ad.estate.windows("tapi01").state.tsec_user(ad.user("jdoe"))
    assert entry is not None and entry.friendly_name == display


# --- the users group ------------------------------------------------------------------------


def test_users_group_members_follow_the_manifest(ad_lab: ADLabFor) -> None:
    ad = ad_lab(CLIENT_TAPI)
    users = ["MAUERSBERGERM", "jdoe", "reception", "reception2"]
    group = ad.estate.plan_json("--target", "tenant/k6732/users_group")["resource_changes"][0]
    assert group["change"]["actions"] == ["update"]
    assert group["change"]["before"]["members"] == []
    # as the directory spells the accounts (here as the manifests do: the lab seeded them so)
    assert sorted(group["change"]["after"]["members"]) == sorted(ad.user(u) for u in users)

    assert ad.estate.apply().code == 0
    assert ad.members("K6732-TAPI-Users") == {dn_key(ad.dn(u)) for u in users}
    assert ad.estate.plan().code == 0

    intruder, intruder_dn = ad.new_account("hand")
    ad.add_member("K6732-TAPI-Users", intruder_dn)
    drift = ad.estate.drift()
    assert drift.code == 2, drift.output
    assert "tenant/k6732/users_group" in drift.out and intruder in drift.out

    assert ad.estate.apply().code == 0
    assert dn_key(intruder_dn) not in ad.members("K6732-TAPI-Users")
    assert ad.estate.plan().code == 0
    assert ad.estate.drift().code == 0


def test_group_changes_are_idempotent_when_ad_moved_meanwhile(ad_lab: ADLabFor) -> None:
    """A membership change planned before someone did part of it by hand still succeeds."""
    ad = ad_lab(CLIENT_TAPI)
    _, intruder_dn = ad.new_account("hand")
    ad.add_member("K6732-TAPI-Users", intruder_dn)
    estate, errors = load_estate([ad.estate.manifests])
    assert not errors
    inventory = load_inventory(os.environ["PROVISIONER_INVENTORY"])
    with Run(estate, inventory) as run:
        reading = run.read()
        plan, _ = build_plan(estate, reading.inputs(estate, inventory))
        [change] = [c for c in plan.changes if c.kind == "users_group"]
        assert change.action is Action.UPDATE
        # meanwhile an admin adds one of the users and removes the intruder
        ad.add_member("K6732-TAPI-Users", ad.dn("jdoe"))
        ad.admin.modify(
            ad.dn("K6732-TAPI-Users"), {"member": [(ldap3.MODIFY_DELETE, [intruder_dn])]}
        )
        first = run.apply_directory([change], reading.directory, Unrecorded())
        second = run.apply_directory([change], reading.directory, Unrecorded())
    assert first.status == "ok" and second.status == "ok", (first, second)
    users = ["MAUERSBERGERM", "jdoe", "reception", "reception2"]
    assert ad.members("K6732-TAPI-Users") == {dn_key(ad.dn(u)) for u in users}


# --- tenant isolation -----------------------------------------------------------------------


def _isolation_holds_back_k7001(ad: ADEstate) -> CliResult:
    """k7001's ben is in k8450's users group: a problem in the plan, k7001 held back in apply."""
    plan = ad.estate.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith(
        f"tenant k7001: {ad.user('k7001-ben')} is a member of tenant k8450's users group"
    ), problem
    applied = ad.estate.apply()
    assert applied.code == 1, applied.output
    held = [line for line in applied.out.splitlines() if "held back:" in line]
    assert held and all("tenant/k7001/" in line for line in held), held
    return applied


def test_user_in_another_tenants_group_holds_back_its_own_tenant(ad_lab: ADLabFor) -> None:
    ad = ad_lab(MULTI_TENANT)
    ben = ad.dn("k7001-ben")
    ad.add_member("CRM-K8450-Users", ben)  # a k7001 user in k8450's group, by hand

    applied = _isolation_holds_back_k7001(ad)
    assert "✓ tenant/k8450/users_group ok" in applied.out
    # k8450's group change removed the intruder; k7001 got nothing
    assert dn_key(ben) not in ad.members("CRM-K8450-Users")
    assert ad.members("CRM-K7001-Users") == set()
    instances = {i.k_account for i in ad.estate.windows("crm01").state.tsp_settings.values()}
    assert "K7001" not in instances and {"K6732", "K8450"} <= instances

    # with the intruder gone the next run goes ahead for k7001 too
    assert ad.estate.apply().code == 0
    assert ad.estate.plan().code == 0


def test_a_user_in_another_tenants_group_through_a_nested_group_is_found(
    ad_lab: ADLabFor,
) -> None:
    """Membership through nesting counts: AD grants the outer group's rights to the inner
    group's members (LDAP_MATCHING_RULE_IN_CHAIN finds them)."""
    ad = ad_lab(MULTI_TENANT)
    inner = create_group(ad.admin, ad.container, f"nest{ad.suffix}", [ad.dn("k7001-ben")])
    middle = create_group(ad.admin, ad.container, f"mid{ad.suffix}", [inner])
    ad.add_member("CRM-K8450-Users", middle)  # k7001's ben, two groups down in k8450's group

    _isolation_holds_back_k7001(ad)
    # k8450's group change removed the nested group; then k7001 goes ahead too
    assert dn_key(middle) not in ad.members("CRM-K8450-Users")
    assert ad.estate.apply().code == 0
    assert ad.estate.plan().code == 0


# --- account names are the directory's -------------------------------------------------------


def _with_assignments(directory: Path, *users: str) -> Path:
    """The client-TAPI example with assignments for ``users`` (``NFON\\name``), one line each."""
    manifests = directory / "spelled"
    shutil.copytree(CLIENT_TAPI, manifests)
    tenant = manifests / "k6732.yaml"
    tenant.write_text(
        tenant.read_text(encoding="utf-8")
        + "".join(
            f'  - user: NFON\\{user}\n    lines: ["{1270 + n}"]\n' for n, user in enumerate(users)
        ),
        encoding="utf-8",
    )
    return manifests


def test_names_are_written_as_the_directory_spells_them(ad_lab: ADLabFor, tmp_path: Path) -> None:
    ad = ad_lab(_with_assignments(tmp_path, "straße"))
    spelled = f"Straße{ad.suffix}"  # the manifest says straße…; AD spells it with a capital
    ad.rename("straße", spelled)

    plan = ad.estate.plan()
    assert plan.code == 2, plan.output
    assert not problems(plan)
    changes = changes_by_address(ad)
    assert f"tenant/k6732/line_assignment/{domain_user_key(ad.user('straße'))}" in changes
    group = changes["tenant/k6732/users_group"]
    assert f"NFON\\{spelled}" in group["change"]["after"]["members"]  # type: ignore[index]
    assert "strasse" not in plan.out.lower(), "a name was case-mapped by full case mapping"

    applied = ad.estate.apply()
    assert applied.code == 0, applied.output
    written = [user.domain_user for user in ad.imported_users("tapi01")]
    assert f"NFON\\{spelled}" in written, written
    assert not [name for name in written if "strasse" in name.lower()], written
    assert dn_key(ad.dn("straße")) in ad.members("K6732-TAPI-Users")
    assert ad.estate.plan().code == 0


def test_strasse_and_straße_are_two_accounts(ad_lab: ADLabFor, tmp_path: Path) -> None:
    """Python's str.upper() makes ß "SS"; Windows compares one character at a time."""
    ad = ad_lab(_with_assignments(tmp_path, "straße", "strasse"))
    sharp, double = ad.user("straße"), ad.user("strasse")
    assert domain_user_key(sharp) != domain_user_key(double)
    assert ad.dn("straße") != ad.dn("strasse")

    changes = changes_by_address(ad)
    for user in (sharp, double):
        change = changes[f"tenant/k6732/line_assignment/{domain_user_key(user)}"]
        assert change["change"]["actions"] == ["create"], change
    group = changes["tenant/k6732/users_group"]
    assert {sharp, double} <= set(group["change"]["after"]["members"])  # type: ignore[index, arg-type]

    applied = ad.estate.apply("--target", "tenant/k6732/users_group")
    assert applied.code == 0, applied.output
    assert {dn_key(ad.dn("straße")), dn_key(ad.dn("strasse"))} <= ad.members("K6732-TAPI-Users")


# --- the directory itself failing -----------------------------------------------------------


def _point_directory(ad: ADEstate, **changes: str) -> Path:
    """A copy of the lab's inventory whose directory settings differ; returns its path."""
    yaml = YAML()
    document = yaml.load(ad.estate.lab.inventory_path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if key == "password":
            document["secrets"]["WRONG_AD_PASSWORD"] = value
            document["directory"]["bind_password"] = {"env": "WRONG_AD_PASSWORD"}
        else:
            document["directory"][key] = value
    copy = ad.estate.directory / "inventory-modified.yaml"
    with copy.open("w", encoding="utf-8") as stream:
        yaml.dump(document, stream)
    return copy


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("password", "wrong password"),
        ("unreachable", "cannot reach LDAP server"),
    ],
)
def test_unusable_directory_is_one_problem_and_holds_back_everything(
    ad_lab: ADLabFor, broken: str, expected: str
) -> None:
    ad = ad_lab(CLIENT_TAPI)
    wrong = f"Wrong-{secrets.token_urlsafe(12)}"
    if broken == "password":
        inventory = _point_directory(ad, password=wrong)
    else:
        inventory = _point_directory(ad, ldap_url="ldaps://127.0.0.1:9")
    ad.estate.monkeypatch.setenv("PROVISIONER_INVENTORY", str(inventory))

    plan = ad.estate.plan()
    assert plan.code == 1, plan.output
    [problem] = problems(plan)
    assert problem.startswith("site nfon-test: Active Directory: "), problem
    assert expected in problem

    applied = ad.estate.apply()
    assert applied.code == 1, applied.output
    assert "held back:" in applied.out
    assert "✓" not in applied.out, "nothing may be applied while the directory cannot be read"
    assert not ad.estate.windows("tapi01").state.products
    for result in (plan, applied):
        assert "Traceback" not in result.output
        assert wrong not in result.output
    assert not secret_hits({"wrong": wrong}, {"output": [plan.output, applied.output]})


# --- the cost of reading AD -----------------------------------------------------------------


def test_a_plan_reads_ad_in_a_handful_of_ldap_operations(ad_lab: ADLabFor, tmp_path: Path) -> None:
    users, batch = 23, 10
    manifests = tmp_path / "bulk"
    manifests.mkdir()
    for name in ("site.yaml", "tapi01.yaml"):
        shutil.copy(CLIENT_TAPI / name, manifests / name)
    site = manifests / "site.yaml"
    site.write_text(
        site.read_text().replace("directory:\n", f"directory:\n  batch_size: {batch}\n")
    )
    (manifests / "k6732.yaml").write_text(
        "kind: Tenant\nname: k6732\nk_account: K6732\nserver: tapi01\n"
        "cti_password: {env: K6732_CTI_PASSWORD}\nusers_group: NFON\\K6732-TAPI-Users\n"
        "assignments:\n"
        + "".join(f'  - user: NFON\\bulk{n:02d}\n    lines: ["{2000 + n}"]\n' for n in range(users))
    )
    ad = ad_lab(manifests)
    estate, errors = load_estate([ad.estate.manifests])
    assert not errors, [str(e) for e in errors]
    inventory = load_inventory(os.environ["PROVISIONER_INVENTORY"])
    with Run(estate, inventory) as run:
        reading = run.read()
    inputs = reading.inputs(estate, inventory)
    assert not inputs.problems, inputs.problems
    directory = reading.directory
    assert sum(user is not None for user in directory.users.values()) == users
    # a bind per connection, the RootDSE and the crossRef for the domain, one search per batch
    # of users, and per users group one search and one read of its members
    batches = math.ceil(users / batch)
    budget = min(batches, MAX_CONNECTIONS) + 2 + batches + 2 * 1
    assert directory.operations <= budget, (
        f"{directory.operations} LDAP operations for {users} users in batches of {batch}; "
        f"budget {budget}"
    )


# --- the lab's shared DC --------------------------------------------------------------------


def test_a_lab_handed_a_dc_seeds_it_and_leaves_it_running(
    samba_dc: SambaDC, tmp_path: Path
) -> None:
    suffix = secrets.token_hex(4)[:_SUFFIX_LENGTH]
    manifests = tmp_path / "manifests"
    shutil.copytree(CLIENT_TAPI, manifests)
    names = _renamed(manifests, suffix)
    with samba_dc.admin_connection() as admin, ExitStack() as stack:
        stack.callback(_remove_accounts, admin, samba_dc, suffix)
        with Lab(tmp_path / "lab", [manifests], dc=samba_dc) as lab:
            assert lab.ad is not None and lab.ad.dc is samba_dc, lab.directory_note
        found = admin.search_paged(
            samba_dc.domain_dn, f"(sAMAccountName={names['jdoe']})", ["displayName"]
        )
        assert [entry.text("displayName") for entry in found] == ["Jane Doe"]
    assert Path(f"/proc/{samba_dc.pid}").exists(), "the lab stopped a DC it did not start"
    with samba_dc.admin_connection() as admin:
        assert admin.root_dse(["defaultNamingContext"]).text("defaultNamingContext")


def test_a_lab_never_takes_over_a_dc_another_lab_started(samba_dc: SambaDC, tmp_path: Path) -> None:
    """The session's DC holds this namespace's LDAP ports: a lab that wants a DC of its own says
    so, instead of seeding (and later stopping) another lab's DC."""
    with Lab(tmp_path / "lab", [CLIENT_TAPI], active_directory=True) as lab:
        assert lab.ad is None
        assert "already runs in this network namespace" in lab.directory_note
        assert str(samba_dc.targetdir) in lab.directory_note
        assert "active_directory" in lab.status()
        inventory = YAML(typ="safe").load(lab.inventory_path.read_text(encoding="utf-8"))
        assert inventory["directory"] == {"enabled": False}
    with samba_dc.admin_connection() as admin:  # untouched
        assert not admin.search_paged(samba_dc.domain_dn, "(sAMAccountName=jdoe)", ["cn"])


def test_a_second_lab_leaves_the_first_labs_directory_usable(
    samba_dc: SambaDC, tmp_path: Path
) -> None:
    """Two labs handed one DC: the second lab's start must not change what the first lab's
    inventory binds with."""
    suffix = secrets.token_hex(4)[:_SUFFIX_LENGTH]
    manifests = tmp_path / "manifests"
    shutil.copytree(CLIENT_TAPI, manifests)
    _renamed(manifests, suffix)
    estate, errors = load_estate([manifests])
    assert not errors
    with samba_dc.admin_connection() as admin, ExitStack() as stack:
        stack.callback(_remove_accounts, admin, samba_dc, suffix)
        labs = [Lab(tmp_path / name, [manifests], dc=samba_dc) for name in "ab"]
        for lab in labs:
            stack.callback(lab.stop)
            lab.start()
            assert lab.ad is not None, lab.directory_note
        facts = read_directory(estate, load_inventory(labs[0].inventory_path))
    assert not facts.problems, [p.message for p in facts.problems]
