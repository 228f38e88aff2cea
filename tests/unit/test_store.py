"""The store's tables on both engines, each real: a SQLite file in a temporary
directory, and a new database on the session's PostgreSQL server
(tests/postgres_fixture.py). Rows in and out through one column list, the
compare-and-set writes and their history, the bulk array paths, the admin and
definitions tables, the store's lock, and `store copy` between the engines.
Milliseconds each; the controller-level behaviour stays in tests/integration."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hpcbatch.core.records import AttemptState, Placement
from hpcbatch.core.states import JobState
from hpcbatch.store.database import SqliteDatabase
from hpcbatch.store.db import AttemptUpdate, NewJob, StartOrder, Store
from hpcbatch.store.engine import StoreError
from hpcbatch.store.jobs_sqlite import SqliteJobsTable
from hpcbatch.store.postgres import LEASE_S, PgDatabase
from hpcbatch.store.schema import MIGRATIONS, statements
from hpcbatch.store.url import StoreUrl
from tests.postgres_server import TemporaryPostgres

REQUEST = {"command": ["true"], "cpus": 2, "env": {"A": "b"}}


def new_job(name: str = "j", request: dict[str, object] | None = None) -> NewJob:
    return NewJob(name, "alice", 1000, "q", dict(request or REQUEST), 100.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    """A new store on each engine (the PostgreSQL server starts on first use)."""
    if request.param == "sqlite":
        return StoreUrl.sqlite(tmp_path / "hpcbatch.db")
    return StoreUrl.parse(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: StoreUrl) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
    try:
        yield s
    finally:
        await s.close()


async def test_a_job_comes_back_as_it_went_in(store: Store) -> None:
    (job_id,) = await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, "ready")
    job = await store.jobs.get_job(job_id)
    assert job is not None
    assert (job.id, job.name, job.user, job.uid, job.queue) == (job_id, "j", "alice", 1000, "q")
    assert (job.state, job.reason, job.request, job.submitted) == (
        JobState.RUNNABLE,
        "ready",
        REQUEST,
        100.0,
    )
    assert (job.started, job.ended, job.exit_code, job.attempt, job.attempts) == (
        None,
        None,
        None,
        0,
        [],
    )
    history = [(t.old, t.new, t.reason) for t in await store.jobs.transitions(job_id)]
    assert history == [(None, "SUBMITTED", "submitted"), ("SUBMITTED", "RUNNABLE", "ready")]
    assert await store.jobs.get_job(job_id + 1) is None


async def test_start_and_exit_are_compare_and_set(store: Store) -> None:
    ids = await store.jobs.insert_jobs([new_job("a"), new_job("b")], JobState.RUNNABLE, None)
    placements = (Placement("h1", 2, 512, (0, 1), cores=(4, 5)), Placement("h2", 2, 512))
    orders = [StartOrder(i, 1, placements, "starting") for i in ids]
    assert await store.jobs.start_jobs(orders, 200.0) == ids
    assert await store.jobs.start_jobs(orders, 201.0) == []  # no longer RUNNABLE
    job = await store.jobs.get_job(ids[0])
    assert job is not None and job.state == JobState.STARTING and job.attempt == 1
    assert [(a.node, a.host, a.gpus, a.cores, a.state, a.created) for a in job.attempts] == [
        (0, "h1", (0, 1), (4, 5), AttemptState.STARTING, 200.0),  # pinned cores, kept
        (1, "h2", (), (), AttemptState.STARTING, 200.0),  # not pinned: NULL
    ]
    assert all(a.started is None and a.stdout is None for a in job.attempts)

    done = AttemptUpdate(ids[0], 1, 0, AttemptState.EXITED, ended=250.0, exit_code=3, stdout="o")
    moved = await store.jobs.transition(
        ids[0], JobState.STARTING, JobState.RUNNING, None, 210.0, started=210.0
    )
    assert moved
    assert not await store.jobs.transition(ids[0], JobState.STARTING, JobState.RUNNING, None, 211.0)
    assert await store.jobs.transition(
        ids[0],
        JobState.RUNNING,
        JobState.FAILED,
        "exit 3",
        250.0,
        ended=250.0,
        exit_code=3,
        attempt_updates=[done],
    )
    job = await store.jobs.get_job(ids[0])
    assert job is not None
    assert (job.state, job.started, job.ended, job.exit_code) == (JobState.FAILED, 210.0, 250.0, 3)
    first = job.attempts[0]
    assert (first.state, first.ended, first.exit_code, first.stdout) == (
        AttemptState.EXITED,
        250.0,
        3,
        "o",
    )
    assert job.attempts[1].state == AttemptState.STARTING
    # Final jobs are not loaded at start; the other one is, with its current attempt.
    active = await store.jobs.load_active()
    assert [j.id for j in active] == [ids[1]]
    assert [a.host for a in active[0].attempts] == ["h1", "h2"]


async def test_an_array_is_inserted_and_moved_in_bulk(store: Store) -> None:
    parent_id, child_ids = await store.jobs.insert_array(
        new_job("arr"), [0, 2, 4], JobState.PENDING, "dependency"
    )
    assert child_ids == [parent_id + 1, parent_id + 2, parent_id + 3]
    children = await store.jobs.list_jobs(array_parents=[parent_id])
    assert [(c.id, c.array_index, c.state) for c in children] == [
        (i, n, JobState.PENDING) for i, n in zip(child_ids, [0, 2, 4], strict=True)
    ]
    # Children store no request: they share their parent's.
    assert all(c.request == REQUEST for c in children)
    assert children[0].request is children[1].request
    parent = await store.jobs.get_job(parent_id)
    assert parent is not None and parent.array_size == 3 and parent.request == REQUEST
    history = await store.jobs.transitions(child_ids[0])
    assert [(t.old, t.new) for t in history] == [(None, "SUBMITTED"), ("SUBMITTED", "PENDING")]

    moved = await store.jobs.bulk_transition(
        [*child_ids[:2], 9999], [JobState.PENDING], JobState.RUNNABLE, "released", 300.0
    )
    assert sorted(moved) == [(child_ids[0], JobState.PENDING), (child_ids[1], JobState.PENDING)]
    runnable = await store.jobs.list_jobs(states=["RUNNABLE"])
    assert [j.id for j in runnable] == child_ids[:2]

    await store.jobs.set_summary_state(parent_id, JobState.RUNNING, None, 310.0, ended=None)
    parent = await store.jobs.get_job(parent_id)
    assert parent is not None and parent.state == JobState.RUNNING and parent.started == 310.0
    assert (await store.jobs.transitions(parent_id))[-1].new == "RUNNING"


async def test_list_filters_and_usage(store: Store) -> None:
    ids = await store.jobs.insert_jobs(
        [new_job("x"), new_job("y"), new_job("x")], JobState.RUNNABLE, None
    )
    assert [j.id for j in await store.jobs.list_jobs(name="x")] == [ids[0], ids[2]]
    assert [j.id for j in await store.jobs.list_jobs(limit=2)] == ids[1:]
    assert await store.jobs.list_jobs(user="bob") == []
    order = StartOrder(ids[0], 1, (Placement("h1", 4, 0, (0, 1, 2)),), "go")
    await store.jobs.start_jobs([order], 10.0)
    await store.jobs.update_attempts([AttemptUpdate(ids[0], 1, 0, AttemptState.RUNNING, 11.0)])
    assert await store.jobs.usage_rows(0.0) == [("alice", 4, 3, 11.0, None)]
    listed = await store.jobs.list_jobs(ids=[ids[0]])
    assert [a.state for a in listed[0].attempts] == [AttemptState.RUNNING]


async def test_admin_states_and_facts(store: Store) -> None:
    await store.admin.set_queue("q", "DISABLED", "maintenance", 1.0)
    await store.admin.set_queue("q", "ENABLED", None, 2.0)
    assert await store.admin.queue_states() == {"q": ("ENABLED", None)}
    await store.admin.save_facts("h1", {"cpus": 8}, 1.0)
    await store.admin.set_host("h1", "DRAIN", "disk", 2.0)
    assert await store.admin.host_states() == {"h1": ("DRAIN", "disk")}


async def test_definitions_are_versioned(store: Store) -> None:
    assert await store.definitions.register("d", {"image": "a"}, "alice", 1.0) == 1
    assert await store.definitions.register("d", {"image": "b"}, "alice", 2.0) == 2
    latest = await store.definitions.get("d", None)
    assert latest is not None and (latest.revision, latest.body) == (2, {"image": "b"})
    assert await store.definitions.deregister("d", 2)
    assert not await store.definitions.deregister("d", 2)
    latest = await store.definitions.get("d", None)
    assert latest is not None and latest.revision == 1 and latest.created == 1.0
    assert [r.revision for r in await store.definitions.list("d", inactive=True)] == [1, 2]
    assert [r.status for r in await store.definitions.list()] == ["ACTIVE"]


async def test_the_database_keeps_its_identity_and_refuses_newer_schemas(
    store_url: StoreUrl,
) -> None:
    first = await Store.open(store_url)
    cluster_id = first.cluster_id
    await first.close()
    again = await Store.open(store_url)
    assert again.cluster_id == cluster_id and len(cluster_id) == 12
    newer = len(MIGRATIONS) + 1
    async with again.db.transaction() as tx:
        if again.db.engine == "sqlite":
            await tx.execute(f"PRAGMA user_version = {newer}")
        else:
            await tx.execute("UPDATE hpcbatch_schema SET version = ?", (newer,))
    await again.close()
    with pytest.raises(StoreError, match="newer than this hpcbatch"):
        await Store.open(store_url)


async def test_a_failed_write_changes_nothing(store: Store) -> None:
    (job_id,) = await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, None)
    with pytest.raises(StoreError, match="write failed, nothing was changed"):
        async with store.db.transaction() as tx:
            await tx.execute("UPDATE jobs SET name = 'changed' WHERE id = ?", (job_id,))
            await tx.execute("INSERT INTO no_such_table VALUES (1)")
    job = await store.jobs.get_job(job_id)
    assert job is not None and job.name == "j"


async def test_a_failed_one_hop_write_changes_nothing(tmp_path: Path) -> None:
    """SQLite's hot paths run a whole transaction in its thread (`write(work)`)."""
    sqlite = await SqliteDatabase.open(tmp_path / "hpcbatch.db")
    store = Store(sqlite, SqliteJobsTable(sqlite))
    (job_id,) = await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, None)

    def work(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE jobs SET name = 'changed' WHERE id = ?", (job_id,))
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError, match="write failed, nothing was changed"):
        await sqlite.write(work)
    job = await store.jobs.get_job(job_id)
    assert job is not None and job.name == "j"
    await store.close()


