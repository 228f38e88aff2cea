"""The embedded engine: one SQLite file in WAL mode, reached through aiosqlite.

Everything that depends on the engine rather than on what is stored lives
here: the connection and its settings, the schema migrations, the one writer
(transactions are serialised on one lock, and the hot paths run a whole
transaction in aiosqlite's thread in one hop), a second connection for reads
in its own thread (WAL: a read never waits for a write, nor queues behind
one), the lock file that keeps a
second controller off the store, the translation of engine errors into
`StoreError`, and the few SQL forms that have no standard spelling (a list
passed as one parameter, the length of a stored list). The tables (`jobs`,
`admin`, `definitions`) each take an `engine.Engine` and hold their own SQL;
postgres.py is the other engine.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import aiosqlite

from hpcbatch.store.engine import Rows, StoreError, column_list
from hpcbatch.store.schema import MIGRATIONS, statements

T = TypeVar("T")

SyncMode = Literal["OFF", "NORMAL", "FULL"]

RECLAIM_PAGES = 256
"""Free pages given back to the file system per step after a purge (1 MiB of 4 KiB
pages: a few ms of the writer), the writer released and the loop let run between."""
RECLAIM_PAUSE_S = 0.002
WAL_LIMIT = 32 << 20
"""The WAL file is cut back to this after a checkpoint resets it (a purge, a VACUUM
write the whole store through it once; without a limit it keeps that size)."""


def lock_file(database: Path) -> int:
    """Hold `<database>.lock` (flock) for as long as the returned descriptor is open: one
    controller per store, since a second one would launch every job twice."""
    try:
        # A new state directory is the controller's alone: it holds the store (every
        # job's script and environment) and the log (docs/security.md).
        database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StoreError(f"cannot create {database.parent}: {exc.strerror or exc}") from None
    path = database.with_name(database.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot open the store's lock file {path}: {exc.strerror or exc} "
            "(the controller must be able to write its store's directory)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"another controller is already using the store {database} (lock {path})"
        ) from None
    return fd


def _private_files(path: Path) -> None:
    """The store and its WAL readable by the controller's user only (0600).

    They hold every job's script and environment (secrets passed with `--export`
    included). SQLite creates the -wal and -shm files with the database file's
    mode, so the file is created 0600 before SQLite opens it; files left by an
    older hpcbatch with wider modes are narrowed.
    """
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                os.chmod(file, 0o600)


class _Tx:
    """A transaction's statements on the aiosqlite connection (engine.Tx)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> aiosqlite.Cursor:
        return await self._conn.execute(sql, tuple(parameters))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        await self._conn.executemany(sql, [tuple(r) for r in rows])


class _Snapshot:
    """Reads on the reader connection (engine.Reader), each one hop to its thread (the
    query and its rows together, not aiosqlite's two); in `reading()`, one read
    transaction, begun with the first query (in the same hop)."""

    def __init__(self, conn: aiosqlite.Connection, transaction: bool = False) -> None:
        self._conn = conn
        self._begin = transaction
        self.begun = False

    def _query(self, sql: str, params: tuple[Any, ...], one: bool) -> Any:
        db = self._conn._conn  # runs in aiosqlite's thread, like its own calls
        if self._begin and not self.begun:
            db.execute("BEGIN")
            self.begun = True
        cur = db.execute(sql, params)
        return cur.fetchone() if one else cur.fetchall()

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        run = cast("Callable[..., Awaitable[list[Any]]]", self._conn._execute)
        return await run(self._query, sql, tuple(params), False)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        run = cast("Callable[..., Awaitable[Any]]", self._conn._execute)
        return await run(self._query, sql, tuple(params), True)


