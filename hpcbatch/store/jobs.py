"""The jobs, their attempts and their history: the `jobs`, `attempts` and `transitions` tables.

Every state change is a compare-and-set (`UPDATE ... WHERE id=? AND state=?`)
inside one transaction, committed before the controller acts on it, so a crash
at any moment leaves a history the controller can resume from. `JobsTable`
holds the reads and the rarer writes, in SQL both engines run; the hot-path
writes (submit, start, exit, an array's bulk insert, a bulk transition) are
spelled per engine, each one transaction with as few trips as the engine
allows: `SqliteJobsTable` (jobs_sqlite.py) and `PgJobsTable` (jobs_pg.py).
How rows become records is `rows`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import FINAL_STATES, JobState, check_transition
from hpcbatch.store.engine import Engine, Reader, quoted
from hpcbatch.store.rows import (
    ATTEMPT_COLUMNS,
    ATTEMPT_FIELDS,
    JOB_COLUMNS,
    TRANSITION_COLUMNS,
    AttemptUpdate,
    JobWrite,
    NewJob,
    StartOrder,
    Transition,
    attempt_from_row,
    job_from_row,
    request_from_json,
    request_to_json,
    transition_from_row,
)

INSERT_TRANSITION = f"INSERT INTO transitions ({TRANSITION_COLUMNS}) VALUES (?, ?, ?, ?, ?)"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


class JobsTable(ABC):
    """Jobs, attempts and transitions, written only through compare-and-set transactions."""

    def __init__(self, db: Engine) -> None:
        self._db = db
        # Array parents' requests, which never change once inserted: children share them.
        self._parent_requests: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ writes

    @abstractmethod
    async def insert_jobs(
        self, jobs: Sequence[NewJob], state: JobState, reason: str | None
    ) -> list[int]:
        """Insert jobs in one transaction, recording SUBMITTED and then `state`; their ids."""

    @abstractmethod
    async def insert_array(
        self, parent: NewJob, indices: Sequence[int], state: JobState, reason: str | None
    ) -> tuple[int, list[int]]:
        """Insert an array parent and its children in one transaction, in bulk.

        The parent holds the request; children hold only their index. Every row
        records SUBMITTED then `state`. Returns (parent id, child ids in index order).
        """

    @abstractmethod
    async def start_jobs(self, orders: Sequence[StartOrder], ts: float) -> list[int]:
        """RUNNABLE -> STARTING for each order, with its attempt rows; one transaction.

        Returns the ids whose compare-and-set succeeded (a job cancelled meanwhile is skipped).
        """

    @abstractmethod
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

        Sets `started`, `ended`, `exit_code` where given. Returns False, changing
        nothing, if the job is no longer in `old`.
        """

    @abstractmethod
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

        The compare-and-set is one UPDATE per old state over the whole id list,
        returning the ids that really moved, so a 10,000-child array is
        cancelled or released in a few statements. Returns (id, old state) pairs.
        """

    @abstractmethod
    async def update_attempts(self, updates: Iterable[AttemptUpdate]) -> None:
        """Apply attempt updates in order, in one transaction (a field left None is kept)."""

    @abstractmethod
    async def write_group(self, writes: Sequence[JobWrite]) -> list[bool]:
        """Many jobs' changes in order, in one transaction (a group commit): each a
        compare-and-set as `transition` makes it (its history row and attempt updates
        written only if the job moved), or attempt updates alone. One result per write:
        False where the job was no longer in `old` and that write changed nothing."""

    async def control(
        self,
        job_id: int,
        old: JobState,
        new: JobState,
        reason: str | None,
        hold: str | None,
        request: dict[str, Any] | None,
        name: str,
        queue: str,
        ts: float,
        *,
        reopen: bool = False,
    ) -> bool:
        """A job-control change (hold, release, update) as one compare-and-set on the
        state: the hold, the reason, a new state (recorded as a transition when it
        changes) and, for an update, the request with its name and queue. Portable
        SQL on the engine's transaction, as `set_summary_state`. `reopen`: a finished
        job requeued (its end and exit code cleared; its attempts and history kept)."""
        if new != old:
            check_transition(old, new)
        sets, params = "state = ?, reason = ?, hold = ?", [str(new), reason, hold]
        if reopen:
            sets += ", ended = NULL, exit_code = NULL"
        if request is not None:
            self._parent_requests.pop(job_id, None)  # an array's (updated throttle)
            sets += ", request = ?, name = ?, queue = ?"
            params += [request_to_json(request), name, queue]
        async with self._db.transaction() as db:
            cur = await db.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND state = ?", [*params, job_id, str(old)]
            )
            if cur.rowcount != 1:
                return False
            if new != old:
                await db.execute(INSERT_TRANSITION, (job_id, ts, str(old), str(new), reason))
            return True

    async def set_summary_state(
        self, job_id: int, new: JobState, reason: str | None, ts: float, *, ended: float | None
    ) -> None:
        """Record an array parent's state, which summarises its children.

        Not checked against the transition table: a parent's state is derived
        (see `core.arrays`), not driven, so it may go from PENDING straight to
        RUNNING or FAILED; the change is still recorded in the history.
        """
        async with self._db.transaction() as db:
            cur = await db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,))
            row = await cur.fetchone()
            if row is None or row[0] == str(new):
                return
            await db.execute(
                "UPDATE jobs SET state = ?, reason = ?, ended = ?,"
                " started = COALESCE(started, ?) WHERE id = ?",
                (str(new), reason, ended, ts if new == JobState.RUNNING else None, job_id),
            )
            await db.execute(INSERT_TRANSITION, (job_id, ts, row[0], str(new), reason))

    # ------------------------------------------------------------------ reads

    async def usage_rows(self, since: float) -> list[tuple[str, int, int, float, float | None]]:
        """(share, cpus, gpus, started, ended) of attempts that ran after `since`: fair share.

        `share` is the job's fair-share identifier (`share_id`, from its request or
        its array parent's), or its user.
        """
        rows = await self._db.fetchall(
            f'SELECT j."user", a.cpus, {self._db.list_length("a.gpus")}, a.started, a.ended,'
            " COALESCE(NULLIF(j.request, ''), p.request)"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id"
            " LEFT JOIN jobs p ON p.id = j.array_parent"
            " WHERE a.started IS NOT NULL AND (a.ended IS NULL OR a.ended > ?)",
            (since,),
        )
        return [(_share(r[0], r[5]), int(r[1]), int(r[2]), float(r[3]), r[4]) for r in rows]

    async def load_active(self) -> list[JobRecord]:
        """Every job not in a final state, with the attempt rows of its current attempt."""
        finals = tuple(str(s) for s in FINAL_STATES)
        attempt_columns = ", ".join(f"a.{c}" for c in ATTEMPT_FIELDS)
        async with self._db.reading() as db:
            rows = await db.fetchall(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE state NOT IN ({_marks(finals)}) ORDER BY id",
                finals,
            )
            jobs = [job_from_row(r) for r in rows]
            rows = await db.fetchall(
                f"SELECT {attempt_columns} FROM attempts a JOIN jobs j"
                " ON a.job_id = j.id AND a.attempt = j.attempt"
                f" WHERE j.state NOT IN ({_marks(finals)}) ORDER BY a.job_id, a.node",
                finals,
            )
        by_id = {j.id: j for j in jobs}
        for row in rows:
            by_id[row[0]].attempts.append(attempt_from_row(row))
        await self._inherit(jobs)
        return jobs

    async def get_job(self, job_id: int) -> JobRecord | None:
        async with self._db.reading() as db:
            row = await db.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                return None
            job = job_from_row(row)
            rows = await db.fetchall(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? ORDER BY attempt, node",
                (job_id,),
            )
        job.attempts = [attempt_from_row(r) for r in rows]
        await self._inherit([job])
        return job

    async def transitions(self, job_id: int) -> list[Transition]:
        rows = await self._db.fetchall(
            f"SELECT {TRANSITION_COLUMNS} FROM transitions WHERE job_id = ?"
            f" ORDER BY {self._db.INSERTION_ORDER}",
            (job_id,),
        )
        return [transition_from_row(r) for r in rows]

    async def list_jobs(
        self,
        *,
        states: Sequence[str] = (),
        user: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        ids: Sequence[int] = (),
        array_parents: Sequence[int] = (),
        limit: int = 10_000,
    ) -> list[JobRecord]:
        where: list[str] = []
        params: list[Any] = []
        for column, values in (("state", states), ("id", ids), ("array_parent", array_parents)):
            if values:
                where.append(f"{column} IN ({_marks(values)})")
                params += list(values)
        for column, value in (("user", user), ("queue", queue), ("name", name)):
            if value is not None:
                where.append(f"{quoted(column)} = ?")
                params.append(value)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        async with self._db.reading() as db:
            jobs = [job_from_row(r) for r in await db.fetchall(sql, params)]
            jobs.reverse()
            await self._attach_current_attempts(db, jobs)
        await self._inherit(jobs)
        return jobs

    async def acct_jobs(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        states: Sequence[str] = (),
        user: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 100_000,
    ) -> list[JobRecord]:
        """Finished jobs that were in the system between `start` and `end` (ended at or
        after `start`, submitted by `end`), oldest end first, with their current
        attempt's rows (usage included): `acct`. Uses the (user, ended) index."""
        where = ["ended IS NOT NULL"]
        params: list[Any] = []
        if start is not None:
            where.append("ended >= ?")
            params.append(start)
        if end is not None:
            where.append("submitted <= ?")
            params.append(end)
        for column, values in (("state", states), ("id", ids)):
            if values:
                where.append(f"{column} IN ({_marks(values)})")
                params += list(values)
        for column, value in (("user", user), ("queue", queue), ("name", name)):
            if value is not None:
                where.append(f"{quoted(column)} = ?")
                params.append(value)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY ended, id"
        async with self._db.reading() as db:
            jobs = [job_from_row(r) for r in await db.fetchall(sql + " LIMIT ?", [*params, limit])]
            await self._attach_current_attempts(db, jobs)
        await self._inherit(jobs)
        return jobs

    async def _attach_current_attempts(self, db: Reader, jobs: Sequence[JobRecord]) -> None:
        """Load each job's current attempt rows (where it ran), a few queries in all."""
        by_id = {j.id: j for j in jobs if j.attempt}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await db.fetchall(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id IN ({_marks(chunk)})"
                " ORDER BY job_id, node",
                chunk,
            )
            for row in rows:
                job = by_id[row[0]]
                if row[1] == job.attempt:
                    job.attempts.append(attempt_from_row(row))

    async def _inherit(self, jobs: Iterable[JobRecord]) -> None:
        """Give array children their parent's request (one shared dict per parent)."""
        children = [j for j in jobs if j.array_parent is not None and not j.request]
        if not children:
            return
        for j in jobs:
            if j.is_array_parent and j.id not in self._parent_requests:
                self._parent_requests[j.id] = j.request
        parents = {c.array_parent for c in children if c.array_parent is not None}
        missing = sorted(parents - self._parent_requests.keys())
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            rows = await self._db.fetchall(
                f"SELECT id, request FROM jobs WHERE id IN ({_marks(chunk)})", chunk
            )
            for job_id, text in rows:
                self._parent_requests[int(job_id)] = request_from_json(text)
        if len(self._parent_requests) > 4096:
            keep = {c.array_parent for c in children}
            self._parent_requests = {k: v for k, v in self._parent_requests.items() if k in keep}
        for c in children:
            assert c.array_parent is not None
            c.request = self._parent_requests.get(c.array_parent, {})


def _share(user: str, request: str | None) -> str:
    """The fair-share identifier of a stored request: its `share_id`, else the user."""
    if not request or '"share_id"' not in request:
        return user
    share = request_from_json(request).get("share_id")
    return share if isinstance(share, str) and share else user
