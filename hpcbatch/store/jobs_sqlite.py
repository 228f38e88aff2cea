"""The job tables' hot-path writes on SQLite: each a whole transaction run in the
database thread in one hop (`SqliteDatabase.write`).

Submit, start, exit, an array's bulk insert and a bulk transition are the
writes the controller makes per job; here each is a plain function over a
`sqlite3.Connection` (`lastrowid`, `rowcount`, `json_each` for an array's
children) that aiosqlite's thread runs between BEGIN and COMMIT, so a write
costs one hop to that thread, not one per statement. jobs_pg.py writes the
same rows on PostgreSQL; the reads and the rarer writes are `JobsTable`'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from hpcbatch.core.states import JobState, check_transition
from hpcbatch.store.database import SqliteDatabase
from hpcbatch.store.jobs import INSERT_TRANSITION, JobsTable
from hpcbatch.store.rows import (
    ATTEMPT_COLUMNS,
    ATTEMPT_FIELDS,
    ATTEMPT_OUTCOME,
    TRANSITION_COLUMNS,
    AttemptUpdate,
    JobWrite,
    NewJob,
    StartOrder,
    new_attempt_row,
    request_to_json,
)

INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({', '.join('?' * len(ATTEMPT_FIELDS))})"
)


def _update_attempt(db: sqlite3.Connection, upd: AttemptUpdate) -> None:
    sets = ["state = ?"]
    params: list[Any] = [str(upd.state)]
    for column in ATTEMPT_OUTCOME:
        value = getattr(upd, column)
        if value is not None:
            sets.append(f"{column} = ?")
            params.append(value)
    params += [upd.job_id, upd.attempt, upd.node]
    db.execute(
        f"UPDATE attempts SET {', '.join(sets)} WHERE job_id = ? AND attempt = ? AND node = ?",
        params,
    )


def _write_one(db: sqlite3.Connection, w: JobWrite) -> bool:
    """One JobWrite inside a transaction: the compare-and-set, then what it carries."""
    if w.new is not None:
        assert w.old is not None
        sets = ["state = ?", "reason = ?"]
        params: list[Any] = [str(w.new), w.reason]
        for column, value in (("started", w.started), ("ended", w.ended),
                              ("exit_code", w.exit_code)):  # fmt: skip
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        params += [w.job_id, str(w.old)]
        cur = db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ?", params)
        if cur.rowcount != 1:
            return False
        db.execute(INSERT_TRANSITION, (w.job_id, w.ts, str(w.old), str(w.new), w.reason))
    for upd in w.attempts:
        _update_attempt(db, upd)
    return True


class SqliteJobsTable(JobsTable):
    """`JobsTable` with its writes as one-hop SQLite transactions."""

    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__(db)
        self._sqlite = db

    async def insert_jobs(
        self, jobs: Sequence[NewJob], state: JobState, reason: str | None
    ) -> list[int]:
        """Insert jobs in one transaction, recording SUBMITTED and then `state`."""

        def work(db: sqlite3.Connection) -> list[int]:
            ids: list[int] = []
            for job in jobs:
                cur = db.execute(
                    "INSERT INTO jobs"
                    " (name, user, uid, queue, state, reason, request, submitted, hold)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.name,
                        job.user,
                        job.uid,
                        job.queue,
                        str(state),
                        reason,
                        request_to_json(job.request),
                        job.submitted,
                        job.hold,
                    ),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
            rows: list[tuple[Any, ...]] = []
            for job_id, job in zip(ids, jobs, strict=True):
                rows.append((job_id, job.submitted, None, str(JobState.SUBMITTED), "submitted"))
                if state != JobState.SUBMITTED:
                    rows.append(
                        (job_id, job.submitted, str(JobState.SUBMITTED), str(state), reason)
                    )
            db.executemany(INSERT_TRANSITION, rows)
            return ids

        return await self._sqlite.write(work)

    async def insert_array(
        self, parent: NewJob, indices: Sequence[int], state: JobState, reason: str | None
    ) -> tuple[int, list[int]]:
        """Insert an array parent and its children in one transaction, in bulk.

        The parent holds the request; children hold only their index. Every row
        records SUBMITTED then `state`. Returns (parent id, child ids in index order).
        """

        shared = (parent.name, parent.user, parent.uid, parent.queue, str(state), reason)
        each = self._sqlite.EACH
        packed = self._sqlite.pack(indices)

        def work(db: sqlite3.Connection) -> tuple[int, list[int]]:
            cur = db.execute(
                "INSERT INTO jobs (name, user, uid, queue, state, reason, request, submitted,"
                " array_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*shared, request_to_json(parent.request), parent.submitted, len(indices)),
            )
            assert cur.lastrowid is not None
            parent_id = cur.lastrowid
            # The parent took the highest id, and this transaction holds the write lock:
            # the ids above it are free, so the children get them explicitly. Rows are
            # made by the database from one list parameter of the indices, and the
            # transitions from the rows just written: no Python tuple per row (10,000
            # children and their 20,000 transitions: 58 -> 25 ms).
            last = parent_id + len(indices)
            db.execute(
                "INSERT INTO jobs (id, name, user, uid, queue, state, reason, request, submitted,"
                " array_parent, array_index, hold)"
                f" SELECT ? + 1 + key, ?, ?, ?, ?, ?, ?, '', ?, ?, value, ? FROM {each}",
                (parent_id, *shared, parent.submitted, parent_id, parent.hold, packed),
            )
            ts = parent.submitted
            submitted = str(JobState.SUBMITTED)
            between = "FROM jobs WHERE id BETWEEN ? AND ? ORDER BY id"
            db.execute(
                f"INSERT INTO transitions ({TRANSITION_COLUMNS})"
                f" SELECT id, ?, NULL, ?, 'submitted' {between}",
                (ts, submitted, parent_id, last),
            )
            if state != JobState.SUBMITTED:
                db.execute(
                    f"INSERT INTO transitions ({TRANSITION_COLUMNS})"
                    f" SELECT id, ?, ?, ?, ? {between}",
                    (ts, submitted, str(state), reason, parent_id, last),
                )
            child_ids = list(range(parent_id + 1, last + 1))
            return parent_id, child_ids

        return await self._sqlite.write(work)

    async def start_jobs(self, orders: Sequence[StartOrder], ts: float) -> list[int]:
        """RUNNABLE -> STARTING for each order, with its attempt rows; one transaction.

        Returns the ids whose compare-and-set succeeded (a job cancelled meanwhile is skipped).
        """
        runnable, starting = str(JobState.RUNNABLE), str(JobState.STARTING)

        def work(db: sqlite3.Connection) -> list[int]:
            started: list[int] = []
            attempts: list[tuple[Any, ...]] = []
            transitions: list[tuple[Any, ...]] = []
            for order in orders:
                cur = db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, attempt = ? WHERE id = ? AND state = ?",
                    (starting, order.reason, order.attempt, order.job_id, runnable),
                )
                if cur.rowcount != 1:
                    continue
                started.append(order.job_id)
                transitions.append((order.job_id, ts, runnable, starting, order.reason))
                attempts += [
                    new_attempt_row(order.job_id, order.attempt, node, p, ts)
                    for node, p in enumerate(order.placements)
                ]
            db.executemany(INSERT_TRANSITION, transitions)
            db.executemany(INSERT_ATTEMPT, attempts)
            return started

        return await self._sqlite.write(work)

    async def transition(
        self,
        job_id: int,
        old: JobState,
        new: JobState,
        reason: str | None,
        ts: float,
        *,
        started: float | None = None,
        ended: float | None = None,
        exit_code: int | None = None,
        attempt_updates: Iterable[AttemptUpdate] = (),
    ) -> bool:
        """Compare-and-set one job's state (and its attempts) in one transaction.

        Returns False, changing nothing, if the job is no longer in `old`.
        """
        check_transition(old, new)
        w = JobWrite(job_id, old, new, reason, ts, started, ended, exit_code,
                     tuple(attempt_updates))  # fmt: skip
        return await self._sqlite.write(lambda db: _write_one(db, w))

    async def write_group(self, writes: Sequence[JobWrite]) -> list[bool]:
        for w in writes:
            if w.new is not None:
                assert w.old is not None
                check_transition(w.old, w.new)
        return await self._sqlite.write(lambda db: [_write_one(db, w) for w in writes])

    async def bulk_transition(
        self,
        job_ids: Sequence[int],
        olds: Sequence[JobState],
        new: JobState,
        reason: str | None,
        ts: float,
        *,
        ended: float | None = None,
    ) -> list[tuple[int, JobState]]:
        """Move many jobs from any of `olds` to `new` in one transaction.

        The compare-and-set is the `state IN (...)` of one UPDATE per old state
        (RETURNING gives the ids that really moved), so a 10,000-child array is
        cancelled or released in a few statements. Returns (id, old state) pairs.
        """
        ids = self._sqlite.pack(job_ids)
        each = self._sqlite.EACH
        for old in olds:
            check_transition(old, new)

        def work(db: sqlite3.Connection) -> list[tuple[int, JobState]]:
            moved: list[tuple[int, JobState]] = []
            for old in olds:
                cur = db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, ended = COALESCE(?, ended)"
                    f" WHERE id IN (SELECT value FROM {each}) AND state = ? RETURNING id",
                    (str(new), reason, ended, ids, str(old)),
                )
                moved += [(int(r[0]), old) for r in cur.fetchall()]
            db.executemany(
                INSERT_TRANSITION,
                [(job_id, ts, str(old), str(new), reason) for job_id, old in moved],
            )
            return moved

        return await self._sqlite.write(work)

    async def update_attempts(self, updates: Iterable[AttemptUpdate]) -> None:
        pending = list(updates)

        def work(db: sqlite3.Connection) -> None:
            for upd in pending:
                _update_attempt(db, upd)

        await self._sqlite.write(work)