class SqliteDatabase:
    """Two connections to the store's file (the writer, and a reader), its schema and its
    writer's lock. Open with `open`."""

    engine = "sqlite"
    INSERTION_ORDER = "rowid"

    EACH = "json_each(?)"
    """A table-valued form of one parameter made by `pack`: a row per item, with
    columns `key` (its position, from 0) and `value` (the item), for bulk
    statements that would otherwise bind a parameter per row."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self.cluster_id = ""
        self.epoch = 0  # the lead taken (store/leader.py); one controller per file anyway
        self._write_lock = asyncio.Lock()
        self._lock_fd: int | None = None
        # Reads: their own connection and thread. One read at a time on it, so a read
        # never lands inside another's read transaction (and sees its older snapshot).
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return str(self.path)

    @classmethod
    async def open(
        cls, path: Path, *, sync: SyncMode = "NORMAL", exclusive: bool = False
    ) -> SqliteDatabase:
        """Open (creating and migrating) the file; `exclusive`: hold its lock file too, or
        refuse if another process (a controller) holds it."""
        lock = lock_file(path) if exclusive else None
        try:
            db = await cls._open(path, sync)
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        db._lock_fd = lock
        return db

    @classmethod
    async def _open(cls, path: Path, sync: SyncMode) -> SqliteDatabase:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_files(path)
        try:
            conn = await aiosqlite.connect(str(path), isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        db = cls(conn, path)
        try:
            await conn.execute("PRAGMA busy_timeout = 5000")
            # Before anything is written: a new file gets its free pages tracked for
            # `reclaim`; an existing file without it takes it at its next VACUUM.
            await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            await conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            mode = await (await conn.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{path}: could not switch the store to WAL mode ({mode})")
            await conn.execute(f"PRAGMA synchronous = {sync}")
            await conn.execute("PRAGMA foreign_keys = ON")
            await db._migrate()
            db._reader = await aiosqlite.connect(str(path), isolation_level=None)
            await db._reader.execute("PRAGMA busy_timeout = 5000")
            await db._reader.execute("PRAGMA query_only = ON")
            db.cluster_id = await db._cluster_id()
        except sqlite3.Error as exc:
            await db._close_connections()
            hint = ""
            if "readonly" in str(exc) or "read-only" in str(exc):
                hint = " (read-only: the controller must write the file and its directory)"
            raise StoreError(f"cannot use the store {path}: {exc}{hint}") from exc
        except BaseException:
            await db._close_connections()
            raise
        return db

    async def _close_connections(self) -> None:
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._conn.close()

    async def close(self) -> None:
        await self._close_connections()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _migrate(self) -> None:
        row = await (await self._conn.execute("PRAGMA user_version")).fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: store schema version {version} is newer than this hpcbatch "
                f"({len(MIGRATIONS)}); upgrade hpcbatch"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            async with self.transaction() as db:
                for sql in statements(migration, "sqlite"):
                    await db.execute(sql)
                await db.execute(f"PRAGMA user_version = {number}")

    async def _cluster_id(self) -> str:
        """A random id made with the store: it namespaces this cluster's files on hosts,
        so two controllers sharing a host login never see each other's attempts."""
        row = await self.fetchone("SELECT value FROM meta WHERE key = 'cluster_id'")
        if row is not None:
            return str(row[0])
        new = uuid.uuid4().hex[:12]
        async with self.transaction() as db:
            await db.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', ?)", (new,))
        return new

    # ------------------------------------------------------------------ reads

    @property
    def _read_conn(self) -> aiosqlite.Connection:
        return self._reader if self._reader is not None else self._conn  # opening: migrations

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """The rows of one query, on the reader connection: what was committed when it
        starts (WAL: it never waits for a write, and its thread never queues behind one)."""
        async with self._read_lock:
            return await _Snapshot(self._read_conn).fetchall(sql, params)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        async with self._read_lock:
            return await _Snapshot(self._read_conn).fetchone(sql, params)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[_Snapshot]:
        """Reads that must agree (a job and its attempts): one read transaction, so one
        snapshot, which no write commits into halfway (a start committed between two
        reads gave 'job N has no attempt 0 node 0'). It holds the reader, not the writer:
        a `show` no longer waits for every queued write."""
        async with self._read_lock:
            snap = _Snapshot(self._read_conn, transaction=True)
            try:
                yield snap
            finally:
                if snap.begun:
                    with suppress(sqlite3.Error):
                        await self._read_conn.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
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
                yield _Tx(self._conn)
                await self._conn.execute("COMMIT")
            except BaseException as exc:
                with suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"{self.path}: write failed, nothing was changed: {exc}"
                    ) from exc
                raise

    async def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` as one write transaction in the database thread: one hop, not one
        per statement. The hot paths (submit, start, exit) use this; it holds the same
        lock as `transaction`, so the two never interleave."""
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

    # ------------------------------------------------------------------ space

    async def _on_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the writer connection in its thread, outside any transaction (a
        pragma that makes its own, VACUUM that refuses to run in one), holding the writer."""
        async with self._write_lock:
            run = cast("Callable[..., Awaitable[T]]", self._conn._execute)
            try:
                return await run(work, self._conn._conn)
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: reclaiming free space failed: {exc}") from exc

    @staticmethod
    def _free_pages(db: sqlite3.Connection, pages: int) -> tuple[int, int, int]:
        """Give up to `pages` free pages back (0: none, just count): (free pages before,
        after, page size). Without auto_vacuum (a file made before it was set) nothing
        is freed, so the caller's loop ends."""
        count = "PRAGMA freelist_count"
        before = int(db.execute(count).fetchone()[0])
        if pages and before:
            # executescript runs the pragma to its end; execute() steps it once (one page).
            db.executescript(f"PRAGMA incremental_vacuum({pages})")
        return (
            before,
            int(db.execute(count).fetchone()[0]),
            int(db.execute("PRAGMA page_size").fetchone()[0]),
        )

    @staticmethod
    def _vacuum(db: sqlite3.Connection) -> None:
        # Also the migration of a file made without auto_vacuum: VACUUM applies it.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")

    async def reclaim(self, tables: Sequence[str], *, full: bool = False) -> int:
        """The file's free pages given back to the file system (engine.Engine.reclaim):
        `RECLAIM_PAGES` at a time with the writer released between steps, or (`full`)
        VACUUM, which rewrites the file holding the writer throughout. The file
        shrinks at the checkpoint that follows (a passive one here: it never waits)."""
        first, _, page = await self._on_writer(lambda db: self._free_pages(db, 0))
        if full:
            await self._on_writer(self._vacuum)
            left = 0
        else:
            left = first
            while left:
                was, left, page = await self._on_writer(
                    lambda db: self._free_pages(db, RECLAIM_PAGES)
                )
                if left >= was:
                    break  # nothing freed: no auto_vacuum on this file (yet)
                await asyncio.sleep(RECLAIM_PAUSE_S)
        await self._on_writer(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        return max(first - left, 0) * page

    # ------------------------------------------------------------------ dialect

    @staticmethod
    def pack(values: Iterable[int]) -> str:
        """A list as the one parameter that `EACH` reads."""
        return json.dumps(list(values))

    @staticmethod
    def list_length(column: str) -> str:
        """SQL for the number of items in a list column (stored as JSON text here)."""
        return f"json_array_length({column})"

    # ------------------------------------------------------------------ copies

    async def table_names(self) -> set[str]:
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {str(r[0]) for r in rows}

    async def replace_all(self, tables: dict[str, Rows]) -> None:
        def work(db: sqlite3.Connection) -> None:
            for table, (columns, rows) in tables.items():
                db.execute(f"DELETE FROM {table}")
                marks = ", ".join("?" * len(columns))
                db.executemany(
                    f"INSERT INTO {table} ({column_list(columns)}) VALUES ({marks})", rows
                )

        await self.write(work)
