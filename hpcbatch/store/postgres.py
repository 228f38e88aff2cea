"""The server engine: a PostgreSQL database reached through asyncpg.

The same interface as the SQLite engine (engine.Engine): one writer
connection, on which every write transaction runs in turn under one lock (a
transaction per intent, as on SQLite), and a small pool of reader connections
so that reads never wait behind a write. The tables' `?` placeholders become
`$1, $2, ...` here. The schema is the same migrations (schema.py) with their
PostgreSQL spelling, versioned in the `hpcbatch_schema` table and applied
under an advisory lock, so two processes opening one database never both
migrate it. `exclusive` holds a session advisory lock on the writer
connection for as long as the store is open: one controller per database
schema, released by the server when the controller's connection ends,
however it ends. That session lock is the fence of active/standby: every
write runs on the connection that holds it, a write on a new connection
takes it first or is refused, and a standby (`standby=True`) waits for it.
The writer session also carries a lease: `idle_session_timeout` and
`idle_in_transaction_session_timeout` make the server end it (releasing the
lock) when the controller stays silent for LEASE_S, as a paused (SIGSTOP) or
hung controller does, between transactions or inside one; a heartbeat keeps a
live controller's session busy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import lru_cache
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from hpcbatch.store.engine import Rows, StoreError, lost_the_lead
from hpcbatch.store.leader import EPOCH_KEY, standby_row
from hpcbatch.store.schema import MIGRATIONS, statements
from hpcbatch.store.url import redact

T = TypeVar("T")
log = logging.getLogger(__name__)


ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
"""What asyncpg raises when the server refuses a statement or the connection fails."""

STORE_LOCK = "SELECT pg_try_advisory_lock(hashtext('hpcbatch.store:' || current_schema()))"
LEASE_S = 5.0
"""A controller silent this long loses the store's lock (idle_session_timeout)."""
HEARTBEAT_S = 1.0
STANDBY_POLL_S = 0.5
STANDBY_SAY_S = 2.0
"""How often a waiting standby writes its sign of life (store/leader.py)."""
MIGRATE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('hpcbatch.migrate:' || current_schema()))"
SEQUENCES = (("jobs", "id"), ("transitions", "seq"))
"""The serial columns: after a copy, each continues above the highest copied value."""


@lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...` (the tables' SQL has no literal `?`)."""
    parts = sql.split("?")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], start=1):
        out += [f"${n}", part]
    return "".join(out)


@lru_cache(maxsize=1024)
def _returns_rows(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head in ("SELECT", "VALUES") or head.startswith("WITH") or "RETURNING" in sql.upper()


def _rowcount(status: str) -> int:
    """The row count of a command tag: 'UPDATE 3', 'INSERT 0 1', 'DELETE 2'."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Cursor:
    def __init__(self, rows: list[asyncpg.Record], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    async def fetchone(self) -> asyncpg.Record | None:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[asyncpg.Record]:
        return self._rows


class _Tx:
    """A transaction's statements on the writer connection (engine.Tx)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> _Cursor:
        query, args = numbered(sql), tuple(parameters)
        if _returns_rows(sql):
            rows = await self._conn.fetch(query, *args)
            return _Cursor(rows, len(rows))
        return _Cursor([], _rowcount(await self._conn.execute(query, *args)))

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        batch = [tuple(r) for r in rows]
        if batch:
            await self._conn.executemany(numbered(sql), batch)


class _Snapshot:
    """Reads on one reader connection inside one REPEATABLE READ transaction (engine.Reader)."""

    def __init__(self, conn: PoolConnectionProxy, where: str) -> None:
        self._conn = conn
        self._where = where

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return list(await self._conn.fetch(numbered(sql), *params))
        except ERRORS as exc:
            raise StoreError(f"{self._where}: read failed: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        try:
            return await self._conn.fetchrow(numbered(sql), *params)
        except ERRORS as exc:
            raise StoreError(f"{self._where}: read failed: {exc}") from exc


class PgDatabase:
    """One PostgreSQL database: its schema, its writer, its readers. Open with `open`."""

    engine = "postgresql"
    INSERTION_ORDER = "seq"

    def __init__(self, dsn: str, writer: asyncpg.Connection, exclusive: bool) -> None:
        self._dsn = dsn
        self._writer = writer
        self._exclusive = exclusive
        self._heartbeat: asyncio.Task[None] | None = None
        self.on_lost: Callable[[str], None] = lost_the_lead
        self._readers: asyncpg.Pool | None = None
        self._write_lock = asyncio.Lock()
        self.cluster_id = ""
        self.epoch = 0  # the lead taken (store/leader.py): a reconnect must find it unchanged
        self._closed = False

    @property
    def where(self) -> str:
        return redact(self._dsn)

    @classmethod
    async def open(cls, dsn: str, *, exclusive: bool = False, standby: bool = False) -> PgDatabase:
        """Connect, migrate, and open the readers; `exclusive`: hold the store's lock too,
        or refuse if another process (a controller) holds it; `standby`: wait for it."""
        writer = await cls._connect(dsn)
        db = cls(dsn, writer, exclusive)
        try:
            if exclusive:
                await db._take_lock(writer, wait=standby)
                db._heartbeat = asyncio.get_running_loop().create_task(db._beat())
            await db._migrate()
            db._readers = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
            db.cluster_id = await db._cluster_id()
        except ERRORS as exc:
            await db.close()
            raise StoreError(f"cannot use the store {db.where}: {exc}") from exc
        except BaseException:
            await db.close()
            raise
        return db

    @staticmethod
    async def _connect(dsn: str) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(dsn)
        except (*ERRORS, ValueError) as exc:
            raise StoreError(f"cannot connect to the store {redact(dsn)}: {exc}") from exc

    async def _take_lock(self, conn: asyncpg.Connection, wait: bool = False) -> None:
        waiting, said = False, 0.0
        while not await conn.fetchval(STORE_LOCK):
            if not wait:
                raise StoreError(f"another controller is already using the store {self.where}")
            if not waiting:
                log.warning("standby: another controller holds the store %s; waiting", self.where)
                waiting = True
            if time.time() - said >= STANDBY_SAY_S:
                said = time.time()
                await self._say_standby(conn, said)
            await asyncio.sleep(STANDBY_POLL_S)
        if waiting:
            log.warning("standby: took the store %s: this controller is now active", self.where)
        # The lease holds in a transaction too: a controller paused between two
        # statements of a write (idle in transaction, which idle_session_timeout does
        # not cover) would otherwise keep the lock, and every standby waiting, forever.
        lease_ms = int(LEASE_S * 1000)
        await conn.execute(f"SET idle_session_timeout = {lease_ms}")
        await conn.execute(f"SET idle_in_transaction_session_timeout = {lease_ms}")

    @staticmethod
    async def _say_standby(conn: asyncpg.Connection, now: float) -> None:
        """A waiting standby's sign of life, for `hpcbatch status` (store/leader.py). It
        writes only its own row, outside the lock: it leads nothing."""
        key, value = standby_row(socket.gethostname(), os.getpid(), now)
        with suppress(*ERRORS):  # no meta table yet: the active one has not migrated
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )

    async def _beat(self) -> None:
        """Keep the writer session (and its lock) alive; if it ended, take it again at
        once, or, if another controller has it meanwhile, stop: the lead is lost."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with self._write_lock:
                    conn = await self._writer_up()
                    await conn.execute("SELECT 1")
            except (StoreError, *ERRORS):
                # The session ended or the server is away: the next beat connects again.
                # (Finding the lock taken by another calls on_lost in _writer_up.)
                continue

    async def close(self) -> None:
        self._closed = True  # a write after this is refused, never made on a new connection
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._readers is not None:
            await self._readers.close()
            self._readers = None
        with suppress(*ERRORS):
            await self._writer.close()

    async def _migrate(self) -> None:
        async with self._tx() as conn:
            await conn.execute(MIGRATE_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS hpcbatch_schema (version INTEGER)")
            version = int(await conn.fetchval("SELECT max(version) FROM hpcbatch_schema") or 0)
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.where}: store schema version {version} is newer than this hpcbatch "
                    f"({len(MIGRATIONS)}); upgrade hpcbatch"
                )
            if version == len(MIGRATIONS):
                return
            for migration in MIGRATIONS[version:]:
                for sql in statements(migration, "postgresql"):
                    await conn.execute(sql)
            await conn.execute("DELETE FROM hpcbatch_schema")
            await conn.execute("INSERT INTO hpcbatch_schema VALUES ($1)", len(MIGRATIONS))

    async def _cluster_id(self) -> str:
        """A random id made with the store: it namespaces this cluster's files on hosts."""
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('cluster_id', $1) ON CONFLICT DO NOTHING",
                uuid.uuid4().hex[:12],
            )
            return str(await conn.fetchval("SELECT value FROM meta WHERE key = 'cluster_id'"))

    # ------------------------------------------------------------------ reads

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        """The rows of one query on a reader connection (never behind a write)."""
        assert self._readers is not None, "the store is closed"
        try:
            return list(await self._readers.fetch(numbered(sql), *params))
        except ERRORS as exc:
            raise StoreError(f"{self.where}: read failed: {exc}") from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None:
        assert self._readers is not None, "the store is closed"
        try:
            return await self._readers.fetchrow(numbered(sql), *params)
        except ERRORS as exc:
            raise StoreError(f"{self.where}: read failed: {exc}") from exc

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[_Snapshot]:
        """Reads that must agree, in one snapshot: a job read before a write commits and
        its attempts read after it would not match (each read alone is its own snapshot)."""
        assert self._readers is not None, "the store is closed"
        try:
            async with (
                self._readers.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                yield _Snapshot(conn, self.where)
        except ERRORS as exc:
            raise StoreError(f"{self.where}: read failed: {exc}") from exc

    # ------------------------------------------------------------------ writes

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction on the writer connection; engine errors become StoreError."""
        async with self._write_lock:
            conn = await self._writer_up()
            tx = conn.transaction()
            try:
                await tx.start()
            except ERRORS as exc:
                raise StoreError(f"{self.where}: cannot start a write: {exc}") from exc
            try:
                yield conn
            except BaseException as exc:
                with suppress(*ERRORS):
                    await tx.rollback()
                if isinstance(exc, ERRORS):
                    raise StoreError(
                        f"{self.where}: write failed, nothing was changed: {exc}"
                    ) from exc
                raise
            try:
                await tx.commit()
            except ERRORS as exc:
                raise self._commit_failed(exc) from exc

    def _commit_failed(self, exc: BaseException) -> StoreError:
        if isinstance(exc, asyncpg.PostgresError):  # the server refused: rolled back
            return StoreError(f"{self.where}: write failed, nothing was changed: {exc}")
        return StoreError(
            f"{self.where}: the connection failed at commit ({exc}): "
            "the write may or may not have been applied"
        )

    async def write_one(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement, which PostgreSQL makes its own transaction: one round trip to the
        server where BEGIN ... COMMIT around it would take three. The hot paths are each
        one statement (their data-modifying WITH clauses commit or fail together)."""
        async with self._write_lock:
            conn = await self._writer_up()
            try:
                return await conn.fetch(sql, *args)
            except ERRORS as exc:
                raise self._commit_failed(exc) from exc

    async def _writer_up(self) -> asyncpg.Connection:
        """The writer connection, made again if the server dropped it. A controller's lock
        went with the old connection: it must be taken again, or the write refused and the
        lead is lost (a new connection without the lock is never used for a write)."""
        if self._closed:
            # What still runs of a stopped controller (a timer, a task) must not reconnect:
            # another controller may lead the store by now.
            raise StoreError(f"{self.where}: the store is closed")
        if not self._writer.is_closed():
            return self._writer
        conn = await self._connect(self._dsn)
        if self._exclusive:
            why = ""
            try:
                await self._take_lock(conn)
                stored = await conn.fetchval("SELECT value FROM meta WHERE key = $1", EPOCH_KEY)
                if self.epoch and stored is not None and int(stored) != self.epoch:
                    why = (
                        f"{self.where}: the connection to the store was lost, and another "
                        f"controller led meanwhile (epoch {stored}, this one's {self.epoch})"
                    )
            except StoreError:
                why = (
                    f"{self.where}: the connection to the store was lost, and another "
                    "controller took the store meanwhile"
                )
            if why:
                with suppress(*ERRORS):
                    await conn.close()
                self.on_lost(why)
                raise StoreError(why) from None
        self._writer = conn
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Tx]:
        """One write transaction; rolled back on any error, which is re-raised as StoreError."""
        async with self._tx() as conn:
            yield _Tx(conn)

    async def write(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `work` as one write transaction on the writer connection: the hot paths'
        form (their statements in PostgreSQL's own spelling, arrays as parameters)."""
        async with self._tx() as conn:
            return await work(conn)

    # ------------------------------------------------------------------ space

    async def reclaim(self, tables: Sequence[str], *, full: bool = False) -> int:
        """VACUUM (ANALYZE) of the purged tables (engine.Engine.reclaim): their dead rows'
        space made reusable and their statistics fresh, on a connection of its own (a
        VACUUM cannot run in a transaction, and must not hold the writer). Autovacuum
        may be off, or late after a purge of 100,000 jobs. A plain VACUUM takes no lock
        that blocks reads or writes and gives back only the empty pages at a table's
        end; `full` (VACUUM FULL) rewrites the tables, locking each meanwhile."""
        size = (
            "SELECT COALESCE(SUM(pg_total_relation_size(t::regclass)), 0) FROM unnest($1::text[]) t"
        )
        conn = await self._connect(self._dsn)
        try:
            before = int(await conn.fetchval(size, list(tables)))
            await conn.execute(f"VACUUM ({'FULL, ' if full else ''}ANALYZE) {', '.join(tables)}")
            return max(before - int(await conn.fetchval(size, list(tables))), 0)
        except ERRORS as exc:
            raise StoreError(f"{self.where}: VACUUM failed: {exc}") from exc
        finally:
            with suppress(*ERRORS):
                await conn.close()

    # ------------------------------------------------------------------ dialect

    @staticmethod
    def list_length(column: str) -> str:
        """SQL for the number of items in a list column (stored as JSON text)."""
        return f"json_array_length({column}::json)"

    # ------------------------------------------------------------------ copies

    async def table_names(self) -> set[str]:
        rows = await self.fetchall(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename <> 'hpcbatch_schema'"
        )
        return {str(r[0]) for r in rows}

    async def replace_all(self, tables: dict[str, Rows]) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            for table, (columns, rows) in tables.items():
                await conn.execute(f"DELETE FROM {table}")
                if rows:
                    await conn.copy_records_to_table(table, records=rows, columns=columns)
            for table, column in SEQUENCES:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                    f" COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
                )

        await self.write(work)
