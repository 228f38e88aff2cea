"""Secrets: values a job gets in its environment at launch, kept out of its record.

A secret is stored under a name (`hpcbatch secret set NAME`, the value read
from stdin) and jobs and definitions refer to it by that name
(`--secret DB_PASSWORD=db-pass`). Only the name is in the job's request, so
`show`, `events`, the dashboard and the store's job rows never hold the value.
A stored value is sealed (AES-256-GCM, the secret's name as associated data)
with the controller's key, a 0600 file in its home (`secrets.key`), so the
database and its WAL hold ciphertext only; an administrator may instead point
a secret at a file or a command on the controller, read at each launch.

Who may use a secret: its owner (who set it), administrators, and the users
and `@group`s its access list names. That is checked at submit (a job that
names a secret its user may not use is refused) and again at launch (access
taken away, or the secret deleted, since: the job fails with the reason).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hpcbatch.controller.callers import Admins, ApiError, Caller
from hpcbatch.store.secrets import SecretRow, SecretsTable

SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
MAX_VALUE = 64 * 1024
COMMAND_TIMEOUT_S = 30.0
KEY_FILE = "secrets.key"


class SecretUnavailable(Exception):
    """A job's secret cannot be given to it at launch; the message says which and why."""


class Sealer:
    """The controller's key (256 bits in a 0600 file, made on first use) and the
    AES-GCM sealing of values with it."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._aead: AESGCM | None = None

    def _cipher(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._load_or_make())
        return self._aead

    def _load_or_make(self) -> bytes:
        try:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            mode = self.key_file.stat().st_mode & 0o077
            if mode:
                raise ApiError(
                    "internal", f"{self.key_file} is readable by others (mode {oct(mode)})"
                ) from None
            key = base64.b64decode(self.key_file.read_text().strip())
            if len(key) != 32:
                raise ApiError("internal", f"{self.key_file}: not a 256-bit key") from None
            return key
        key = AESGCM.generate_key(bit_length=256)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        return key

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._cipher().encrypt(nonce, value.encode(), name.encode())
        return base64.b64encode(nonce + sealed).decode()

    def unseal(self, name: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        return self._cipher().decrypt(raw[:12], raw[12:], name.encode()).decode()


def check_name(name: str) -> str:
    if not SECRET_NAME_RE.match(name):
        raise ApiError(
            "bad_request",
            f"secret name {name!r} is not valid (letters, digits, '_', '.', '-'; 64 at most)",
        )
    return name


class SecretService:
    """Set, list, delete secrets; check and resolve a job's references to them."""

    def __init__(self, table: SecretsTable, sealer: Sealer, admins: Admins) -> None:
        self._table = table
        self._sealer = sealer
        self._admins = admins

    def use_admins(self, admins: Admins) -> None:
        """The inventory's `admins` read again (`hpcbatch reload`)."""
        self._admins = admins

    def _may_use(self, row: SecretRow, user: str, uid: int) -> bool:
        if user == row.owner or self._admins.caller(uid).admin:
            return True
        return Admins.parse(row.access).includes(user, uid)

    async def set(
        self,
        caller: Caller,
        name: str,
        *,
        value: str | None,
        file: str | None,
        command: str | None,
        access: list[str],
    ) -> dict[str, Any]:
        check_name(name)
        given = [k for k, v in (("value", value), ("file", file), ("command", command)) if v]
        if len(given) != 1:
            raise ApiError("bad_request", "secret set: give exactly one of value, file, command")
        source = given[0]
        if source != "value" and not caller.admin:
            raise ApiError(
                "forbidden", f"secret set: a secret read from a {source} is for administrators"
            )
        for entry in access:
            if not SECRET_NAME_RE.match(entry.removeprefix("@")):
                raise ApiError("bad_request", f"secret set: {entry!r} is not a user or @group")
        old = await self._table.get(name)
        if old is not None and old.owner != caller.user and not caller.admin:
            raise ApiError("forbidden", f"secret {name!r} belongs to {old.owner}")
        if source == "value":
            assert value is not None
            if len(value.encode()) > MAX_VALUE or "\0" in value:
                raise ApiError("bad_request", "secret set: the value must be text, 64 KiB at most")
            sealed = self._sealer.seal(name, value)
        else:
            sealed = str(file or command)
        now = time.time()
        owner = old.owner if old is not None else caller.user
        row = SecretRow(name, owner, tuple(access), source, sealed, now, now)
        await self._table.put(row)
        return {"name": name, "owner": owner, "source": source, "replaced": old is not None}

    async def list(self, caller: Caller) -> list[dict[str, Any]]:
        """The secrets the caller may use (every one for an administrator): names and
        who may use them, never a value."""
        rows = await self._table.all()
        return [
            {
                "name": r.name,
                "owner": r.owner,
                "access": list(r.access),
                "source": r.source,
                "updated": r.updated,
            }
            for r in rows
            if caller.admin or self._may_use(r, caller.user, caller.uid)
        ]

    async def delete(self, caller: Caller, name: str) -> dict[str, Any]:
        row = await self._table.get(check_name(name))
        if row is None:
            raise ApiError("not_found", f"no secret {name!r}")
        if row.owner != caller.user and not caller.admin:
            raise ApiError("forbidden", f"secret {name!r} belongs to {row.owner}")
        await self._table.delete(name)
        return {"name": name, "deleted": True}

    async def check_use(self, refs: dict[str, str], user: str, uid: int) -> None:
        """At submit: every secret the job names exists and its user may use it."""
        rows = await self._table.many(sorted(set(refs.values())))
        for var, name in sorted(refs.items()):
            row = rows.get(name)
            if row is None:
                raise ApiError("bad_request", f"secret {name!r} (for {var}) does not exist")
            if not self._may_use(row, user, uid):
                raise ApiError("forbidden", f"secret {name!r} (for {var}): {user} may not use it")

    async def resolve(self, refs: dict[str, str], user: str, uid: int) -> dict[str, str]:
        """At launch: variable -> value. Raises SecretUnavailable."""
        if not refs:
            return {}
        rows = await self._table.many(sorted(set(refs.values())))
        out: dict[str, str] = {}
        for var, name in refs.items():
            row = rows.get(name)
            if row is None:
                raise SecretUnavailable(f"secret {name!r} (for {var}) does not exist")
            if not self._may_use(row, user, uid):
                raise SecretUnavailable(f"secret {name!r} (for {var}): {user} may not use it")
            try:
                out[var] = await self._value(row)
            except (OSError, ValueError) as exc:
                raise SecretUnavailable(f"secret {name!r}: {exc}") from None
            except InvalidTag:
                raise SecretUnavailable(
                    f"secret {name!r}: sealed with another key than {self._sealer.key_file}"
                ) from None
        return out

    async def _value(self, row: SecretRow) -> str:
        if row.source == "value":
            return self._sealer.unseal(row.name, row.sealed)
        if row.source == "file":
            text = await asyncio.to_thread(Path(row.sealed).read_text)
            return text.removesuffix("\n")
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", row.sealed,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ValueError(f"its command ran over {COMMAND_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise ValueError(f"its command exited with {proc.returncode}")
        return out.decode(errors="replace").removesuffix("\n")
