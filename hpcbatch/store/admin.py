"""What operators decided and what hosts reported, kept across controller restarts.

A queue disabled, a host drained or marked down (with the reason), each
host's last probed facts and elastic power state: rows in `queue_admin` and
`hosts`, written through the database's transactions. Queues, compute
environments and hosts created, changed or deleted live (docs/operations.md):
rows in `inventory_changes`, each the entry as the inventory's TOML would hold
it. The controller reads them at start and overrides the inventory with them.
"""

from __future__ import annotations

import json
from typing import Any

from hpcbatch.store.engine import Engine


class AdminTable:
    """The `queue_admin`, `hosts` and `inventory_changes` tables."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    async def queue_states(self) -> dict[str, tuple[str, str | None]]:
        """queue -> (ENABLED or DISABLED, reason), for queues an operator changed."""
        rows = await self._db.fetchall("SELECT name, state, reason FROM queue_admin")
        return {r[0]: (r[1], r[2]) for r in rows}

    async def set_queue(self, name: str, state: str, reason: str | None, ts: float) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO queue_admin (name, state, reason, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET state = excluded.state,"
                " reason = excluded.reason, updated = excluded.updated",
                (name, state, reason, ts),
            )

    async def host_states(self) -> dict[str, tuple[str, str | None]]:
        """host -> (admin state, reason): drained or down by an operator or a check."""
        rows = await self._db.fetchall("SELECT name, admin_state, admin_reason FROM hosts")
        return {r[0]: (r[1], r[2]) for r in rows}

    async def set_host(self, name: str, state: str, reason: str | None, ts: float) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO hosts (name, admin_state, admin_reason, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET admin_state = excluded.admin_state,"
                " admin_reason = excluded.admin_reason, updated = excluded.updated",
                (name, state, reason, ts),
            )

    async def save_facts(self, name: str, facts: dict[str, Any], ts: float) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO hosts (name, facts, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET facts = excluded.facts,"
                " updated = excluded.updated",
                (name, json.dumps(facts), ts),
            )

    async def power_states(self) -> dict[str, str]:
        """host -> the last power state the controller set (elastic hosts only)."""
        rows = await self._db.fetchall(
            "SELECT name, power_state FROM hosts WHERE power_state IS NOT NULL"
        )
        return {r[0]: r[1] for r in rows}

    async def set_power(self, name: str, state: str, ts: float) -> None:
        async with self._db.transaction() as db:
            await db.execute(
                "INSERT INTO hosts (name, power_state, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET power_state = excluded.power_state,"
                " updated = excluded.updated",
                (name, state, ts),
            )

    async def inventory_changes(self) -> list[tuple[str, str, dict[str, Any] | None]]:
        """(kind, name, entry or None for deleted), oldest change first."""
        rows = await self._db.fetchall(
            "SELECT kind, name, entry FROM inventory_changes ORDER BY updated, kind, name"
        )
        return [(r[0], r[1], None if r[2] is None else json.loads(r[2])) for r in rows]

    async def save_changes(
        self,
        changes: list[tuple[str, str, dict[str, Any] | None]],
        forget: list[tuple[str, str]],
        ts: float,
    ) -> None:
        """Record entries set (`None`: deleted) and drop the rows of `forget`, in one
        transaction: one operator's change may touch several entries."""
        async with self._db.transaction() as db:
            for kind, name in forget:
                await db.execute(
                    "DELETE FROM inventory_changes WHERE kind = ? AND name = ?", (kind, name)
                )
            for kind, name, entry in changes:
                await db.execute(
                    "INSERT INTO inventory_changes (kind, name, entry, updated) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(kind, name) DO UPDATE SET entry = excluded.entry,"
                    " updated = excluded.updated",
                    (kind, name, None if entry is None else json.dumps(entry), ts),
                )

    async def forget_host(self, name: str) -> None:
        """A removed host's admin state, facts and power state."""
        async with self._db.transaction() as db:
            await db.execute("DELETE FROM hosts WHERE name = ?", (name,))

    async def forget_queue(self, name: str) -> None:
        """A deleted queue's operator state."""
        async with self._db.transaction() as db:
            await db.execute("DELETE FROM queue_admin WHERE name = ?", (name,))
