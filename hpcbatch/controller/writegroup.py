"""Group commit for the job service's per-job intents (a launch reply, an exit).

Why it exists: every job makes two writes of its own after its start, the
launch reply (STARTING -> RUNNING) and its exit. Made one at a time, each under
the job service's lock and each a round trip to the database, they were the
controller's throughput bound (a lock queue of thousands when thousands of jobs
end per second) and what a user's `submit` waited behind (seconds to tens of
seconds at 5,000 hosts; docs/scale.md). Here they queue, and one flush takes
the lock once for a whole group: it decides each change on the committed
in-memory state, writes them all in one transaction (`JobsTable.write_group`),
applies each one's outcome, and wakes each caller, who sees the same result
and the same exceptions as before, only sooner.

A group holds at most one change per job: a second change to a job already in
the group (a gang's other node, an exit overtaking its launch reply) waits for
the next group, so it is decided on the state the first one left, as when each
write held the lock alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from hpcbatch.store.db import JobWrite

GROUP_MAX = 256  # changes per transaction: bounds how long one flush holds the lock


@dataclass(slots=True)
class Change:
    """What one intent writes, and how it applies the outcome to memory: `apply` gets
    one result per write (False: that compare-and-set found the job moved)."""

    writes: list[JobWrite]
    apply: Callable[[list[bool]], None]


Decide = Callable[[], Change | None]
"""Decides a change on the current state, under the lock; None: nothing to write."""


@dataclass(slots=True)
class _Item:
    key: int
    decide: Decide
    done: asyncio.Future[bool]


class WriteGroup:
    """Queues per-job changes and commits them in groups, one flush at a time."""

    def __init__(
        self,
        lock: asyncio.Lock,
        write: Callable[[Sequence[JobWrite]], Awaitable[list[bool]]],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[Any]],
    ) -> None:
        self._lock = lock
        self._write = write
        self._spawn = spawn
        self._queue: deque[_Item] = deque()
        self._flusher: asyncio.Task[Any] | None = None
        self._group: list[_Item] = []  # being committed
        self.groups = 0  # flushes made, and changes written through them (for `stats`)
        self.changes = 0

    async def submit(self, key: int, decide: Decide) -> bool:
        """Decide and write one change to job `key` in the next group; True if there
        was one (`decide` returned a Change), once it is written and applied."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(key, decide, done))
        if self._flusher is None:
            self._flusher = self._spawn(self._flush(), "write-group")
            self._flusher.add_done_callback(self._ended)
        return await done

    def _take(self) -> list[_Item]:
        """The next group: queued changes in order, at most one per job and GROUP_MAX."""
        group: list[_Item] = []
        keys: set[int] = set()
        later: list[_Item] = []
        while self._queue and len(group) < GROUP_MAX:
            item = self._queue.popleft()
            if item.key in keys:
                later.append(item)
            else:
                keys.add(item.key)
                group.append(item)
        self._queue.extendleft(reversed(later))
        return group

    async def _flush(self) -> None:
        while self._queue:
            async with self._lock:
                self._group = self._take()
                await self._commit(self._group)
                self._group = []
        self._flusher = None  # at once: a change queued from now on starts the next flush

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """The flush ended; if it was cancelled (shutdown), nobody waits forever."""
        if task is not self._flusher:
            return  # ended normally (a later flush may be running)
        self._flusher = None
        for item in [*self._group, *self._queue]:
            item.done.cancel()
        self._group = []
        self._queue.clear()

    async def _commit(self, group: list[_Item]) -> None:
        decided: list[tuple[_Item, Change]] = []
        for item in group:
            try:
                change = item.decide()
            except Exception as exc:
                _settle(item, exc)
                continue
            if change is None:
                _settle(item, False)
            else:
                decided.append((item, change))
        if not decided:
            return
        try:
            results = await self._write([w for _, c in decided for w in c.writes])
        except Exception as exc:  # nothing was written: every caller hears why
            for item, _ in decided:
                _settle(item, exc)
            return
        self.groups += 1
        self.changes += len(decided)
        at = 0
        for item, change in decided:
            mine = results[at : at + len(change.writes)]
            at += len(change.writes)
            try:
                change.apply(mine)
            except Exception as exc:
                _settle(item, exc)
            else:
                _settle(item, True)


def _settle(item: _Item, outcome: bool | Exception) -> None:
    """Wake the caller with its outcome, unless it stopped waiting (cancelled)."""
    if item.done.done():
        return
    if isinstance(outcome, Exception):
        item.done.set_exception(outcome)
    else:
        item.done.set_result(outcome)