async def test_one_process_holds_a_store(store_url: StoreUrl) -> None:
    """A controller opens its store exclusively: a second opener is refused until it closes."""
    first = await Store.open(store_url, exclusive=True)
    with pytest.raises(StoreError, match="another controller is already using the store"):
        await Store.open(store_url, exclusive=True)
    await first.close()
    again = await Store.open(store_url, exclusive=True)
    await again.close()


async def test_attempt_updates_apply_in_order(store: Store) -> None:
    """A field left None keeps what is stored; a row named twice in one batch gets both
    updates in order; a transition's updates are written only if the job moved."""
    a, b = await store.jobs.insert_jobs([new_job("a"), new_job("b")], JobState.RUNNABLE, None)
    place = (Placement("h1", 1, 0), Placement("h2", 1, 0))
    await store.jobs.start_jobs([StartOrder(a, 1, place, "go"), StartOrder(b, 1, place, "go")], 1.0)
    await store.jobs.update_attempts(
        [
            AttemptUpdate(a, 1, 0, AttemptState.RUNNING, started=2.0),
            AttemptUpdate(a, 1, 1, AttemptState.RUNNING, started=2.5),
        ]
    )
    await store.jobs.update_attempts(
        [
            AttemptUpdate(a, 1, 0, AttemptState.EXITED, ended=3.0, exit_code=0, stdout="x"),
            AttemptUpdate(a, 1, 0, AttemptState.EXITED, stderr="y"),
        ]
    )
    repeat = [
        AttemptUpdate(b, 1, 0, AttemptState.RUNNING, started=4.0),
        AttemptUpdate(b, 1, 0, AttemptState.EXITED, ended=5.0, exit_code=2),
    ]
    moved = await store.jobs.transition(
        b, JobState.STARTING, JobState.RUNNING, None, 4.0, started=4.0, attempt_updates=repeat
    )
    assert moved
    # A transition whose compare-and-set fails writes none of its attempt updates.
    late = AttemptUpdate(b, 1, 1, AttemptState.EXITED, exit_code=9)
    assert not await store.jobs.transition(
        b, JobState.STARTING, JobState.RUNNING, None, 6.0, attempt_updates=[late]
    )
    job_a, job_b = await store.jobs.get_job(a), await store.jobs.get_job(b)
    assert job_a is not None and job_b is not None
    first, second = job_a.attempts
    assert (first.state, first.started, first.ended, first.exit_code) == (
        AttemptState.EXITED,
        2.0,
        3.0,
        0,
    )
    assert (first.stdout, first.stderr) == ("x", "y")
    assert (second.state, second.started) == (AttemptState.RUNNING, 2.5)
    b0, b1 = job_b.attempts
    assert (b0.state, b0.started, b0.ended, b0.exit_code) == (AttemptState.EXITED, 4.0, 5.0, 2)
    assert (b1.state, b1.exit_code) == (AttemptState.STARTING, None)
    assert [t.new for t in await store.jobs.transitions(b)] == [
        "SUBMITTED",
        "RUNNABLE",
        "STARTING",
        "RUNNING",
    ]


