"""The lab's Active Directory: a real Samba AD DC on 127.0.0.1, seeded from the manifests.

The DC serves the domain the manifests' Site names: its NetBIOS name, and a realm taken from the
bind account's UPN suffix or the LDAP URL's host (``ldaps://dc1.acme.test`` → ``ACME.TEST``).
One import seeds it: the manifests' users of that domain (enabled, with their friendly names as
displayName, spelled as the manifests spell them), their tenants' users groups (empty, so the
first plan shows the memberships to add) and a bind account of the lab's own with a fresh
password, which may change group memberships (Account Operators).

A lab starts a DC of its own and stops it with the lab. Tests hand it the DC they already run
(``dc=``); the lab then only seeds it, and leaves it running.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.lab.samba import (
    LabUser,
    Progress,
    SambaDC,
    group_ldif,
    ldif_add_member,
    ou_ldif,
    user_dn,
    users_ldif,
)
from provisioner.manifest.models import domain_user_key
from provisioner.secrets import Secret

if TYPE_CHECKING:
    from provisioner.lab.estate import LabPlan

BIND_ACCOUNT = "svc-provisioner"
CONTAINER = "OU=Lab Users"


@dataclass
class LabDirectory:
    dc: SambaDC
    bind_password: Secret = field(repr=False)
    bind_account: str = BIND_ACCOUNT
    owned: bool = True  # started by the lab, so stopped with it

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
        if self.owned:
            self.dc.stop()


def start_lab_directory(
    workdir: Path,
    plan: LabPlan,
    *,
    dc: SambaDC | None = None,
    progress: Progress = lambda _: None,
) -> LabDirectory:
    """Start a DC for the plan's domain in ``workdir`` (or use ``dc``) and seed it."""
    owned = dc is None
    if dc is None:
        assert plan.domain is not None, "the manifests name no Site"
        dc = SambaDC.start(
            workdir, realm=plan.domain.realm, netbios=plan.domain.netbios, progress=progress
        )
    try:
        password = Secret(secrets.token_urlsafe(18) + "aA1!")
        # an account of this lab's own: labs that share a DC (tests) keep their passwords
        account = f"{BIND_ACCOUNT[:11]}-{secrets.token_hex(4)}"
        ours = f"{domain_user_key(dc.netbios)}\\"
        users = [
            LabUser(sam=name.split("\\", 1)[1], display_name=display)
            for key, (name, display) in sorted(plan.users.items())
            if key.startswith(ours)
        ]
        groups = [
            name.split("\\", 1)[1]
            for key, name in sorted(plan.groups.items())
            if key.startswith(ours)
        ]
        container = f"{CONTAINER},{dc.domain_dn}"
        bind = LabUser(sam=account, display_name="Provisioner", password=password)
        progress(
            f"importing {counted(len(users), 'user')} and {counted(len(groups), 'group')} "
            f"into {dc.netbios}"
        )
        dc.import_ldif(
            ou_ldif(container)
            + users_ldif(container, [*users, bind], realm=dc.realm)
            + "".join(group_ldif(container, name) for name in groups)
            # Account Operators may change the membership of ordinary groups, nothing more
            + ldif_add_member(
                f"CN=Account Operators,CN=Builtin,{dc.domain_dn}", user_dn(container, bind)
            ),
            progress=lambda done: progress(f"{dc.netbios}: {done}"),
        )
    except BaseException:
        if owned:
            dc.stop()
        raise
    return LabDirectory(dc, password, account, owned)


def counted(n: int, noun: str) -> str:
    """``counted(1, "user")`` → ``1 user``, ``counted(2, "user")`` → ``2 users``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
