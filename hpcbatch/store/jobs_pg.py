"""The job tables' hot-path writes on PostgreSQL: one statement, one round trip, each.

The same rows as jobs_sqlite.py, spelled for a server, where each round trip
costs about what SQLite's whole transaction does. A write's parts are the
data-modifying WITH clauses of one statement, which PostgreSQL commits or
fails as one (`PgDatabase.write_one`): the compare-and-set `UPDATE jobs ...
WHERE id = $ AND state = $ RETURNING id`, then the history rows and attempt
rows written only for the jobs it returned. Lists travel as one array
parameter each (`unnest($1::bigint[], ...)`), not a statement per row; a
job's history rows are inserted in their order (`ORDER BY`), which orders the
`seq` they draw. The exceptions are a transaction of a few statements
(`PgDatabase.write`): an array's children (rare, and big), and attempt updates
of several rows (a statement per row, pipelined, in order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from hpcbatch.core.states import JobState, check_transition
from hpcbatch.store.engine import column_list
from hpcbatch.store.jobs import JobsTable
from hpcbatch.store.postgres import PgDatabase
from hpcbatch.store.rows import (
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

SUBMITTED = str(JobState.SUBMITTED)
_NEW_JOB = ("id", "name", "user", "uid", "queue", "state", "reason", "request", "submitted")

INSERT_JOBS = (
    "WITH new AS MATERIALIZED (SELECT nextval('jobs_id_seq') AS id, j.*"
    " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::float8[],"
    " $9::text[]) WITH ORDINALITY AS j(name, usr, uid, queue, request, ts, hold, n)),"
    f" made AS (INSERT INTO jobs ({column_list(_NEW_JOB)}, hold)"
    " SELECT id, name, usr, uid, queue, $7::text, $8::text, request, ts, hold FROM new),"
    f" history AS (INSERT INTO transitions ({TRANSITION_COLUMNS})"
    " SELECT new.id, new.ts, s.old, s.new, s.reason FROM new CROSS JOIN"
    f" (VALUES (1, NULL, '{SUBMITTED}', 'submitted'), (2, '{SUBMITTED}', $7::text, $8::text))"
    f" AS s(step, old, new, reason) WHERE s.step = 1 OR $7::text <> '{SUBMITTED}'"
    " ORDER BY new.n, s.step)"
    " SELECT id FROM new ORDER BY n"
)
"""New jobs, SUBMITTED then their state in each one's history, their ids in order."""

NEXT_IDS = "SELECT array_agg(nextval('jobs_id_seq')) FROM generate_series(1, $1::int)"
INSERT_CHILDREN = (
    f"INSERT INTO jobs ({column_list(_NEW_JOB)}, array_parent, array_index, hold)"
    " SELECT c.id, $3::text, $4::text, $5::bigint, $6::text, $7::text, $8::text, '',"
    " $9::float8, $10::bigint, c.idx, $11::text"
    " FROM unnest($1::bigint[], $2::bigint[]) AS c(id, idx)"
)
RECORD = (
    f"INSERT INTO transitions ({TRANSITION_COLUMNS})"
    " SELECT id, $2::float8, $3::text, $4::text, $5::text FROM unnest($1::bigint[]) AS id"
)

MADE = ATTEMPT_FIELDS.index("started")
"""The attempt columns a new attempt row sets (the rest, its outcome, start NULL)."""
START = (
    "WITH moved AS (UPDATE jobs SET state = $1, reason = o.reason, attempt = o.attempt"
    " FROM unnest($3::bigint[], $4::bigint[], $5::text[]) AS o(id, attempt, reason)"
    " WHERE jobs.id = o.id AND jobs.state = $2 RETURNING jobs.id, o.reason),"
    f" history AS (INSERT INTO transitions ({TRANSITION_COLUMNS})"
    " SELECT id, $6::float8, $2::text, $1::text, reason FROM moved),"
    f" made AS (INSERT INTO attempts ({column_list(ATTEMPT_FIELDS[:MADE])})"
    " SELECT * FROM unnest($7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::bigint[],"
    " $12::bigint[], $13::text[], $14::text[], $15::text[], $16::float8[]) AS a(job_id)"
    " WHERE a.job_id IN (SELECT id FROM moved))"
    " SELECT id FROM moved"
)
"""RUNNABLE -> STARTING of each order whose job is still RUNNABLE, with its history row
and its attempt rows; the ids that moved."""

