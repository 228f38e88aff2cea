"""Retention (docs/operations.md): finished jobs, and all that hangs on them, removed.

A purge takes the oldest finished jobs (ended before a cutoff) in batches, and
removes each batch with its transitions, attempts, steps and collected logs
in one short transaction: the one writer is held for a batch at a time, never
for the whole purge, so API requests and job changes go on in between.
Delivered notifications older than the cutoff go too. Plain SQL both engines run.

A batch is the first jobs of the `ended` index (ORDER BY ended LIMIT n: both
engines walk the index and stop), found inside the batch's own write
transaction. The state is tested on the rows found, not in the WHERE clause:
with `state IN (...)` there, SQLite's planner took the `state` index and sorted
every finished job by `ended` for each batch (30 ms unloaded, over 100 ms on a
loaded machine, on the reader connection the API's reads share). A job that is
not final but has an end (none should: a requeue clears it) is left; a batch
made only of such jobs ends the purge rather than finding them again for ever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from hpcbatch.store.engine import Engine

FINAL = ("SUCCEEDED", "FAILED")
DEPENDENT = ("transitions", "attempts", "job_steps", "job_logs")
"""Tables whose rows belong to a job (by `job_id`) and go with it."""
PURGED = ("jobs", *DEPENDENT, "outbox")
"""The tables a purge removes rows from: the ones whose space is reclaimed after it."""


@dataclass(frozen=True, slots=True)
class Batch:
    """What one batch did: jobs removed, and whether another batch may find more."""

    removed: int
    more: bool


class RetentionTable:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def purge_batch(self, cutoff: float, limit: int) -> Batch:
        """Remove the final jobs among the first `limit` that ended before `cutoff`."""
        async with self._db.transaction() as db:
            cur = await db.execute(
                "SELECT id, state FROM jobs WHERE ended < ? ORDER BY ended LIMIT ?",
                (cutoff, limit),
            )
            rows = list(await cur.fetchall())
            ids = [int(r[0]) for r in rows if r[1] in FINAL]
            if ids:
                marks = ", ".join("?" * len(ids))
                for table in DEPENDENT:
                    await db.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", ids)
                await db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        return Batch(len(ids), more=len(rows) == limit and bool(ids))

    async def batches(self, cutoff: float, limit: int) -> AsyncIterator[int]:
        """Batch after batch of `purge_batch` until none may find more, each one's
        removed count; the caller pauses between them (the writer is free meanwhile)."""
        while True:
            batch = await self.purge_batch(cutoff, limit)
            yield batch.removed
            if not batch.more:
                return

    async def purge_outbox(self, cutoff: float) -> int:
        async with self._db.transaction() as db:
            cur = await db.execute(
                "DELETE FROM outbox WHERE delivered IS NOT NULL AND delivered < ?", (cutoff,)
            )
            return max(cur.rowcount, 0)

    async def reclaim(self, *, full: bool = False, tables: Sequence[str] = PURGED) -> int:
        """Give the space the purge freed back (the engine's way: engine.Engine.reclaim);
        the bytes the store's files shrank by."""
        return await self._db.reclaim(tables, full=full)

    async def count_final(self, cutoff: float) -> int:
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM jobs WHERE ended < ? AND state IN (?, ?)", (cutoff, *FINAL)
        )
        return int(row[0]) if row else 0
