"""Pytest fixtures for a real Samba AD DC on 127.0.0.1 (load with ``pytest_plugins``).

``samba_dc`` is one DC per test session, shared by all xdist workers; ``samba_lab`` makes
uniquely named users and groups in a lab OU so tests never step on each other::

    def test_x(samba_lab):
        jane = samba_lab.user(display_name="Jane Doe", password=True)  # LabAccount(sam='u3f9a...')
        group = samba_lab.group(members=[jane.dn])
        with LDAPConnection.open(samba_lab.settings_for(jane)) as conn: ...

Tests install nothing (``scripts/setup.sh --test`` installs Samba). Under ``CI=true`` a DC that
is missing or cannot start fails the tests; elsewhere it skips.
"""

from __future__ import annotations

import fcntl
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import pytest

from provisioner.errors import ProvisionerError
from provisioner.lab.samba import (
    LabUser,
    SambaDC,
    create_group,
    create_users,
    ensure_ou,
    samba_missing,
)
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPConnection, LDAPSettings
from tests.support.ci import part_unavailable

LAB_OU = "OU=Provisioner Lab"
BULK_USER_COUNT = 2000


@dataclass(frozen=True)
class LabAccount:
    """A user or group made for a test; ``password`` only for users a test binds as."""

    sam: str
    dn: str
    password: Secret | None = field(default=None, repr=False)


class LabDirectory:
    """Creates users and groups with unique names under ``OU=Provisioner Lab``."""

    def __init__(self, dc: SambaDC, conn: LDAPConnection) -> None:
        self.dc = dc
        self.conn = conn
        self.base_dn = ensure_ou(conn, f"{LAB_OU},{dc.domain_dn}")
        self.users_dn = ensure_ou(conn, f"OU=Users,{self.base_dn}")
        self.groups_dn = ensure_ou(conn, f"OU=Groups,{self.base_dn}")

    @staticmethod
    def unique(prefix: str) -> str:
        """``prefix`` plus 10 hex digits; sAMAccountName allows at most 20 characters."""
        return f"{prefix[:9]}{secrets.token_hex(5)}"

    def user(
        self,
        *,
        prefix: str = "u",
        display_name: str | None = None,
        password: bool = False,
        disabled: bool = False,
    ) -> LabAccount:
        sam = self.unique(prefix)
        secret = Secret(f"Lab-{secrets.token_urlsafe(12)}-9z") if password else None
        [dn] = create_users(
            self.conn,
            self.users_dn,
            [LabUser(sam, display_name=display_name, password=secret, disabled=disabled)],
            realm=self.dc.realm,
        )
        return LabAccount(sam, dn, secret)

    def users(self, count: int, *, prefix: str = "b") -> list[LabAccount]:
        """``count`` enabled users without passwords (about 3 ms each)."""
        sams = [self.unique(prefix) for _ in range(count)]
        labs = (LabUser(sam, display_name=f"Bulk {sam}") for sam in sams)
        dns = create_users(self.conn, self.users_dn, labs, realm=self.dc.realm)
        return [LabAccount(sam, dn) for sam, dn in zip(sams, dns, strict=True)]

    def group(self, *, prefix: str = "g", members: Sequence[str] = ()) -> LabAccount:
        name = self.unique(prefix)
        return LabAccount(name, create_group(self.conn, self.groups_dn, name, members))

    def settings_for(self, account: LabAccount, *, as_netbios: bool = False) -> LDAPSettings:
        """LDAPS settings binding as ``account`` (its UPN, or ``NFON\\sam``)."""
        assert account.password is not None, "create the user with password=True to bind as it"
        user = f"{self.dc.netbios}\\{account.sam}" if as_netbios else self.upn(account)
        return self.dc.ldap_settings(user, account.password)

    def upn(self, account: LabAccount) -> str:
        return f"{account.sam}@{self.dc.realm.lower()}"


def samba_unavailable(reason: str) -> NoReturn:
    part_unavailable(reason, "a real Samba AD DC")


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """A running lab DC with the base OU layout; stopped when the last worker is done."""
    try:
        missing = samba_missing()
        if missing:
            samba_unavailable(
                f"Samba AD DC is not installed (missing {', '.join(missing)}): run "
                "scripts/setup.sh --test"
            )
        dc = SambaDC.start(tmp_path_factory.mktemp("samba-dc"), shared=True)
    except ProvisionerError as exc:
        samba_unavailable(f"Samba AD DC unavailable: {exc}")
    try:
        with dc.admin_connection() as conn:
            LabDirectory(dc, conn)
        yield dc
    finally:
        dc.stop()


@pytest.fixture(scope="session")
def samba_lab(samba_dc: SambaDC) -> Iterator[LabDirectory]:
    """A :class:`LabDirectory` on its own Administrator connection, for the whole session."""
    with samba_dc.admin_connection() as conn:
        yield LabDirectory(samba_dc, conn)


@pytest.fixture(scope="session")
def samba_bulk_users(samba_lab: LabDirectory) -> list[LabAccount]:
    """2,000 users without passwords, created once per DC (a few seconds) for every xdist worker.

    The first worker creates them and lists them in the DC's targetdir; the others read the list.
    """
    listing = samba_lab.dc.targetdir / "bulk-users.json"
    with open(samba_lab.dc.targetdir / "bulk-users.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if listing.is_file():
            return [LabAccount(sam, dn) for sam, dn in json.loads(listing.read_text())]
        accounts = samba_lab.users(BULK_USER_COUNT, prefix="bulk")
        listing.write_text(json.dumps([[a.sam, a.dn] for a in accounts]))
        return accounts
