"""What the plan knows of Active Directory: plain data, no I/O (the reader fills it in).

    DirectoryFacts(
        users={"NFON\\STRAßE": ADUser(sam="Straße", domain="NFON", display_name="Eva Straße",
                                       disabled=False, dn="CN=Eva Straße,OU=Staff,DC=nfon,DC=test",
                                       dn_key="cn=eva straße,ou=staff,dc=nfon,dc=test"),
               "NFON\\GONE": None},                     # named in a manifest, not in AD
        groups={"NFON\\K6732-TAPI-USERS": ADGroup(...)},
        by_dn={"cn=eva straße,ou=staff,dc=nfon,dc=test": "NFON\\STRAßE"},   # DN key → user key
        members={"NFON\\K6732-TAPI-USERS": {"cn=eva straße,...": "CN=Eva Straße,..."}},
        nested={"NFON\\K6732-TAPI-USERS": frozenset({"cn=eva straße,..."})})

Users and groups are keyed by :func:`~provisioner.manifest.models.domain_user_key`, the way
Windows compares account names; their names are shown and written as the directory spells them
(``ADUser.account``). DNs compare by the reader's normalised form (case and spacing do not
matter to AD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.manifest.models import domain_user_key
from provisioner.plan.model import PlanProblem


@dataclass(frozen=True)
class ADUser:
    """A user account, named as the directory spells it."""

    sam: str
    domain: str  # the NetBIOS name of its domain, as the directory spells it
    display_name: str | None
    disabled: bool
    dn: str
    dn_key: str  # the DN in comparable form, computed once by the reader

    @property
    def account(self) -> str:
        """``NFON\\Straße``: the name to show and to write to hosts."""
        return f"{self.domain}\\{self.sam}"


@dataclass(frozen=True)
class ADGroup:
    """A group and the DNs of its direct members."""

    name: str
    domain: str
    dn: str
    members: frozenset[str]

    @property
    def account(self) -> str:
        return f"{self.domain}\\{self.name}"


def group_key(name: str) -> str:
    """``NFON\\K6732-TAPI-Users`` → ``NFON\\K6732-TAPI-USERS``: one key for both spellings."""
    return domain_user_key(name)


@dataclass
class DirectoryFacts:
    users: dict[str, ADUser | None] = field(default_factory=dict)  # user key → user or absent
    groups: dict[str, ADGroup] = field(default_factory=dict)  # group key → group
    by_dn: dict[str, str] = field(default_factory=dict)  # a user's DN key → user key
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # group → DN key → DN
    # group → DN keys of the users that are members through nested groups (read only when a
    # direct member is not one of the manifests' users, as only then can a group be nested)
    nested: dict[str, frozenset[str]] = field(default_factory=dict)
    problems: list[PlanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: int = 0
    read_sites: set[str] = field(default_factory=set)

    def members_shown(self, group: str) -> set[str]:
        """A group's direct members as the plan shows them: the account where the manifests name
        the user, else the DN (a member someone added by hand, or a nested group)."""
        shown = set()
        for key, dn in self.members.get(group, {}).items():
            user = self.users.get(self.by_dn.get(key, ""))
            shown.add(user.account if user is not None else dn)
        return shown

    def is_member(self, user: str, group: str) -> bool:
        """Whether the user (a key) is in the group, directly or through nested groups."""
        found = self.users.get(user)
        if found is None:
            return False
        return found.dn_key in self.members.get(group, {}) or found.dn_key in self.nested.get(
            group, frozenset()
        )
