"""Who calls the controller's API, and how a refusal is told to them.

`Caller` is the peer of a request (its uid from the socket's credentials);
`ApiError` is a refusal with a kind the client can act on; validation errors
from pydantic become one line naming each field. Shared by every service the
API reaches (jobs, definitions, cancel, dependencies) and the API server.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import ValidationError


class ApiError(Exception):
    """A refusal to report to the client: `kind` is bad_request, not_found, forbidden,
    infeasible or internal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Caller:
    """`listed`: named in the inventory's `admins` (as a user or through a group).
    Root and the controller's own user are administrators whatever the list says."""

    uid: int
    user: str
    listed: bool = False

    @property
    def admin(self) -> bool:
        return self.listed or self.uid == 0 or self.uid == os.getuid()

    def owns(self, uid: int) -> bool:
        """Whether a job (or other record) of `uid` is this caller's own."""
        return uid == self.uid


@dataclass(frozen=True, slots=True)
class Admins:
    """The inventory's `admins`: user names, and `@group` names whose members are admins.

    A group's members are read through NSS (`getgrouplist`: local files, LDAP,
    SSSD) when a connection opens, so a change takes effect on the next connection.
    """

    users: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Admins:
        users = {e for e in entries if not e.startswith("@")}
        groups = {e[1:] for e in entries if e.startswith("@")}
        return cls(frozenset(users), frozenset(groups))

    def includes(self, user: str, uid: int) -> bool:
        if user in self.users:
            return True
        if not self.groups:
            return False
        try:
            gid = pwd.getpwuid(uid).pw_gid
            member_of = set(os.getgrouplist(user, gid))
        except (KeyError, OSError):
            return False
        for name in self.groups:
            try:
                if grp.getgrnam(name).gr_gid in member_of:
                    return True
            except KeyError:
                continue  # no such group (yet): it names nobody
        return False

    def caller(self, uid: int) -> Caller:
        """The caller for a peer uid: its user name (the uid as text if it has none)."""
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            return Caller(uid=uid, user=str(uid))
        return Caller(uid=uid, user=user, listed=self.includes(user, uid))


def format_validation_error(exc: ValidationError, what: str = "job") -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or what
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)