UPDATE_ATTEMPT = (
    "UPDATE attempts SET state = $4, "
    + ", ".join(f"{c} = COALESCE(${n}, {c})" for n, c in enumerate(ATTEMPT_OUTCOME, start=5))
    + " WHERE job_id = $1 AND attempt = $2 AND node = $3"
)
"""One AttemptUpdate: its state, and each outcome field where given (NULL keeps the stored
value, as jobs_sqlite.py's SET lists leave it out). A statement per row, with scalar
parameters: for the few rows of a job's nodes it runs in a third of the time an
`UPDATE ... FROM unnest(...)` of the same rows takes."""

_MOVE = (
    "WITH moved AS (UPDATE jobs SET state = $1, reason = $2, started = COALESCE($3, started),"
    " ended = COALESCE($4, ended), exit_code = COALESCE($5, exit_code)"
    " WHERE id = $6 AND state = $7 RETURNING id),"
    f" history AS (INSERT INTO transitions ({TRANSITION_COLUMNS})"
    " SELECT id, $8::float8, $7::text, $1::text, $2::text FROM moved)"
)
TRANSITION = _MOVE + " SELECT id FROM moved"
"""The compare-and-set of one job and its history row (written only if the job moved);
a row back says it did."""
TRANSITION_AND_ATTEMPT = (
    _MOVE
    + ", done AS (UPDATE attempts SET state = $12, "
    + ", ".join(f"{c} = COALESCE(${n}, {c})" for n, c in enumerate(ATTEMPT_OUTCOME, start=13))
    + " WHERE job_id = $9 AND attempt = $10 AND node = $11 AND EXISTS (SELECT 1 FROM moved))"
    " SELECT id FROM moved"
)
"""TRANSITION with one attempt's update (a one-node job's start or exit), only if it moved."""

BULK_TRANSITION = (
    "WITH moved AS (UPDATE jobs SET state = $1, reason = $2, ended = COALESCE($3, ended)"
    " FROM (SELECT id, state AS old FROM jobs WHERE id = ANY($4::bigint[])"
    " AND state = ANY($5::text[])) AS o"
    " WHERE jobs.id = o.id AND jobs.state = o.old RETURNING jobs.id, o.old),"
    f" history AS (INSERT INTO transitions ({TRANSITION_COLUMNS})"
    " SELECT id, $6::float8, old, $1::text, $2::text FROM moved)"
    " SELECT id, old FROM moved"
)


def _attempt_args(upd: AttemptUpdate) -> tuple[Any, ...]:
    """An AttemptUpdate as UPDATE_ATTEMPT's parameters."""
    outcome = (getattr(upd, column) for column in ATTEMPT_OUTCOME)
    return (upd.job_id, upd.attempt, upd.node, str(upd.state), *outcome)


