"""What operators decided and what hosts reported, kept across controller restarts.

A queue disabled, a host drained or marked down (with the reason), and each
host's last probed facts: rows in `queue_admin` and `hosts`, written through
the store's connection and transactions. The controller reads them at start
and overrides the inventory's defaults with them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcbatch.store.db import Store


class AdminStates:
    """The `queue_admin` and `hosts` tables."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def queue_states(self) -> dict[str, tuple[str, str | None]]:
        """queue -> (ENABLED or DISABLED, reason), for queues an operator changed."""
        cur = await self._store._conn.execute("SELECT name, state, reason FROM queue_admin")
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}

    async def set_queue(self, name: str, state: str, reason: str | None, ts: float) -> None:
        async with self._store._tx() as db:
            await db.execute(
                "INSERT INTO queue_admin (name, state, reason, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET state = excluded.state,"
                " reason = excluded.reason, updated = excluded.updated",
                (name, state, reason, ts),
            )

    async def host_states(self) -> dict[str, tuple[str, str | None]]:
        """host -> (admin state, reason): drained or down by an operator or a check."""
        cur = await self._store._conn.execute("SELECT name, admin_state, admin_reason FROM hosts")
        return {r[0]: (r[1], r[2]) for r in await cur.fetchall()}

    async def set_host(self, name: str, state: str, reason: str | None, ts: float) -> None:
        async with self._store._tx() as db:
            await db.execute(
                "INSERT INTO hosts (name, admin_state, admin_reason, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET admin_state = excluded.admin_state,"
                " admin_reason = excluded.admin_reason, updated = excluded.updated",
                (name, state, reason, ts),
            )

    async def save_facts(self, name: str, facts: dict[str, Any], ts: float) -> None:
        async with self._store._tx() as db:
            await db.execute(
                "INSERT INTO hosts (name, facts, updated) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET facts = excluded.facts,"
                " updated = excluded.updated",
                (name, json.dumps(facts), ts),
            )
