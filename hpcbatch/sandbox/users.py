"""Real local accounts for a multi-user sandbox (`sandbox up --users alice,bob`).

Jobs of a host with `run_as = "submitter"` run as their submitter's account on
the host; the sandbox's hosts share this machine's passwd, so the sandbox makes
the users here: `useradd` with a home, a uid from the system's normal range
(>= 1000), a locked password. Idempotent: an existing user is kept (and left in
place afterwards, for the next run). Root only.
"""

from __future__ import annotations

import os
import pwd
import re

from hpcbatch.sandbox.files import _run
from hpcbatch.sandbox.model import SandboxError

USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
MIN_UID = 1000


def parse_users(text: str) -> list[str]:
    """`alice,bob` as names; a clear error for anything useradd would refuse."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not USER_RE.fullmatch(name):
            raise SandboxError(f"--users: {name!r} is not a user name ([a-z_][a-z0-9_-]*)")
    return names


def ensure_users(names: list[str]) -> dict[str, int]:
    """Create the users that do not exist yet; their uids. Refuses system accounts."""
    if names and os.geteuid() != 0:
        raise SandboxError("--users needs root (it creates local accounts with useradd)")
    uids: dict[str, int] = {}
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            _run(["useradd", "--create-home", "--shell", "/bin/sh", "--user-group", name])
            pw = pwd.getpwnam(name)
        if pw.pw_uid < MIN_UID:
            raise SandboxError(
                f"user {name} exists with uid {pw.pw_uid}, a system account (below "
                f"{MIN_UID}): jobs never run as it; choose another name"
            )
        uids[name] = pw.pw_uid
    return uids
