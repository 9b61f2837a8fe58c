"""The lab's Active Directory: a real Samba AD DC on 127.0.0.1, seeded from the manifests.

It serves the domain ``NFON`` (realm ``NFON.TEST``); the manifests' users of that domain are
created (enabled, with their friendly names as displayName), their tenants' users groups are
created empty (so the first plan shows the memberships to add), and a bind account with a fresh
password is made for the provisioner.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ldap3 import MODIFY_ADD, MODIFY_REPLACE

from provisioner.lab.samba import (
    DEFAULT_NETBIOS,
    LabUser,
    SambaDC,
    create_group,
    create_users,
    ensure_ou,
)
from provisioner.secrets import Secret
from provisioner.transports.ldap import LDAPOperationError

if TYPE_CHECKING:
    from provisioner.lab.estate import LabPlan

BIND_ACCOUNT = "svc-provisioner"


@dataclass
class LabDirectory:
    dc: SambaDC
    bind_password: Secret = field(repr=False)
    bind_account: str = BIND_ACCOUNT

    @property
    def ldaps_url(self) -> str:
        return self.dc.ldaps_url

    @property
    def ca_file(self) -> Path:
        return self.dc.ca_file

    @property
    def bind_user(self) -> str:
        return f"{self.bind_account}@{self.dc.realm.lower()}"

    def stop(self) -> None:
        self.dc.stop()


def start_lab_directory(workdir: Path, plan: LabPlan) -> LabDirectory:
    """Start (or join, when tests already run one) the lab DC and seed it; idempotent."""
    dc = SambaDC.start(workdir, shared=True)
    try:
        password = Secret(secrets.token_urlsafe(18) + "aA1!")
        # a bind account of this lab's own: labs of parallel test workers share one DC, and
        # resetting a shared account's password would lock the other labs out
        account = f"{BIND_ACCOUNT[:11]}-{secrets.token_hex(4)}"
        prefix = f"{DEFAULT_NETBIOS}\\".upper()
        with dc.admin_connection() as conn:
            container = ensure_ou(conn, f"OU=Lab Users,{dc.domain_dn}")
            for name, display in sorted(plan.users.items()):
                if name.upper().startswith(prefix):
                    user = LabUser(sam=name.split("\\")[1], display_name=display)
                    _tolerate_existing(
                        partial(create_users, conn, container, [user], realm=dc.realm)
                    )
            bind_dn = f"CN={account},{container}"
            bind = LabUser(sam=account, display_name="Provisioner", password=password)
            if not _tolerate_existing(
                lambda: create_users(conn, container, [bind], realm=dc.realm)
            ):
                encoded = f'"{password.reveal()}"'.encode("utf-16-le")
                conn.modify(bind_dn, {"unicodePwd": [(MODIFY_REPLACE, [encoded])]})
            for group in sorted(plan.groups):
                if group.upper().startswith(prefix):
                    name = group.split("\\")[1]
                    _tolerate_existing(partial(create_group, conn, container, name))
            # Account Operators may change the membership of ordinary groups, nothing more
            conn.modify(
                f"CN=Account Operators,CN=Builtin,{dc.domain_dn}",
                {"member": [(MODIFY_ADD, [bind_dn])]},
                tolerate=("entryAlreadyExists", "attributeOrValueExists"),
            )
    except BaseException:
        dc.stop()
        raise
    return LabDirectory(dc, password, account)


def _tolerate_existing(create: Callable[[], object]) -> bool:
    """Run ``create``; False when the entry was there already (a DC shared with tests)."""
    try:
        create()
    except LDAPOperationError as exc:
        if exc.result != "entryAlreadyExists":
            raise
        return False
    return True
