"""The job service's group commit (controller/writegroup.py): changes queued while a
write is in flight go out together in one transaction, at most one per job, each
decided on the state the previous group left; a failed write reaches every caller."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest

from hpcbatch.controller.writegroup import GROUP_MAX, Change, WriteGroup
from hpcbatch.core.states import JobState
from hpcbatch.store.db import JobWrite, StoreError


class Db:
    """A stand-in for `JobsTable.write_group`: records each transaction, compare-and-set
    on a dict of states, one event-loop turn per transaction."""

    def __init__(self) -> None:
        self.state: dict[int, JobState] = {}
        self.groups: list[list[JobWrite]] = []
        self.fail: Exception | None = None

    async def write_group(self, writes: Sequence[JobWrite]) -> list[bool]:
        await asyncio.sleep(0.001)
        if self.fail is not None:
            raise self.fail
        self.groups.append(list(writes))
        out = []
        for w in writes:
            ok = w.new is None or self.state.get(w.job_id) == w.old
            if ok and w.new is not None:
                self.state[w.job_id] = w.new
            out.append(ok)
        return out


def group_of(db: Db) -> tuple[WriteGroup, set[asyncio.Task[Any]]]:
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        return task

    return WriteGroup(asyncio.Lock(), db.write_group, spawn), tasks


def move(db: Db, job_id: int, memory: dict[int, JobState], new: JobState) -> Change | None:
    """A change decided on `memory` (the committed state), applied to it if written."""
    old = memory[job_id]
    if old.is_final:
        return None

    def apply(ok: list[bool]) -> None:
        if ok[0]:
            memory[job_id] = new

    return Change([JobWrite(job_id, old, new, "r", 1.0)], apply)


async def test_changes_queued_meanwhile_are_written_together() -> None:
    db = Db()
    group, _tasks = group_of(db)
    memory = {i: JobState.RUNNING for i in range(600)}
    db.state = dict(memory)
    done = await asyncio.gather(
        *(group.submit(i, lambda i=i: move(db, i, memory, JobState.SUCCEEDED)) for i in range(600))
    )
    assert all(done)
    assert set(memory.values()) == {JobState.SUCCEEDED} and db.state == memory
    assert len(db.groups) < 600 and max(len(g) for g in db.groups) <= GROUP_MAX
    assert group.groups == len(db.groups) and group.changes == 600


async def test_a_second_change_to_a_job_waits_for_the_next_group() -> None:
    db = Db()
    group, _tasks = group_of(db)
    memory = {1: JobState.STARTING, 2: JobState.STARTING}
    db.state = dict(memory)
    # An exit overtaking nothing: RUNNING first, then SUCCEEDED, both queued at once.
    outcomes = await asyncio.gather(
        group.submit(1, lambda: move(db, 1, memory, JobState.RUNNING)),
        group.submit(2, lambda: move(db, 2, memory, JobState.RUNNING)),
        group.submit(1, lambda: move(db, 1, memory, JobState.SUCCEEDED)),
    )
    assert outcomes == [True, True, True]
    assert memory == {1: JobState.SUCCEEDED, 2: JobState.RUNNING} == db.state
    assert [[w.job_id for w in g] for g in db.groups] == [[1, 2], [1]]


async def test_nothing_to_write_answers_false_and_writes_nothing() -> None:
    db = Db()
    group, _tasks = group_of(db)
    assert await group.submit(7, lambda: None) is False
    assert db.groups == []


async def test_a_failed_write_reaches_every_caller_and_changes_nothing() -> None:
    db = Db()
    db.fail = StoreError("disk full")
    group, _tasks = group_of(db)
    memory = {1: JobState.RUNNING, 2: JobState.RUNNING}
    db.state = dict(memory)
    results = await asyncio.gather(
        group.submit(1, lambda: move(db, 1, memory, JobState.FAILED)),
        group.submit(2, lambda: move(db, 2, memory, JobState.FAILED)),
        return_exceptions=True,
    )
    assert [str(r) for r in results] == ["disk full", "disk full"]
    assert memory == {1: JobState.RUNNING, 2: JobState.RUNNING}
    db.fail = None  # the next change goes through: the group is not stuck
    assert await group.submit(1, lambda: move(db, 1, memory, JobState.FAILED))
    assert memory[1] == JobState.FAILED


async def test_a_decision_that_raises_reaches_its_caller_only() -> None:
    db = Db()
    group, _tasks = group_of(db)
    memory = {1: JobState.RUNNING}
    db.state = dict(memory)

    def broken() -> Change | None:
        raise ValueError("bad exit record")

    with pytest.raises(ValueError, match="bad exit record"):
        await asyncio.gather(
            group.submit(2, broken), group.submit(1, lambda: move(db, 1, memory, JobState.FAILED))
        )
    await asyncio.sleep(0.01)
    assert memory[1] == JobState.FAILED


@pytest.mark.parametrize("turns", [1, 2])  # cancelled before it started; while it writes
async def test_a_flush_cancelled_at_shutdown_leaves_nobody_waiting(turns: int) -> None:
    db = Db()
    group, tasks = group_of(db)
    memory = {1: JobState.RUNNING}
    db.state = dict(memory)
    waiter = asyncio.create_task(group.submit(1, lambda: move(db, 1, memory, JobState.FAILED)))
    for _ in range(turns):
        await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert memory[1] == JobState.RUNNING
    # The next change starts a new flush.
    assert await group.submit(1, lambda: move(db, 1, memory, JobState.FAILED))
