"""Dependencies in the controller: PENDING jobs released or failed as others settle.

A job submitted with `--dependency` starts PENDING. The tracker indexes it by
the jobs it waits for; when one of those changes state it re-evaluates only
the jobs that wait for it (no scan of every pending job), then moves the
satisfied ones to RUNNABLE and fails the impossible ones, each in one store
transaction, with a reason naming the dependency.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hpcbatch.controller.callers import ApiError
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.arrays import ArraySpec, parse_spec
from hpcbatch.core.dependencies import (
    Dependency,
    DependencyError,
    DepType,
    JobRef,
    Outcome,
    Verdict,
    evaluate,
    parse,
    validate,
)
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store

if TYPE_CHECKING:
    from hpcbatch.controller.arrays import ArrayTracker

RELEASED = "Resources: waiting for the scheduler"


class DependencyTracker:
    def __init__(self, jobs: JobService, arrays: ArrayTracker, store: Store) -> None:
        self.jobs = jobs
        self.arrays = arrays
        self.store = store  # for reads only: jobs that are final, or array children
        self.waiting: dict[int, list[Dependency]] = {}
        # ("job", id): waits for that job; ("child", parent, index): for that array child.
        self.by_target: dict[tuple[object, ...], set[int]] = {}
        self.by_name: dict[tuple[str, str], set[int]] = {}
        self._dirty: set[int] = set()
        self._final: dict[int, JobState] = {}
        self._children: dict[int, dict[int, int]] = {}
        self._indices: dict[int, list[int]] = {}
        self._scheduled = False  # the composition root makes `changed` observe the jobs

    # ------------------------------------------------------------------ submit

    async def check_targets(self, deps: Sequence[Dependency], spec: ArraySpec | None) -> None:
        """Refuse unknown jobs and impossible array pairings, at submit.

        A new job can name only jobs that already exist, so it cannot close a cycle.
        """
        known: dict[JobRef, bool] = {}
        arrays: dict[int, list[int] | None] = {}
        for dep in deps:
            ref = dep.target
            if ref is None:
                continue
            known[ref] = await self._ref_state(ref) is not None
            if dep.type == DepType.N_TO_N:
                children = await self._children_of(ref.job)
                arrays[ref.job] = sorted(children) if children else None
        try:
            validate(
                deps,
                exists=lambda r: known.get(r, False),
                array_indices=lambda job: arrays.get(job),
                own_indices=None if spec is None else spec.indices,
            )
        except DependencyError as exc:
            raise ApiError("bad_request", str(exc)) from None

    def watch(self, job: JobRecord) -> None:
        deps = list(parse(job.spec.dependency or ""))
        self.waiting[job.id] = deps
        for dep in deps:
            for target in self._targets(job, dep):
                self.by_target.setdefault(target, set()).add(job.id)
            if dep.type == DepType.SINGLETON:
                self.by_name.setdefault((job.user, job.name), set()).add(job.id)
        self._dirty.add(job.id)

    # ------------------------------------------------------------------ events

    def changed(self, job: JobRecord) -> None:
        if job.state.is_final:
            self._final[job.id] = job.state
        for waiter in self.by_target.get(("job", job.id), ()):
            self._dirty.add(waiter)
        if job.array_parent is not None:
            for waiter in self.by_target.get(("child", job.array_parent, job.array_index), ()):
                self._dirty.add(waiter)
        if job.state.is_final or job.state == JobState.RUNNING:
            for waiter in self.by_name.get((job.user, job.name), ()):
                self._dirty.add(waiter)
        if self._dirty and not self._scheduled:
            self._scheduled = True
            self.jobs.spawn(self._settle_soon(), "dependencies")

    async def _settle_soon(self) -> None:
        self._scheduled = False
        await self.settle()

    async def settle(self) -> None:
        """Release or fail every dirty waiter whose dependencies have settled."""
        dirty, self._dirty = self._dirty, set()
        release: list[int] = []
        fail: dict[str, list[int]] = {}
        reasons: dict[int, str] = {}
        for job_id in sorted(dirty):
            job = self.jobs.live(job_id)
            deps = self.waiting.get(job_id)
            if job is None or deps is None or job.state != JobState.PENDING:
                self._unwatch(job_id, job)
                continue
            if job.hold:
                continue  # held: still watched; `release` asks again (controller.control)
            verdict = await self._verdict(job, deps)
            if verdict.outcome == Outcome.SATISFIED:
                release.append(job_id)
            elif verdict.outcome == Outcome.NEVER:
                fail.setdefault(f"DependencyNeverSatisfied: {verdict.reason}", []).append(job_id)
            else:
                reasons[job_id] = verdict.reason or "Dependency: waiting"
        self.jobs.note_reasons(reasons)
        if release:
            await self._move(release, JobState.RUNNABLE, RELEASED)
            self.jobs.wake_scheduler()
        for reason, ids in fail.items():
            await self._move(ids, JobState.FAILED, reason)
        await self.arrays.flush()

    async def _move(self, ids: Iterable[int], new: JobState, reason: str) -> None:
        for job in await self.jobs.move_pending(ids, new, reason):
            self._unwatch(job.id, job)

    def _unwatch(self, job_id: int, job: JobRecord | None) -> None:
        deps = self.waiting.pop(job_id, None)
        if not deps or job is None:
            return
        for dep in deps:
            for target in self._targets(job, dep):
                waiters = self.by_target.get(target)
                if waiters is not None:
                    waiters.discard(job_id)
                    if not waiters:
                        del self.by_target[target]
        self.by_name.get((job.user, job.name), set()).discard(job_id)

    # ------------------------------------------------------------------ evaluation

    def _targets(self, job: JobRecord, dep: Dependency) -> list[tuple[object, ...]]:
        if dep.type == DepType.SEQUENTIAL:
            prev = self._previous_index(job)
            return [] if prev is None else [("child", job.array_parent, prev)]
        ref = dep.target
        if ref is None:
            return []
        if dep.type == DepType.N_TO_N:
            return [("child", ref.job, job.array_index)]
        if ref.index is not None:
            return [("child", ref.job, ref.index)]
        return [("job", ref.job)]

    def _previous_index(self, job: JobRecord) -> int | None:
        """The index before this child's in its array (SEQUENTIAL runs in index order)."""
        if job.array_parent is None or job.array_index is None:
            return None
        indices = self._indices.get(job.array_parent)
        if indices is None:
            spec = parse_spec(job.spec.array or "")
            indices = self._indices[job.array_parent] = list(spec.indices)
        at = bisect.bisect_left(indices, job.array_index)
        return indices[at - 1] if at > 0 else None

    async def _verdict(self, job: JobRecord, deps: Sequence[Dependency]) -> Verdict:
        own = JobRef(job.array_parent, job.array_index) if job.array_parent is not None else None
        previous = self._previous_index(job)
        refs: set[JobRef] = set()
        for dep in deps:
            if dep.type == DepType.SEQUENTIAL and own is not None and previous is not None:
                refs.add(JobRef(own.job, previous))
            elif dep.type == DepType.N_TO_N and dep.target is not None and own is not None:
                refs.add(JobRef(dep.target.job, own.index))
            elif dep.target is not None:
                refs.add(dep.target)
        states = {ref: await self._ref_state(ref) for ref in refs}
        blockers = (
            self._singleton_blockers(job) if any(d.type == DepType.SINGLETON for d in deps) else []
        )
        return evaluate(
            deps,
            states.get,
            own=own,
            previous_index=previous,
            singleton_blockers=blockers,
        )

    def _singleton_blockers(self, job: JobRecord) -> list[int]:
        """Other jobs of this name and user that run, or wait ahead of this one (Slurm)."""
        return [
            other.id
            for other in self.jobs.live_jobs()
            if other.id != job.id
            and other.user == job.user
            and other.name == job.name
            and (other.state.is_active or other.id < job.id)
        ]

    async def _ref_state(self, ref: JobRef) -> JobState | None:
        if ref.index is None:
            return await self._state(ref.job, None)
        child = await self._child(ref.job, ref.index)
        return None if child is None else await self._state(child, None)

    async def _children_of(self, parent_id: int) -> dict[int, int]:
        children = self._children.get(parent_id)
        if children is None:
            rows = await self.store.jobs.list_jobs(array_parents=[parent_id], limit=1_000_000)
            children = {j.array_index: j.id for j in rows if j.array_index is not None}
            self._children[parent_id] = children
        return children

    async def _child(self, parent_id: int, index: int | None) -> int | None:
        if index is None:
            return None
        return (await self._children_of(parent_id)).get(index)

    async def _state(self, job_id: int, default: JobState | None) -> JobState | None:
        live = self.jobs.live(job_id) or self.arrays.parents.get(job_id)
        if live is not None:
            return live.state
        if job_id in self._final:
            return self._final[job_id]
        stored = await self.store.jobs.get_job(job_id)
        if stored is None:
            return default
        if stored.state.is_final:
            self._final[job_id] = stored.state
        return stored.state