async def test_a_bulk_transition_moves_each_job_from_its_own_state(store: Store) -> None:
    pending = await store.jobs.insert_jobs([new_job(), new_job()], JobState.PENDING, "dep")
    runnable = await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, None)
    moved = await store.jobs.bulk_transition(
        [*pending, *runnable, 12345],
        [JobState.PENDING, JobState.RUNNABLE],
        JobState.FAILED,
        "cancelled",
        7.0,
        ended=7.0,
    )
    assert sorted(moved) == [
        (pending[0], JobState.PENDING),
        (pending[1], JobState.PENDING),
        (runnable[0], JobState.RUNNABLE),
    ]
    job = await store.jobs.get_job(runnable[0])
    assert job is not None and (job.state, job.reason, job.ended) == (
        JobState.FAILED,
        "cancelled",
        7.0,
    )
    assert [(t.old, t.new) for t in await store.jobs.transitions(pending[0])][-1] == (
        "PENDING",
        "FAILED",
    )
    assert (
        await store.jobs.bulk_transition(pending, [JobState.PENDING], JobState.FAILED, None, 8)
        == []
    )


async def test_postgresql_makes_a_lost_connection_again_with_its_lock(
    pg_url: str, postgres: TemporaryPostgres
) -> None:
    """The server ends the controller's sessions (a restart, an operator): the next write
    connects again and takes the store's lock again before it writes."""
    url = StoreUrl.parse(pg_url)
    store = await Store.open(url, exclusive=True)
    try:
        await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, None)
        database = pg_url.split("/")[3].split("?")[0]
        postgres.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(0.2)  # the client hears the server close the connection
        (job_id,) = await store.jobs.insert_jobs([new_job("again")], JobState.RUNNABLE, None)
        job = await store.jobs.get_job(job_id)
        assert job is not None and job.name == "again"
        with pytest.raises(StoreError, match="another controller is already using the store"):
            await Store.open(url, exclusive=True)
    finally:
        await store.close()