class PgJobsTable(JobsTable):
    """`JobsTable` with its writes as one PostgreSQL statement each."""

    def __init__(self, db: PgDatabase) -> None:
        super().__init__(db)
        self._pg = db

    async def insert_jobs(
        self, jobs: Sequence[NewJob], state: JobState, reason: str | None
    ) -> list[int]:
        if not jobs:
            return []
        rows = await self._pg.write_one(
            INSERT_JOBS,
            [j.name for j in jobs],
            [j.user for j in jobs],
            [j.uid for j in jobs],
            [j.queue for j in jobs],
            [request_to_json(j.request) for j in jobs],
            [j.submitted for j in jobs],
            str(state),
            reason,
            [j.hold for j in jobs],
        )
        return [int(r[0]) for r in rows]

    async def insert_array(
        self, parent: NewJob, indices: Sequence[int], state: JobState, reason: str | None
    ) -> tuple[int, list[int]]:
        shared = (parent.name, parent.user, parent.uid, parent.queue, str(state), reason)
        ts = parent.submitted

        async def work(conn: asyncpg.Connection) -> tuple[int, list[int]]:
            # Ids drawn first (one round trip for all), so the ids handed back are exactly
            # those written; the rows then come from the arrays, not a tuple per child.
            parent_id, *child_ids = sorted(await conn.fetchval(NEXT_IDS, len(indices) + 1))
            await conn.execute(
                f"INSERT INTO jobs ({column_list(_NEW_JOB)}, array_size)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                parent_id,
                *shared,
                request_to_json(parent.request),
                ts,
                len(indices),
            )
            await conn.execute(
                INSERT_CHILDREN, child_ids, list(indices), *shared, ts, parent_id, parent.hold
            )
            everyone = [parent_id, *child_ids]
            await conn.execute(RECORD, everyone, ts, None, SUBMITTED, "submitted")
            if state != JobState.SUBMITTED:
                await conn.execute(RECORD, everyone, ts, SUBMITTED, str(state), reason)
            return parent_id, child_ids

        return await self._pg.write(work)

    async def start_jobs(self, orders: Sequence[StartOrder], ts: float) -> list[int]:
        if not orders:
            return []
        attempts = [
            new_attempt_row(o.job_id, o.attempt, node, p, ts)[:MADE]
            for o in orders
            for node, p in enumerate(o.placements)
        ]
        rows = await self._pg.write_one(
            START,
            str(JobState.STARTING),
            str(JobState.RUNNABLE),
            [o.job_id for o in orders],
            [o.attempt for o in orders],
            [o.reason for o in orders],
            ts,
            *(list(c) for c in zip(*attempts, strict=True)),
        )
        moved = {int(r[0]) for r in rows}
        return [o.job_id for o in orders if o.job_id in moved]

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
        check_transition(old, new)
        updates = [_attempt_args(u) for u in attempt_updates]
        args = (str(new), reason, started, ended, exit_code, job_id, str(old), ts)
        if len(updates) <= 1:
            sql = TRANSITION_AND_ATTEMPT if updates else TRANSITION
            return bool(await self._pg.write_one(sql, *args, *(updates[0] if updates else ())))

        async def work(conn: asyncpg.Connection) -> bool:
            if not await conn.fetch(TRANSITION, *args):
                return False
            await conn.executemany(UPDATE_ATTEMPT, updates)
            return True

        return await self._pg.write(work)

    async def write_group(self, writes: Sequence[JobWrite]) -> list[bool]:
        """The writes in order on the writer connection, in one transaction: a statement
        per job (and one per extra attempt row), pipelined by asyncpg."""
        steps: list[tuple[tuple[Any, ...], list[tuple[Any, ...]]]] = []
        for w in writes:
            updates = [_attempt_args(u) for u in w.attempts]
            if w.new is None:
                steps.append(((), updates))
                continue
            assert w.old is not None
            check_transition(w.old, w.new)
            args = (str(w.new), w.reason, w.started, w.ended, w.exit_code, w.job_id,
                    str(w.old), w.ts)  # fmt: skip
            steps.append((args, updates))

        async def work(conn: asyncpg.Connection) -> list[bool]:
            out: list[bool] = []
            for args, updates in steps:
                if args and not await conn.fetch(TRANSITION, *args):
                    out.append(False)
                    continue
                if updates:
                    await conn.executemany(UPDATE_ATTEMPT, updates)
                out.append(True)
            return out

        return await self._pg.write(work) if steps else []

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
        for old in olds:
            check_transition(old, new)
        rows = await self._pg.write_one(
            BULK_TRANSITION, str(new), reason, ended, list(job_ids), [str(o) for o in olds], ts
        )
        return [(int(r[0]), JobState(r[1])) for r in rows]

    async def update_attempts(self, updates: Iterable[AttemptUpdate]) -> None:
        pending = [_attempt_args(u) for u in updates]
        if len(pending) == 1:
            await self._pg.write_one(UPDATE_ATTEMPT, *pending[0])
        elif pending:

            async def work(conn: asyncpg.Connection) -> None:
                await conn.executemany(UPDATE_ATTEMPT, pending)  # in order, pipelined

            await self._pg.write(work)
