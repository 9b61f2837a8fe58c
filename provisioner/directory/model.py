"""What the plan knows of Active Directory: plain data, no I/O (the reader fills it in).

    DirectoryFacts(
        users={"NFON\\JDOE": ADUser(sam="jdoe", sid="S-1-5-21-...", display_name="Jane Doe",
                                      disabled=False, dn="CN=jdoe,OU=Staff,DC=nfon,DC=test",
                                      member_of=frozenset()),
               "NFON\\GONE": None},                     # named in a manifest, not in AD
        groups={"NFON\\K6732-TAPI-USERS": ADGroup(...)},
        keys={"cn=jdoe,ou=staff,dc=nfon,dc=test": "NFON\\JDOE"},  # member DN key → user
        member_keys={"NFON\\K6732-TAPI-USERS": frozenset({"cn=jdoe,ou=staff,dc=nfon,dc=test"})})

DNs compare by the reader's normalised form (case and spacing do not matter to AD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provisioner.plan.model import PlanProblem


@dataclass(frozen=True)
class ADUser:
    """A user account; ``member_of``: those of the requested groups it is a direct member of."""

    sam: str
    sid: str
    display_name: str | None
    disabled: bool
    dn: str
    member_of: frozenset[str]


@dataclass(frozen=True)
class ADGroup:
    """A group and the DNs of its direct members."""

    name: str
    dn: str
    members: frozenset[str]


def group_key(name: str) -> str:
    """``NFON\\K6732-TAPI-Users`` → ``NFON\\K6732-TAPI-USERS``: one key for both spellings."""
    return name.upper()


@dataclass
class DirectoryFacts:
    users: dict[str, ADUser | None] = field(default_factory=dict)  # DOMAIN\SAM → user or absent
    groups: dict[str, ADGroup] = field(default_factory=dict)  # group key → group
    keys: dict[str, str] = field(default_factory=dict)  # a user's DN key → DOMAIN\SAM
    user_keys: dict[str, str] = field(default_factory=dict)  # DOMAIN\SAM → its DN key
    member_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # group → key → DN
    problems: list[PlanProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    operations: int = 0
    read_sites: set[str] = field(default_factory=set)

    def members_shown(self, group: str) -> set[str]:
        """A group's members as the plan shows them: DOMAIN\\SAM where known, else the DN."""
        return {self.keys.get(key, dn) for key, dn in self.member_keys.get(group, {}).items()}

    def is_member(self, user: str, group: str) -> bool:
        key = self.user_keys.get(user)
        return key is not None and key in self.member_keys.get(group, {})