async def test_a_definition_name_is_owned_by_its_first_registrant(store: Store) -> None:
    from hpcbatch.store.definitions import DefinitionOwned

    assert await store.definitions.register("d", {"image": "a"}, "alice", 1.0) == 1
    with pytest.raises(DefinitionOwned, match="job definition d belongs to alice"):
        await store.definitions.register("d", {"image": "b"}, "bob", 2.0)
    assert await store.definitions.register("d", {"image": "c"}, "root", 3.0, admin=True) == 2
    latest = await store.definitions.get("d", None)
    assert latest is not None and (latest.user, latest.owner) == ("root", "alice")
    assert await store.definitions.register("e", {}, "bob", 4.0) == 1  # a new name is free


async def test_migration_4_gives_old_definitions_their_first_registrant(tmp_path: Path) -> None:
    path = tmp_path / "hpcbatch.db"
    conn = sqlite3.connect(path)
    for number, migration in enumerate(MIGRATIONS[:3], start=1):  # before owners
        for sql in statements(migration, "sqlite"):
            conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {number}")
    rows = [("d", 1, "alice"), ("d", 2, "bob"), ("e", 1, "bob")]  # before owners: anyone
    conn.executemany(
        "INSERT INTO definitions (name, revision, body, user, created) VALUES (?, ?, '{}', ?, 0)",
        rows,
    )
    conn.commit()
    conn.close()
    store = await Store.open(StoreUrl.sqlite(path))
    try:
        owners = {(r.name, r.revision): r.owner for r in await store.definitions.list()}
        assert owners == {("d", 1): "alice", ("d", 2): "alice", ("e", 1): "bob"}
    finally:
        await store.close()


