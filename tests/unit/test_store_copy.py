"""`store copy` between the two engines, both real (a SQLite file, a database on
the session's PostgreSQL server): every row of every table arrives, ids and
each job's history order kept, the cluster id with them; new ids continue
above the copied ones; a store in use or a target that is not empty is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpcbatch.core.records import AttemptState, Placement
from hpcbatch.core.states import JobState
from hpcbatch.store.db import AttemptUpdate, NewJob, StartOrder, Store
from hpcbatch.store.engine import Engine, StoreError, column_list
from hpcbatch.store.transfer import TABLES, copy_store
from hpcbatch.store.url import StoreUrl


def job(name: str) -> NewJob:
    return NewJob(name, "alice", 1000, "q", {"command": ["true"], "cpus": 1}, 100.5)


async def fill(url: StoreUrl) -> None:
    """A little of everything an installation keeps."""
    store = await Store.open(url)
    try:
        a, b, c = await store.jobs.insert_jobs(
            [job("a"), job("b"), job("c")], JobState.RUNNABLE, "r"
        )
        parent, _children = await store.jobs.insert_array(
            job("arr"), [0, 1, 5], JobState.PENDING, "dependency"
        )
        place = (Placement("h1", 1, 64, (0,)), Placement("h2", 1, 64))
        await store.jobs.start_jobs(
            [StartOrder(a, 1, place, "go"), StartOrder(b, 1, place, "go")], 101.25
        )
        done = AttemptUpdate(
            a, 1, 0, AttemptState.EXITED, ended=103.0, exit_code=0, stdout="o\u00e9"
        )
        await store.jobs.transition(
            a, JobState.STARTING, JobState.RUNNING, None, 102.0, started=102.0
        )
        await store.jobs.transition(
            a, JobState.RUNNING, JobState.SUCCEEDED, None, 103.0, ended=103.0, exit_code=0,
            attempt_updates=[done],
        )  # fmt: skip
        await store.jobs.bulk_transition(
            [c], [JobState.RUNNABLE], JobState.FAILED, "cancelled", 104.0
        )
        await store.jobs.set_summary_state(parent, JobState.RUNNING, None, 105.0, ended=None)
        await store.definitions.register("d", {"image": "busybox"}, "bob", 1.0)
        await store.admin.set_queue("q", "DISABLED", "maintenance", 2.0)
        await store.admin.set_host("h1", "DRAIN", "disk", 3.0)
        await store.admin.save_facts("h2", {"cpus": 8, "gpus": []}, 4.0)
    finally:
        await store.close()


async def dump(db: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows in a fixed order (a job's history in the order it was written)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, columns in TABLES.items():
        order = f"job_id, {db.INSERTION_ORDER}" if table == "transitions" else "1, 2"
        rows = await db.fetchall(f"SELECT {column_list(columns)} FROM {table} ORDER BY {order}")
        out[table] = [tuple(r) for r in rows]
    return out


async def contents(url: StoreUrl) -> tuple[str, dict[str, list[tuple[Any, ...]]]]:
    store = await Store.open(url)
    try:
        return store.cluster_id, await dump(store.db)
    finally:
        await store.close()


async def test_a_store_goes_to_postgresql_and_back(tmp_path: Path, pg_url: str) -> None:
    sqlite, pg = StoreUrl.sqlite(tmp_path / "a.db"), StoreUrl.parse(pg_url)
    await fill(sqlite)
    original = await contents(sqlite)
    assert len(original[1]["transitions"]) == 20 and original[1]["definitions"]

    copied = await copy_store(sqlite, pg)
    assert [(c.table, c.source, c.target) for c in copied] == [
        (t, len(original[1][t]), len(original[1][t])) for t in TABLES
    ]
    assert await contents(pg) == original

    back = StoreUrl.sqlite(tmp_path / "b.db")
    await copy_store(pg, back)
    assert await contents(back) == original

    # New ids continue above the copied ones, on both engines.
    for url in (pg, back):
        store = await Store.open(url)
        (new,) = await store.jobs.insert_jobs([job("n")], JobState.RUNNABLE, None)
        assert new == max(r[0] for r in original[1]["jobs"]) + 1
        history = await store.jobs.transitions(new)
        assert [t.new for t in history] == ["SUBMITTED", "RUNNABLE"]
        await store.close()


async def test_a_store_in_use_or_a_full_target_is_refused(tmp_path: Path, pg_url: str) -> None:
    sqlite, pg = StoreUrl.sqlite(tmp_path / "a.db"), StoreUrl.parse(pg_url)
    await fill(sqlite)
    running = await Store.open(sqlite, exclusive=True)  # as a controller holds it
    with pytest.raises(StoreError, match="another controller is already using the store"):
        await copy_store(sqlite, pg)
    await running.close()
    await copy_store(sqlite, pg)
    with pytest.raises(StoreError, match="is not empty"):
        await copy_store(sqlite, pg)
    with pytest.raises(StoreError, match="the same store"):
        await copy_store(sqlite, StoreUrl.parse(f"sqlite://{tmp_path / 'a.db'}"))


async def test_the_copy_knows_every_table_and_column(tmp_path: Path, pg_url: str) -> None:
    """A migration that adds a table or a column must add it to the copy too."""
    sqlite = await Store.open(tmp_path / "a.db")
    pg = await Store.open(StoreUrl.parse(pg_url))
    try:
        for store in (sqlite, pg):
            assert await store.db.table_names() == set(TABLES)
        for table, columns in TABLES.items():
            info = await sqlite.db.fetchall(f"SELECT name FROM pragma_table_info('{table}')")
            assert {r[0] for r in info} == set(columns), table
            info = await pg.db.fetchall(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ?",
                (table,),
            )
            assert {r[0] for r in info} - {"seq"} == set(columns), table
    finally:
        await sqlite.close()
        await pg.close()
