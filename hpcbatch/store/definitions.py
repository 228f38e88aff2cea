"""Job definitions in the store: registered, versioned, deregistered.

A definition is `name:revision`. Registering a name again makes the next
revision; old revisions stay usable until deregistered (status INACTIVE), as
in AWS Batch. The body is the validated definition as JSON; this module only
keeps it, `hpcbatch.jobdefs` says what it means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcbatch.store.db import Store


@dataclass(frozen=True, slots=True)
class DefinitionRow:
    name: str
    revision: int
    status: str
    body: dict[str, Any]
    user: str
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "arn": f"{self.name}:{self.revision}",
            "status": self.status,
            "user": self.user,
            "created": self.created,
            "definition": self.body,
        }


_COLUMNS = "name, revision, status, body, user, created"


def _row(r: Any) -> DefinitionRow:
    return DefinitionRow(r[0], int(r[1]), r[2], json.loads(r[3]), r[4], float(r[5]))


class Definitions:
    """The `definitions` table, through the store's connection and transactions."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def register(self, name: str, body: dict[str, Any], user: str, ts: float) -> int:
        """Store `body` as the next revision of `name`; returns the revision."""
        async with self._store._tx() as db:
            cur = await db.execute(
                "SELECT COALESCE(MAX(revision), 0) FROM definitions WHERE name = ?", (name,)
            )
            row = await cur.fetchone()
            revision = (int(row[0]) if row else 0) + 1
            await db.execute(
                f"INSERT INTO definitions ({_COLUMNS}) VALUES (?, ?, 'ACTIVE', ?, ?, ?)",
                (name, revision, json.dumps(body, separators=(",", ":")), user, ts),
            )
        return revision

    async def get(self, name: str, revision: int | None) -> DefinitionRow | None:
        """One revision, or the latest ACTIVE one when `revision` is None."""
        if revision is None:
            sql = (
                f"SELECT {_COLUMNS} FROM definitions WHERE name = ? AND status = 'ACTIVE'"
                " ORDER BY revision DESC LIMIT 1"
            )
            params: tuple[Any, ...] = (name,)
        else:
            sql = f"SELECT {_COLUMNS} FROM definitions WHERE name = ? AND revision = ?"
            params = (name, revision)
        cur = await self._store._conn.execute(sql, params)
        row = await cur.fetchone()
        return _row(row) if row else None

    async def list(self, name: str | None = None, *, inactive: bool = False) -> list[DefinitionRow]:
        where: list[str] = []
        params: list[Any] = []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if not inactive:
            where.append("status = 'ACTIVE'")
        sql = f"SELECT {_COLUMNS} FROM definitions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        cur = await self._store._conn.execute(sql + " ORDER BY name, revision", params)
        return [_row(r) for r in await cur.fetchall()]

    async def deregister(self, name: str, revision: int) -> bool:
        """Mark one revision INACTIVE; False if there is no such ACTIVE revision."""
        async with self._store._tx() as db:
            cur = await db.execute(
                "UPDATE definitions SET status = 'INACTIVE'"
                " WHERE name = ? AND revision = ? AND status = 'ACTIVE'",
                (name, revision),
            )
            return cur.rowcount == 1