async def test_the_store_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "hpcbatch.db"
    store = await Store.open(StoreUrl.sqlite(path))
    try:
        await store.jobs.insert_jobs([new_job()], JobState.RUNNABLE, None)
        for name in ("hpcbatch.db", "hpcbatch.db-wal", "hpcbatch.db-shm"):
            assert (path.parent / name).stat().st_mode & 0o777 == 0o600, name
        assert path.parent.stat().st_mode & 0o777 == 0o700
    finally:
        await store.close()
    (path.parent / "hpcbatch.db").chmod(0o644)  # as an older hpcbatch left it
    store = await Store.open(StoreUrl.sqlite(path))
    await store.close()
    assert (path.parent / "hpcbatch.db").stat().st_mode & 0o777 == 0o600


async def test_a_leader_silent_inside_a_write_loses_the_store_to_a_standby(pg_url: str) -> None:
    """The lease holds inside a transaction too: a controller stopped between two
    statements of a write (SIGSTOP, a VM freeze) is idle in transaction, which
    idle_session_timeout does not end. Without idle_in_transaction_session_timeout the
    session kept the lock, and the standby waited forever (the HA soak hung)."""
    url = StoreUrl.parse(pg_url)
    leader = await Store.open(url, exclusive=True)
    assert isinstance(leader.db, PgDatabase)
    started = asyncio.Event()

    async def silent(conn: object) -> None:
        started.set()
        await asyncio.sleep(3 * LEASE_S)  # in the transaction, saying nothing

    stalled = asyncio.create_task(leader.db.write(silent))
    await started.wait()
    t0 = asyncio.get_running_loop().time()
    standby = await asyncio.wait_for(Store.open(url, exclusive=True, standby=True), 2.5 * LEASE_S)
    took = asyncio.get_running_loop().time() - t0
    assert took < 2 * LEASE_S, took
    await standby.close()
    with pytest.raises(StoreError):
        await stalled  # the paused leader's write did not commit
    await leader.close()
