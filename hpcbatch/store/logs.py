"""Collected logs (docs/operations.md): attempts' output kept in the store.

With `log_collection = "on_exit"` the controller copies each attempt's
stdout and stderr from its host when the job ends and keeps them here,
compressed (zlib), so `hpcbatch logs` answers after the host is gone. One
row per (job, attempt, node, stream); `size` is the uncompressed length kept,
`truncated` whether the job's cap cut it. Retention deletes them with their job.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from hpcbatch.store.engine import Engine

LOG_FIELDS = ("job_id", "attempt", "node", "stream", "data", "size", "truncated", "collected")
"""The `job_logs` columns (what a store copy moves)."""


@dataclass(frozen=True, slots=True)
class CollectedLog:
    job_id: int
    attempt: int
    node: int
    stream: str
    text: bytes  # uncompressed
    truncated: bool


class LogsTable:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def put(self, logs: Sequence[CollectedLog], now: float) -> None:
        """Keep one job's collected streams (replacing any collected before), one transaction."""
        async with self._db.transaction() as db:
            for log in logs:
                await db.execute(
                    "INSERT INTO job_logs (job_id, attempt, node, stream, data, size, truncated,"
                    " collected) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (job_id, attempt, node, stream) DO UPDATE SET"
                    " data = excluded.data, size = excluded.size,"
                    " truncated = excluded.truncated, collected = excluded.collected",
                    (log.job_id, log.attempt, log.node, log.stream, zlib.compress(log.text, 6),
                     len(log.text), int(log.truncated), now),
                )  # fmt: skip

    async def get(self, job_id: int, attempt: int, node: int, stream: str) -> CollectedLog | None:
        row = await self._db.fetchone(
            "SELECT data, truncated FROM job_logs"
            " WHERE job_id = ? AND attempt = ? AND node = ? AND stream = ?",
            (job_id, attempt, node, stream),
        )
        if row is None:
            return None
        text = zlib.decompress(bytes(row[0]))
        return CollectedLog(job_id, attempt, node, stream, text, bool(row[1]))

    async def collected(self, job_id: int) -> bool:
        row = await self._db.fetchone("SELECT 1 FROM job_logs WHERE job_id = ? LIMIT 1", (job_id,))
        return row is not None

    async def stored_bytes(self) -> int:
        """The compressed size of every collected log (for `purge`'s report)."""
        row = await self._db.fetchone("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM job_logs")
        return int(row[0]) if row else 0
