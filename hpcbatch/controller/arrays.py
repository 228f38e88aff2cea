"""Array jobs in the controller: a parent's state follows its children.

A parent never runs; its children do. The parent's state is a summary kept
up to date from counts of its children's states (O(1) per child change, so
a 10,000-child array costs nothing per event), written to the store when it
changes, with the counts in the reason (`12 SUCCEEDED, 3 RUNNING, 985 RUNNABLE`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from hpcbatch.core.arrays import parent_state
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store


def describe_counts(counts: Counter[JobState]) -> str:
    order = [
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.RUNNING,
        JobState.STARTING,
        JobState.RUNNABLE,
        JobState.PENDING,
        JobState.SUBMITTED,
    ]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


class ArrayTracker:
    """Child state counts per parent, and the parents' summary states."""

    def __init__(
        self,
        store: Store,
        publish: Callable[[JobRecord], None],
        parents: dict[int, JobRecord],
        finished: Callable[[int], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.store = store
        self.publish = publish
        self.parents = parents
        self.finished = finished
        self.spawn = spawn
        self._scheduled = False
        self.counts: dict[int, Counter[JobState]] = {}
        self._seen: dict[int, JobState] = {}
        self._dirty: set[int] = set()

    def add_parent(self, parent: JobRecord) -> None:
        self.parents[parent.id] = parent
        self.counts.setdefault(parent.id, Counter())

    def seed(self, parent_id: int, counts: Counter[JobState]) -> None:
        """Counts of children not held in memory (final ones, after a restart)."""
        self.counts.setdefault(parent_id, Counter()).update(counts)

    def children_added(self, parent_id: int, child_ids: list[int], state: JobState) -> None:
        """Count a new array's children, all in `state`, at once (no per-child calls)."""
        if parent_id not in self.parents or not child_ids:
            return
        self.counts[parent_id][state] += len(child_ids)
        if not state.is_final:
            self._seen.update(dict.fromkeys(child_ids, state))
        self._dirty.add(parent_id)

    def child_changed(self, child: JobRecord) -> None:
        """Count a child's new state; the parent is updated by `flush`."""
        parent_id = child.array_parent
        if parent_id is None or parent_id not in self.parents:
            return
        old = self._seen.get(child.id)
        if old == child.state:
            return
        counts = self.counts[parent_id]
        if old is not None:
            counts[old] -= 1
        counts[child.state] += 1
        if child.state.is_final:
            self._seen.pop(child.id, None)
        else:
            self._seen[child.id] = child.state
        self._dirty.add(parent_id)
        if not self._scheduled:
            self._scheduled = True
            self.spawn(self._flush_soon(), "array-summary")

    async def _flush_soon(self) -> None:
        self._scheduled = False
        await self.flush()

    def forget(self, child_id: int) -> None:
        self._seen.pop(child_id, None)

    async def flush(self) -> list[JobRecord]:
        """Write the summary of every parent whose children changed; returns the finished ones."""
        finished: list[JobRecord] = []
        dirty, self._dirty = self._dirty, set()
        now = time.time()
        for parent_id in sorted(dirty):
            parent = self.parents.get(parent_id)
            if parent is None or parent.array_size is None:
                continue
            counts = self.counts[parent_id]
            state = parent_state(counts)
            reason = describe_counts(counts)
            if state == parent.state and reason == parent.reason:
                continue
            if state != parent.state:
                ended = now if state.is_final else None
                await self.store.set_summary_state(parent_id, state, reason, now, ended=ended)
                if state == JobState.RUNNING and parent.started is None:
                    parent.started = now
                parent.state, parent.ended = state, ended
            parent.reason = reason
            self.publish(parent)
            if state.is_final:
                finished.append(parent)
                del self.parents[parent_id]
                del self.counts[parent_id]
                self.finished(parent_id)
        return finished
