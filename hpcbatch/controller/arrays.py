"""Array jobs in the controller: a parent's state follows its children.

A parent never runs; its children do. The parent's state is a summary kept
up to date from counts of its children's states (O(1) per child change, so
a 10,000-child array costs nothing per event), written to the store when it
changes (through `JobService.summarize_parent`), with the counts in the reason
(`12 SUCCEEDED, 3 RUNNING, 985 RUNNABLE`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from hpcbatch.core.arrays import parent_state
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState


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
        parents: Mapping[int, JobRecord],
        summarize: Callable[[JobRecord, JobState, str, float], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
    ) -> None:
        self.parents = parents  # the job service's live parents (a view: it adds, drops them)
        self.summarize = summarize  # the job service's intent that writes a parent's summary
        self.spawn = spawn
        self._scheduled = False
        self.counts: dict[int, Counter[JobState]] = {}
        self._seen: dict[int, JobState] = {}
        self._dirty: set[int] = set()

    def seed(self, parent_id: int, counts: Counter[JobState]) -> None:
        """Counts of children not held in memory (final ones, after a restart); the
        parent's summary is checked against them at the next flush."""
        self.counts.setdefault(parent_id, Counter()).update(counts)
        self._dirty.add(parent_id)

    def recount(self, parent_id: int, finished: Counter[JobState]) -> None:
        """A revived parent's counts afresh: its finished children, from the store (a
        requeued child is counted by `reopened`; without one, the parent ends again)."""
        if parent_id in self.parents:
            self.counts[parent_id] = Counter(finished)
            self._mark(parent_id)

    def children_added(self, parent_id: int, child_ids: list[int], state: JobState) -> None:
        """Count a new array's children, all in `state`, at once (no per-child calls)."""
        if parent_id not in self.parents or not child_ids:
            return
        self.counts.setdefault(parent_id, Counter())[state] += len(child_ids)
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
        counts = self.counts.setdefault(parent_id, Counter())
        if old is not None:
            counts[old] -= 1
        counts[child.state] += 1
        if child.state.is_final:
            self._seen.pop(child.id, None)
        else:
            self._seen[child.id] = child.state
        self._mark(parent_id)

    def reopened(self, child: JobRecord, old: JobState, finished: Counter[JobState] | None) -> None:
        """A finished child requeued (`requeue 12_3`): its old final state leaves its
        parent's counts. `finished`: the parent had ended too and is live again; its
        other children's final states, counted afresh from the store."""
        parent_id = child.array_parent
        if parent_id is None or parent_id not in self.parents:
            return
        if finished is None:
            self.counts.setdefault(parent_id, Counter())[old] -= 1
            self._mark(parent_id)
            return
        self.recount(parent_id, finished)
        self._seen.pop(child.id, None)
        self.child_changed(child)  # where it is now (it may have run and ended meanwhile)

    def _mark(self, parent_id: int) -> None:
        self._dirty.add(parent_id)
        if not self._scheduled:
            self._scheduled = True
            self.spawn(self._flush_soon(), "array-summary")

    async def _flush_soon(self) -> None:
        self._scheduled = False
        await self.flush()

    async def flush(self) -> None:
        """Write the summary of every parent whose children changed."""
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
            await self.summarize(parent, state, reason, now)
            if state.is_final:
                del self.counts[parent_id]
