"""The controller's durable state: SQLite on disk in WAL mode, through aiosqlite.

The store package (this module, `definitions` and `admin`) is the only code
that speaks SQL. Every state change goes through a compare-and-set (`UPDATE
... WHERE id=? AND state=?`) inside a transaction and is committed before the
controller acts on it, so a crash at any moment leaves a history the
controller can resume from.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import aiosqlite

from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord
from hpcbatch.core.states import FINAL_STATES, JobState, check_transition
from hpcbatch.store.admin import AdminStates
from hpcbatch.store.definitions import Definitions
from hpcbatch.store.rows import (
    ATTEMPT_COLUMNS,
    JOB_COLUMNS,
    AttemptUpdate,
    NewJob,
    StartOrder,
    Transition,
    attempt_from_row,
    job_from_row,
)
from hpcbatch.store.schema import MIGRATIONS


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message says why in plain words."""


T = TypeVar("T")
INSERT_TRANSITION = "INSERT INTO transitions (job_id, ts, old, new, reason) VALUES (?, ?, ?, ?, ?)"

__all__ = [
    "AttemptUpdate",
    "NewJob",
    "StartOrder",
    "Store",
    "StoreError",
    "SyncMode",
    "Transition",
]

SyncMode = Literal["OFF", "NORMAL", "FULL"]


