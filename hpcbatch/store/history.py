"""The jobs' history read by time: what `hpcbatch events --since` replays.

The `transitions` table (written by `JobsTable` with each state change) joined
with its job's owner, queue and name, in time order, filtered in SQL so a
replay of a busy day reads only what was asked for. Plain SQL (no rowid, no
json_each), so a second engine runs it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hpcbatch.store.engine import Engine


@dataclass(frozen=True, slots=True)
class JobChange:
    """One stored transition of a job, with what a reader filters and redacts on."""

    job_id: int
    ts: float
    old: str | None
    new: str
    reason: str | None
    user: str
    queue: str
    name: str
    array_parent: int | None
    array_index: int | None
    request: str | None = None  # the job's request JSON (an array child's: its parent's)


class HistoryTable:
    def __init__(self, db: Engine) -> None:
        self._db = db

    async def job_changes(
        self,
        since: float,
        *,
        user: str | None = None,
        queue: str | None = None,
        job_id: int | None = None,
        states: Sequence[str] = (),
        limit: int = 100_000,
        requests: bool = False,
    ) -> list[JobChange]:
        """Transitions at or after `since`, oldest first, at most `limit`; with
        `requests`, each with its job's request (the notifications read it)."""
        where = ["t.ts >= ?"]
        params: list[Any] = [since]
        for column, value in (('j."user"', user), ("j.queue", queue), ("j.id", job_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if states:
            where.append(f"t.new IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        extra, join = "", ""
        if requests:
            extra = ", CASE WHEN j.array_parent IS NULL THEN j.request ELSE p.request END"
            join = " LEFT JOIN jobs p ON p.id = j.array_parent"
        rows = await self._db.fetchall(
            'SELECT t.job_id, t.ts, t.old, t.new, t.reason, j."user", j.queue, j.name,'
            f" j.array_parent, j.array_index{extra}"
            f" FROM transitions t JOIN jobs j ON j.id = t.job_id{join}"
            f" WHERE {' AND '.join(where)} ORDER BY t.ts, t.job_id LIMIT ?",
            (*params, limit),
        )
        return [JobChange(*row) for row in rows]
