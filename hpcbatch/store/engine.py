"""What the tables need from a database engine, whichever it is.

Two engines implement it: `SqliteDatabase` (database.py, the embedded default)
and `PgDatabase` (postgres.py). The tables write their statements once, with
`?` placeholders and standard SQL, against this interface; the few places
where the engines cannot share a statement (the hot-path writes, an array's
children in bulk) are a subclass of the table per engine (jobs_sqlite.py,
jobs_pg.py) or a named fragment here (`list_length`, `INSERTION_ORDER`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

Rows = tuple[tuple[str, ...], Sequence[Sequence[Any]]]
"""A table's content for a copy: its column names, and its rows in insertion order."""


log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be opened or written; the message says why in plain words."""


def lost_the_lead(why: str) -> None:
    """Another controller took the lead: this one must neither write nor launch again.

    Its writes are already refused (they need the store's lock) and the hosts refuse
    its epoch; exiting at once (status 75) also stops everything still in memory (a
    scheduling pass, a launch) from reaching the hosts or the store.
    """
    log.critical("lost the lead, exiting: %s", why)
    logging.shutdown()
    os._exit(75)


def quoted(column: str) -> str:
    """A column name as SQL: `user` is a reserved word in PostgreSQL (it means the
    session's role), so it is always written quoted, which both engines accept."""
    return '"user"' if column == "user" else column


def column_list(columns: Iterable[str]) -> str:
    return ", ".join(quoted(c) for c in columns)


class Cursor(Protocol):
    """The result of one statement in a transaction: rows, and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    async def fetchone(self) -> Any | None: ...

    async def fetchall(self) -> Iterable[Any]: ...


class Tx(Protocol):
    """One open write transaction: statements with `?` placeholders."""

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Cursor: ...

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        """One statement for each row, in one round trip to the engine (a batch)."""
        ...


class Reader(Protocol):
    """Where reads run: the engine itself, or one consistent snapshot of it (`reading`)."""

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None: ...


class Engine(Protocol):
    """One open store database: reads, write transactions, and the dialect fragments."""

    engine: str
    """"sqlite" or "postgresql"."""
    cluster_id: str
    epoch: int
    """The lead this process holds (store/leader.py), 0 until it takes it."""
    INSERTION_ORDER: str
    """The column that orders a table's rows as they were inserted (a job's history)."""

    @property
    def where(self) -> str:
        """The store as an operator names it (a path or a URL without its password)."""
        ...

    async def close(self) -> None: ...

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any | None: ...

    def reading(self) -> AbstractAsyncContextManager[Reader]:
        """Several reads that must agree (a job's row and its attempts' rows): on
        PostgreSQL one snapshot, which no write commits into halfway."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[Tx]: ...

    def list_length(self, column: str) -> str:
        """SQL for the number of items in a list column (stored as JSON text)."""
        ...

    async def table_names(self) -> set[str]:
        """The tables the schema made (without the engine's own bookkeeping)."""
        ...

    async def reclaim(self, tables: Sequence[str], *, full: bool = False) -> int:
        """Give back the space of rows removed from `tables` (after a purge), without
        stalling the writer for long: SQLite frees its file's free pages a few at a time,
        PostgreSQL runs a plain VACUUM (ANALYZE) of them. `full`: all at once, holding
        the store meanwhile (SQLite's VACUUM, PostgreSQL's VACUUM FULL), for an
        administrator's `purge --vacuum`. Returns the bytes the store's files shrank by."""
        ...

    async def replace_all(self, tables: dict[str, Rows]) -> None:
        """In one transaction: empty each named table and fill it with these rows (the
        columns named, in that order); ids made afterwards continue above the copied ones."""
        ...
