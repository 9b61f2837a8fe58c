"""Pytest fixtures for a real Samba AD DC on 127.0.0.1 (load with ``pytest_plugins``).

``samba_dc`` is one DC per test session (Samba's ports fit one DC per network namespace: run the
suite in a namespace of its own); ``samba_lab`` makes uniquely named users and groups in a lab OU
so tests never step on each other::

    def test_x(samba_lab):
        jane = samba_lab.user(display_name="Jane Doe", password=True)  # LabAccount(sam='u3f9a...')
        group = samba_lab.group(members=[jane.dn])
        with LDAPConnection.open(samba_lab.settings_for(jane)) as conn: ...

Tests install nothing (``scripts/setup.sh --test`` installs Samba). Under ``CI=true`` a DC that
is missing or cannot start fails the tests; elsewhere it skips.
"""

from __future__ import annotations

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
    user_dn,
    users_ldif,
)
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPConnection, LDAPSettings
from tests.support.ci import part_unavailable

LAB_OU = "OU=Provisioner Lab"


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
    """A running lab DC with the base OU layout, for the whole session."""
    try:
        dc = SambaDC.start(tmp_path_factory.mktemp("samba-dc"))
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
    """2,000 users without passwords, imported in one go once per session."""
    users = [LabUser(samba_lab.unique("bulk"), display_name="Bulk user") for _ in range(2000)]
    dc = samba_lab.dc
    dc.import_ldif(users_ldif(samba_lab.users_dn, users, realm=dc.realm))
    return [LabAccount(user.sam, user_dn(samba_lab.users_dn, user)) for user in users]
