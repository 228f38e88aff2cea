"""Secrets (docs/security.md): one row per name, as the controller sealed it.

The table never sees a plain value: `sealed` is the value encrypted with the
controller's key (controller/secrets.py) for a stored value, or the file path
or command the controller reads it from. `access` is the JSON list of users
and `@group`s (besides the owner and administrators) whose jobs may use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hpcbatch.store.engine import Engine

SECRET_FIELDS = ("name", "owner", "access", "source", "sealed", "created", "updated")
"""The `secrets` columns (what a store copy moves)."""


@dataclass(frozen=True, slots=True)
class SecretRow:
    name: str
    owner: str
    access: tuple[str, ...]
    source: str  # "value", "file" or "command"
    sealed: str
    created: float
    updated: float


def _row(r: Any) -> SecretRow:
    access = tuple(str(a) for a in json.loads(r[2]))
    return SecretRow(str(r[0]), str(r[1]), access, str(r[3]), str(r[4]), float(r[5]), float(r[6]))


class SecretsTable:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def get(self, name: str) -> SecretRow | None:
        row = await self._db.fetchone(
            "SELECT name, owner, access, source, sealed, created, updated FROM secrets"
            " WHERE name = ?",
            (name,),
        )
        return None if row is None else _row(row)

    async def many(self, names: list[str]) -> dict[str, SecretRow]:
        out: dict[str, SecretRow] = {}
        for name in names:
            row = await self.get(name)
            if row is not None:
                out[name] = row
        return out

    async def all(self) -> list[SecretRow]:
        rows = await self._db.fetchall(
            "SELECT name, owner, access, source, sealed, created, updated FROM secrets"
            " ORDER BY name"
        )
        return [_row(r) for r in rows]

    async def put(self, row: SecretRow) -> None:
        """Insert or replace (the creation time of a replaced secret is kept)."""
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO secrets (name, owner, access, source, sealed, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " owner = excluded.owner, access = excluded.access, source = excluded.source,"
                " sealed = excluded.sealed, updated = excluded.updated",
                (row.name, row.owner, json.dumps(list(row.access)), row.source, row.sealed,
                 row.created, row.updated),
            )  # fmt: skip

    async def delete(self, name: str) -> bool:
        async with self._db.transaction() as db:
            cur = await db.execute("DELETE FROM secrets WHERE name = ?", (name,))
            return cur.rowcount > 0