class Store:
    """Async access to the jobs, attempts and hosts tables. Open with `Store.open`."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.cluster_id = ""
        self._write_lock = asyncio.Lock()
        self.definitions = Definitions(self)
        self.admin = AdminStates(self)
        # Array parents' requests, which never change once inserted: children share them.
        self._parent_requests: dict[int, dict[str, Any]] = {}

    async def _cluster_id(self) -> str:
        """A random id made with the store: it namespaces this cluster's files on hosts,
        so two controllers sharing a host login never see each other's attempts."""
        cur = await self._conn.execute("SELECT value FROM meta WHERE key = 'cluster_id'")
        row = await cur.fetchone()
        if row is not None:
            return str(row[0])
        new = uuid.uuid4().hex[:12]
        async with self._tx() as db:
            await db.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', ?)", (new,))
        return new

    @classmethod
    async def open(cls, path: Path, *, sync: SyncMode = "NORMAL") -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        store = cls(conn, path)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            mode = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{path}: could not switch the store to WAL mode ({mode})")
            await conn.execute(f"PRAGMA synchronous = {sync}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await store._migrate()
            store.cluster_id = await store._cluster_id()
        except sqlite3.Error as exc:
            await conn.close()
            hint = ""
            if "readonly" in str(exc) or "read-only" in str(exc):
                hint = " (read-only: the controller must write the file and its directory)"
            raise StoreError(f"cannot use the store {path}: {exc}{hint}") from exc
        except BaseException:
            await conn.close()
            raise
        return store

    async def close(self) -> None:
        await self._conn.close()

    async def _migrate(self) -> None:
        row = await (await self._conn.execute("PRAGMA user_version")).fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this hpcbatch "
                f"({len(MIGRATIONS)}); upgrade hpcbatch"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            async with self._tx() as db:
                for sql in statements:
                    await db.execute(sql)
                await db.execute(f"PRAGMA user_version = {number}")

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any error, which is re-raised as StoreError.

        Transactions are serialised here: callers in different tasks share one
        connection, and SQLite has one transaction per connection.
        """
        async with self._write_lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot start a write: {exc}") from exc
            try:
                yield self._conn
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"{self.path}: write failed, nothing was changed: {exc}"
                    ) from exc
                raise

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` as one write transaction in the database thread: one hop, not one
        per statement. The hot paths (submit, start, exit) use this; it holds the same
        lock as `_tx`, so the two never interleave."""
        async with self._write_lock:
            # aiosqlite's queue to its thread (untyped, private but stable for years).
            run = cast("Callable[..., Awaitable[T]]", self._conn._execute)
            return await run(self._in_tx, work)

    def _in_tx(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn._conn  # runs in aiosqlite's thread, like its own calls
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot start a write: {exc}") from exc
        try:
            result = work(conn)
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: write failed, nothing was changed: {exc}") from exc
            raise

    # ------------------------------------------------------------------ jobs

    async def insert_jobs(
        self, jobs: Sequence[NewJob], state: JobState, reason: str | None
    ) -> list[int]:
        """Insert jobs in one transaction, recording SUBMITTED and then `state`."""

        def work(db: sqlite3.Connection) -> list[int]:
            ids: list[int] = []
            for job in jobs:
                cur = db.execute(
                    "INSERT INTO jobs (name, user, uid, queue, state, reason, request, submitted)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job.name,
                        job.user,
                        job.uid,
                        job.queue,
                        str(state),
                        reason,
                        json.dumps(job.request, separators=(",", ":")),
                        job.submitted,
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

        return await self._write(work)

    async def insert_array(
        self, parent: NewJob, indices: Sequence[int], state: JobState, reason: str | None
    ) -> tuple[int, list[int]]:
        """Insert an array parent and its children in one transaction, in bulk.

        The parent holds the request; children hold only their index. Every row
        records SUBMITTED then `state`. Returns (parent id, child ids in index order).
        """

        shared = (parent.name, parent.user, parent.uid, parent.queue, str(state), reason)

        def work(db: sqlite3.Connection) -> tuple[int, list[int]]:
            cur = db.execute(
                "INSERT INTO jobs (name, user, uid, queue, state, reason, request, submitted,"
                " array_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *shared,
                    json.dumps(parent.request, separators=(",", ":")),
                    parent.submitted,
                    len(indices),
                ),
            )
            assert cur.lastrowid is not None
            parent_id = cur.lastrowid
            # The parent took the highest id, and this transaction holds the write lock:
            # the ids above it are free, so the children get them explicitly. Rows are
            # made by SQLite from a JSON list of the indices, and the transitions from
            # the rows just written: no Python tuple per row (10,000 children and their
            # 20,000 transitions: 58 -> 25 ms).
            last = parent_id + len(indices)
            db.execute(
                "INSERT INTO jobs (id, name, user, uid, queue, state, reason, request, submitted,"
                " array_parent, array_index)"
                " SELECT ? + 1 + key, ?, ?, ?, ?, ?, ?, '', ?, ?, value FROM json_each(?)",
                (parent_id, *shared, parent.submitted, parent_id, json.dumps(list(indices))),
            )
            ts = parent.submitted
            submitted = str(JobState.SUBMITTED)
            between = "FROM jobs WHERE id BETWEEN ? AND ? ORDER BY id"
            db.execute(
                "INSERT INTO transitions (job_id, ts, old, new, reason)"
                f" SELECT id, ?, NULL, ?, 'submitted' {between}",
                (ts, submitted, parent_id, last),
            )
            if state != JobState.SUBMITTED:
                db.execute(
                    "INSERT INTO transitions (job_id, ts, old, new, reason)"
                    f" SELECT id, ?, ?, ?, ? {between}",
                    (ts, submitted, str(state), reason, parent_id, last),
                )
            child_ids = list(range(parent_id + 1, last + 1))
            return parent_id, child_ids

        return await self._write(work)

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
            cur = await self._conn.execute(
                f"SELECT id, request FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
            for job_id, text in await cur.fetchall():
                self._parent_requests[int(job_id)] = json.loads(text)
        if len(self._parent_requests) > 4096:
            keep = {c.array_parent for c in children}
            self._parent_requests = {k: v for k, v in self._parent_requests.items() if k in keep}
        for c in children:
            assert c.array_parent is not None
            c.request = self._parent_requests.get(c.array_parent, {})

    async def start_jobs(self, orders: Sequence[StartOrder], ts: float) -> list[int]:
        """RUNNABLE -> STARTING for each order, with its attempt rows; one transaction.

        Returns the ids whose compare-and-set succeeded (a job cancelled meanwhile is skipped).
        """

        def work(db: sqlite3.Connection) -> list[int]:
            started: list[int] = []
            attempts: list[tuple[Any, ...]] = []
            transitions: list[tuple[Any, ...]] = []
            for order in orders:
                cur = db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, attempt = ? WHERE id = ? AND state = ?",
                    (
                        str(JobState.STARTING),
                        order.reason,
                        order.attempt,
                        order.job_id,
                        str(JobState.RUNNABLE),
                    ),
                )
                if cur.rowcount != 1:
                    continue
                started.append(order.job_id)
                transitions.append(
                    (
                        order.job_id,
                        ts,
                        str(JobState.RUNNABLE),
                        str(JobState.STARTING),
                        order.reason,
                    )
                )
                attempts += [
                    (
                        order.job_id,
                        order.attempt,
                        node,
                        p.host,
                        p.cpus,
                        p.memory_mb,
                        json.dumps(list(p.gpus)),
                        str(AttemptState.STARTING),
                        ts,
                    )
                    for node, p in enumerate(order.placements)
                ]
            db.executemany(INSERT_TRANSITION, transitions)
            db.executemany(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
                attempts,
            )
            return started

        return await self._write(work)

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
        sets = ["state = ?", "reason = ?"]
        params: list[Any] = [str(new), reason]
        if started is not None:
            sets.append("started = ?")
            params.append(started)
        if ended is not None:
            sets.append("ended = ?")
            params.append(ended)
        if exit_code is not None:
            sets.append("exit_code = ?")
            params.append(exit_code)
        params += [job_id, str(old)]
        updates = list(attempt_updates)

        def work(db: sqlite3.Connection) -> bool:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ?", params
            )
            if cur.rowcount != 1:
                return False
            db.execute(INSERT_TRANSITION, (job_id, ts, str(old), str(new), reason))
            for upd in updates:
                upd.apply(db)
            return True

        return await self._write(work)

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
        ids = json.dumps(list(job_ids))
        for old in olds:
            check_transition(old, new)

        def work(db: sqlite3.Connection) -> list[tuple[int, JobState]]:
            moved: list[tuple[int, JobState]] = []
            for old in olds:
                cur = db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, ended = COALESCE(?, ended)"
                    " WHERE id IN (SELECT value FROM json_each(?)) AND state = ? RETURNING id",
                    (str(new), reason, ended, ids, str(old)),
                )
                moved += [(int(r[0]), old) for r in cur.fetchall()]
            db.executemany(
                INSERT_TRANSITION,
                [(job_id, ts, str(old), str(new), reason) for job_id, old in moved],
            )
            return moved

        return await self._write(work)

    async def set_summary_state(
        self, job_id: int, new: JobState, reason: str | None, ts: float, *, ended: float | None
    ) -> None:
        """Record an array parent's state, which summarises its children.

        Not checked against the transition table: a parent's state is derived
        (see `core.arrays`), not driven, so it may go from PENDING straight to
        RUNNING or FAILED; the change is still recorded in the history.
        """
        async with self._tx() as db:
            cur = await db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,))
            row = await cur.fetchone()
            if row is None or row[0] == str(new):
                return
            await db.execute(
                "UPDATE jobs SET state = ?, reason = ?, ended = ?,"
                " started = COALESCE(started, ?) WHERE id = ?",
                (str(new), reason, ended, ts if new == JobState.RUNNING else None, job_id),
            )
            await db.execute(
                "INSERT INTO transitions (job_id, ts, old, new, reason) VALUES (?, ?, ?, ?, ?)",
                (job_id, ts, row[0], str(new), reason),
            )

    async def usage_rows(self, since: float) -> list[tuple[str, int, int, float, float | None]]:
        """(user, cpus, gpus, started, ended) of attempts that ran after `since`: fair share."""
        cur = await self._conn.execute(
            "SELECT j.user, a.cpus, json_array_length(a.gpus), a.started, a.ended FROM attempts a"
            " JOIN jobs j ON j.id = a.job_id"
            " WHERE a.started IS NOT NULL AND (a.ended IS NULL OR a.ended > ?)",
            (since,),
        )
        return [(r[0], int(r[1]), int(r[2]), float(r[3]), r[4]) for r in await cur.fetchall()]

    async def update_attempts(self, updates: Iterable[AttemptUpdate]) -> None:
        pending = list(updates)

        def work(db: sqlite3.Connection) -> None:
            for upd in pending:
                upd.apply(db)

        await self._write(work)

    async def load_active(self) -> list[JobRecord]:
        """Every job not in a final state, with the attempt rows of its current attempt."""
        finals = tuple(str(s) for s in FINAL_STATES)
        cur = await self._conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state NOT IN (?, ?) ORDER BY id", finals
        )
        jobs = [job_from_row(r) for r in await cur.fetchall()]
        by_id = {j.id: j for j in jobs}
        cur = await self._conn.execute(
            f"SELECT a.{ATTEMPT_COLUMNS.replace(', ', ', a.')} FROM attempts a JOIN jobs j"
            " ON a.job_id = j.id AND a.attempt = j.attempt WHERE j.state NOT IN (?, ?)"
            " ORDER BY a.job_id, a.node",
            finals,
        )
        for row in await cur.fetchall():
            by_id[row[0]].attempts.append(attempt_from_row(row))
        await self._inherit(jobs)
        return jobs

    async def get_job(self, job_id: int) -> JobRecord | None:
        cur = await self._conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        job = job_from_row(row)
        cur = await self._conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? ORDER BY attempt, node",
            (job_id,),
        )
        job.attempts = [attempt_from_row(r) for r in await cur.fetchall()]
        await self._inherit([job])
        return job

    async def transitions(self, job_id: int) -> list[Transition]:
        cur = await self._conn.execute(
            "SELECT job_id, ts, old, new, reason FROM transitions WHERE job_id = ? ORDER BY rowid",
            (job_id,),
        )
        return [Transition(*r) for r in await cur.fetchall()]

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
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        for column, value in (("user", user), ("queue", queue), ("name", name)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        cur = await self._conn.execute(sql, params)
        jobs = [job_from_row(r) for r in await cur.fetchall()]
        jobs.reverse()
        await self._attach_current_attempts(jobs)
        await self._inherit(jobs)
        return jobs

    async def _attach_current_attempts(self, jobs: Sequence[JobRecord]) -> None:
        """Load each job's current attempt rows (where it ran), a few queries in all."""
        by_id = {j.id: j for j in jobs if j.attempt}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            cur = await self._conn.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY job_id, node",
                chunk,
            )
            for row in await cur.fetchall():
                job = by_id[row[0]]
                if row[1] == job.attempt:
                    job.attempts.append(attempt_from_row(row))

    async def live_attempts_on(self, host: str) -> list[AttemptRecord]:
        """Attempts on `host` the controller still counts as starting or running."""
        cur = await self._conn.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE host = ? AND state IN (?, ?)",
            (host, str(AttemptState.STARTING), str(AttemptState.RUNNING)),
        )
        return [attempt_from_row(r) for r in await cur.fetchall()]
