"""Retention's store side on both engines (SQLite files, a real PostgreSQL): batches
go on past a job that is not final, and the space of purged jobs
is given back, so a store that is filled and purged again and again stays the
same size instead of growing (docs/operations.md, "Retention")."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store, StoreUrl
from hpcbatch.store.logs import CollectedLog
from hpcbatch.store.retention import Batch
from hpcbatch.store.rows import NewJob

JOBS = 200
OUTPUT = 16_384  # random bytes: zlib keeps them at full size, ~3 MiB per fill


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    if request.param == "sqlite":
        return StoreUrl.sqlite(tmp_path / "s.db")
    return StoreUrl.parse(request.getfixturevalue("pg_url"))


async def fill(store: Store, ended: float) -> list[int]:
    """`JOBS` jobs that succeeded at `ended`, each with its collected output."""
    new = NewJob("j", "ann", 1000, "batch", {"script": "x"}, ended - 10)
    ids = await store.jobs.insert_jobs([new] * JOBS, JobState.RUNNABLE, "queued")
    for job_id in ids:
        await store.jobs.set_summary_state(job_id, JobState.SUCCEEDED, "done", ended, ended=ended)
        await store.logs.put(
            [CollectedLog(job_id, 1, 0, "stdout", os.urandom(OUTPUT), False)], ended
        )
    return ids


async def purge_all(store: Store, cutoff: float, limit: int) -> int:
    return sum([n async for n in store.retention.batches(cutoff, limit)])


def auto_vacuum(path: Path) -> int:
    """The file's mode, read afresh (an open connection keeps the one it first read)."""
    with contextlib.closing(sqlite3.connect(path)) as db:  # `with` alone leaves it open
        return int(db.execute("PRAGMA auto_vacuum").fetchone()[0])


def file_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


async def test_batches_step_over_a_job_that_is_not_final(url: StoreUrl) -> None:
    store = await Store.open(url)
    try:
        done = await fill(store, 1000.0)
        # Not final, with an end (a requeue clears it; this one was written so), and the
        # first in `ended` order: kept, and every batch goes on past it.
        await store.jobs.set_summary_state(done[3], JobState.RUNNABLE, "again", 1001.0, ended=999.0)
        assert await purge_all(store, 2000.0, limit=2) == JOBS - 1
        assert await store.jobs.get_job(done[3]) is not None
        assert await store.jobs.transitions(done[3])
        assert await store.retention.purge_batch(2000.0, 2) == Batch(0, more=False)
    finally:
        await store.close()


async def test_the_store_stops_growing_over_purge_cycles(url: StoreUrl) -> None:
    store = await Store.open(url)
    try:
        sizes = []
        for cycle in range(4):
            await fill(store, 1000.0 + cycle)
            assert await purge_all(store, 2000.0, limit=50) == JOBS
            freed = await store.retention.reclaim()
            if url.path is not None:
                # The free pages went back to the file system: the file is about what
                # the schema needs, not the ~3 MiB of output it held.
                assert freed > OUTPUT * JOBS // 2, freed
                assert url.path.stat().st_size < OUTPUT * JOBS // 4
                sizes.append(file_bytes(url.path))
            else:
                row = await store.db.fetchone(
                    "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables"
                    " WHERE relname = 'job_logs'"
                )
                assert row is not None and row[0] is not None and row[1] is not None
                size = "SELECT pg_total_relation_size('job_logs')"
                sizes.append(int((await store.db.fetchone(size))[0]))
        # Each fill reuses what the purge before it freed: the store does not grow with
        # the number of cycles (four fills' output would be ~12 MiB).
        assert max(sizes[1:]) <= sizes[0] + OUTPUT * JOBS // 2, sizes
    finally:
        await store.close()


async def test_an_older_sqlite_file_moves_to_incremental_reclaim_on_vacuum(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    # A file made before hpcbatch set auto_vacuum: a table exists, so it is fixed.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE made_by_an_older_release (x)")
    store = await Store.open(path)
    try:
        assert auto_vacuum(path) == 0
        await fill(store, 1000.0)
        assert await purge_all(store, 2000.0, limit=100) == JOBS
        big = path.stat().st_size
        assert await store.retention.reclaim() == 0  # free pages reused, not given back
        assert await store.retention.reclaim(full=True) > OUTPUT * JOBS // 2
        assert auto_vacuum(path) == 2  # INCREMENTAL
        assert path.stat().st_size < big // 4
        await fill(store, 1001.0)
        assert await purge_all(store, 2000.0, limit=100) == JOBS
        assert await store.retention.reclaim() > OUTPUT * JOBS // 2
    finally:
        await store.close()
