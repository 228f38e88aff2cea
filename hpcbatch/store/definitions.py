"""Job definitions in the store: registered, versioned, deregistered.

A definition is `name:revision`. Registering a name again makes the next
revision; old revisions stay usable until deregistered (status INACTIVE), as
in AWS Batch. The body is the validated definition as JSON; this module only
keeps it, `hpcbatch.jobdefs` says what it means.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcbatch.store.engine import Engine, column_list


@dataclass(frozen=True, slots=True)
class DefinitionRow:
    name: str
    revision: int
    status: str
    body: dict[str, Any]
    user: str  # who registered this revision
    created: float
    owner: str  # who owns the name: registered its first revision

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "arn": f"{self.name}:{self.revision}",
            "status": self.status,
            "user": self.user,
            "owner": self.owner,
            "created": self.created,
            "definition": self.body,
        }


DEFINITION_FIELDS = ("name", "revision", "status", "body", "user", "created", "owner")
"""The `definitions` columns, in `SELECT` and `INSERT` order; named as DefinitionRow's fields."""
_COLUMNS = column_list(DEFINITION_FIELDS)


def _row(row: Sequence[Any]) -> DefinitionRow:
    values = dict(zip(DEFINITION_FIELDS, row, strict=True))
    values["revision"] = int(values["revision"])
    values["body"] = json.loads(values["body"])
    values["created"] = float(values["created"])
    values["owner"] = values["owner"] or values["user"]
    return DefinitionRow(**values)


class DefinitionOwned(Exception):
    """A new revision of a name someone else owns, by someone who is not an admin."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(f"job definition {name} belongs to {owner}")
        self.name = name
        self.owner = owner


class DefinitionsTable:
    """The `definitions` table."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    async def register(
        self, name: str, body: dict[str, Any], user: str, ts: float, *, admin: bool = False
    ) -> int:
        """Store `body` as the next revision of `name`; returns the revision.

        The name's owner is who registered its first revision; anyone else is
        refused (`DefinitionOwned`) unless `admin`, checked in the same transaction.
        """
        async with self._db.transaction() as db:
            cur = await db.execute(
                'SELECT MAX(revision), MIN(COALESCE(owner, "user")) FROM definitions'
                " WHERE name = ?",
                (name,),
            )
            row = await cur.fetchone()
            last, owner = (int(row[0]), str(row[1])) if row and row[0] is not None else (0, user)
            if owner != user and not admin:
                raise DefinitionOwned(name, owner)
            await db.execute(
                f"INSERT INTO definitions ({_COLUMNS}) VALUES (?, ?, 'ACTIVE', ?, ?, ?, ?)",
                (name, last + 1, json.dumps(body, separators=(",", ":")), user, ts, owner),
            )
        return last + 1

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
        row = await self._db.fetchone(sql, params)
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
        rows = await self._db.fetchall(sql + " ORDER BY name, revision", params)
        return [_row(r) for r in rows]

    async def deregister(self, name: str, revision: int) -> bool:
        """Mark one revision INACTIVE; False if there is no such ACTIVE revision."""
        async with self._db.transaction() as db:
            cur = await db.execute(
                "UPDATE definitions SET status = 'INACTIVE'"
                " WHERE name = ? AND revision = ? AND status = 'ACTIVE'",
                (name, revision),
            )
            return cur.rowcount == 1
