"""Active Directory facts (domains, users, groups) and group-membership changes, over LDAP."""

from provisioner.directory.facts import (
    ADGroup,
    ADUser,
    DirectoryError,
    DomainInfo,
    DomainNotFoundError,
    GroupNotFoundError,
    lookup_users,
    read_group,
    resolve_domain,
    sid_to_string,
)
from provisioner.directory.operations import (
    MembershipChange,
    add_group_members,
    remove_group_members,
)

__all__ = [
    "ADGroup",
    "ADUser",
    "DirectoryError",
    "DomainInfo",
    "DomainNotFoundError",
    "GroupNotFoundError",
    "MembershipChange",
    "add_group_members",
    "lookup_users",
    "read_group",
    "remove_group_members",
    "resolve_domain",
    "sid_to_string",
]
