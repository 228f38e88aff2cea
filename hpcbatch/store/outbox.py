"""The notifications' outbox: mails and webhook POSTs to make, kept until delivered.

Each row is one delivery (a channel, a target, a body) under a key made from
what it announces, so enqueueing the same change twice (a replay after a
crash) adds nothing. The notifier enqueues a batch and moves its mark (how
far into the jobs' history it has read) in one transaction; a delivery is
marked delivered only after it succeeded, so a crash loses none and a retry
window sends none twice. Plain SQL (`ON CONFLICT DO NOTHING` is standard in
SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcbatch.store.engine import Engine

MARK_KEY = "outbox_mark"
OUTBOX_FIELDS = (
    "key", "channel", "target", "body", "created", "attempts", "next_try", "delivered", "error",
)  # fmt: skip
"""The `outbox` columns (what a store copy moves)."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    key: str
    channel: str  # "mail" or "webhook"
    target: str  # an address, or the webhook's name
    body: str  # JSON


@dataclass(frozen=True, slots=True)
class OutboxRow:
    key: str
    channel: str
    target: str
    body: str
    created: float
    attempts: int


class OutboxTable:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def mark(self) -> float | None:
        """How far (a transition time) the notifier has read; None before its first run."""
        row = await self._db.fetchone("SELECT value FROM meta WHERE key = ?", (MARK_KEY,))
        return float(row[0]) if row is not None else None

    async def enqueue(self, items: Sequence[OutboxItem], now: float, mark: float | None) -> None:
        """Add the items (those already there are left as they are) and move the mark."""
        async with self._db.transaction() as db:
            await db.executemany(
                "INSERT INTO outbox (key, channel, target, body, created, next_try)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                [(i.key, i.channel, i.target, i.body, now, now) for i in items],
            )
            if mark is not None:
                await db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (MARK_KEY, repr(mark)),
                )

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        rows = await self._db.fetchall(
            "SELECT key, channel, target, body, created, attempts FROM outbox"
            " WHERE delivered IS NULL AND next_try <= ? ORDER BY created, key LIMIT ?",
            (now, limit),
        )
        return [OutboxRow(*r) for r in rows]

    async def next_due(self) -> float | None:
        row = await self._db.fetchone("SELECT MIN(next_try) FROM outbox WHERE delivered IS NULL")
        return None if row is None or row[0] is None else float(row[0])

    async def settle(
        self, delivered: Sequence[str], failed: Sequence[tuple[str, float, str]], now: float
    ) -> None:
        """Record a batch of tries in one transaction: the keys delivered, and the
        failures (key, next try, error)."""
        async with self._db.transaction() as db:
            await db.executemany(
                "UPDATE outbox SET delivered = ?, attempts = attempts + 1, error = NULL"
                " WHERE key = ?",
                [(now, key) for key in delivered],
            )
            await db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?, error = ? WHERE key = ?",
                [(next_try, error[:1000], key) for key, next_try, error in failed],
            )

    async def pending(self) -> int:
        row = await self._db.fetchone("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL")
        return int(row[0]) if row else 0
