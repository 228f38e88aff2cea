"""Dependencies in the controller: PENDING jobs released or failed as others settle.

A job submitted with `--dependency` starts PENDING. The tracker indexes it by
the jobs it waits for; when one of those changes state it re-evaluates only
the jobs that wait for it (no scan of every pending job), then moves the
satisfied ones to RUNNABLE and fails the impossible ones, each in one store
transaction, with a reason naming the dependency.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hpcbatch.controller.jobs import ApiError, JobService
from hpcbatch.core.arrays import ArraySpec, parse_array
from hpcbatch.core.dependencies import Dependency, Verdict, evaluate, parse_dependencies
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState

if TYPE_CHECKING:
    from hpcbatch.controller.arrays import ArrayTracker

RELEASED = "Resources: waiting for the scheduler"


class DependencyTracker:
    def __init__(self, jobs: JobService, arrays: ArrayTracker) -> None:
        self.jobs = jobs
        self.arrays = arrays
        self.waiting: dict[int, list[Dependency]] = {}
        # ("job", id): waits for that job; ("child", parent, index): for that array child.
        self.by_target: dict[tuple[object, ...], set[int]] = {}
        self.by_name: dict[tuple[str, str], set[int]] = {}
        self._dirty: set[int] = set()
        self._final: dict[int, JobState] = {}
        self._children: dict[int, dict[int, int]] = {}
        self._indices: dict[int, list[int]] = {}
        self._scheduled = False
        jobs.observers.append(self._changed)

    # ------------------------------------------------------------------ submit

    async def check_targets(
        self, deps: Sequence[Dependency], name: str, user: str, spec: ArraySpec | None
    ) -> None:
        """Refuse unknown jobs and array-only kinds on plain jobs, at submit."""
        for dep in deps:
            if dep.kind in ("sequential", "n_to_n") and spec is None:
                raise ApiError("bad_request", f"--dependency {dep}: only for array jobs")
            if dep.job_id is None:
                continue
            target = dep.job_id
            if dep.index is not None:
                child = await self._child(dep.job_id, dep.index)
                if child is None:
                    raise ApiError("bad_request", f"--dependency {dep}: no such array child")
                target = child
            if await self._state(target, None) is None:
                raise ApiError("bad_request", f"--dependency {dep}: job {dep.job_id} not found")
            if dep.kind == "n_to_n":
                parent = self.arrays.parents.get(dep.job_id) or await self.jobs.store.get_job(
                    dep.job_id
                )
                if parent is None or parent.array_size is None:
                    raise ApiError(
                        "bad_request", f"--dependency {dep}: job {dep.job_id} is not an array"
                    )
        # A new job can name only jobs that already exist, so it cannot close a cycle.

    def watch(self, job: JobRecord) -> None:
        deps = parse_dependencies(str(job.request.get("dependency") or ""))
        self.waiting[job.id] = deps
        for dep in deps:
            for target in self._targets(job, dep):
                self.by_target.setdefault(target, set()).add(job.id)
            if dep.kind == "singleton":
                self.by_name.setdefault((job.user, job.name), set()).add(job.id)
        self._dirty.add(job.id)

    # ------------------------------------------------------------------ events

    def _changed(self, job: JobRecord) -> None:
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
            job = self.jobs.active.get(job_id)
            deps = self.waiting.get(job_id)
            if job is None or deps is None or job.state != JobState.PENDING:
                self._unwatch(job_id, job)
                continue
            verdict = await self._verdict(job, deps)
            if verdict.kind == "satisfied":
                release.append(job_id)
            elif verdict.kind == "never":
                fail.setdefault(verdict.reason, []).append(job_id)
            else:
                reasons[job_id] = verdict.reason
        for job_id, reason in reasons.items():
            job = self.jobs.active[job_id]
            if job.reason != reason:
                job.reason = reason
                self.jobs.publish(job)
        if release:
            await self._move(release, JobState.RUNNABLE, RELEASED)
            self.jobs.wake_scheduler()
        for reason, ids in fail.items():
            await self._move(ids, JobState.FAILED, reason)
        await self.arrays.flush()

    async def _move(self, ids: Iterable[int], new: JobState, reason: str) -> None:
        now = time.time()
        async with self.jobs.lock:
            moved = await self.jobs.store.bulk_transition(
                list(ids),
                [JobState.PENDING],
                new,
                reason,
                now,
                ended=now if new.is_final else None,
            )
            for job_id, _old in moved:
                job = self.jobs.active[job_id]
                job.state, job.reason = new, reason
                self._unwatch(job_id, job)
                if new.is_final:
                    job.ended = now
                    self.jobs._finished(job)
                else:
                    self.jobs.publish(job)

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
        if dep.kind == "sequential":
            prev = self._previous_index(job)
            return [] if prev is None else [("child", job.array_parent, prev)]
        if dep.kind == "n_to_n":
            return [("child", dep.job_id, job.array_index)]
        if dep.index is not None:
            return [("child", dep.job_id, dep.index)]
        return [] if dep.job_id is None else [("job", dep.job_id)]

    def _previous_index(self, job: JobRecord) -> int | None:
        """The index before this child's in its array (SEQUENTIAL runs in index order)."""
        if job.array_parent is None or job.array_index is None:
            return None
        indices = self._indices.get(job.array_parent)
        if indices is None:
            spec = parse_array(str(job.request.get("array") or ""))
            indices = self._indices[job.array_parent] = list(spec.indices)
        at = bisect.bisect_left(indices, job.array_index)
        return indices[at - 1] if at > 0 else None

    async def _verdict(self, job: JobRecord, deps: Sequence[Dependency]) -> Verdict:
        states: dict[str, JobState | None] = {}
        for dep in deps:
            key = str(dep)
            if dep.kind == "singleton":
                states[key] = self._singleton_state(job)
            elif dep.kind == "sequential":
                prev = self._previous_index(job)
                if prev is None:  # the first child waits for nothing
                    states[key] = JobState.SUCCEEDED
                else:
                    assert job.array_parent is not None
                    child = await self._child(job.array_parent, prev)
                    states[key] = None if child is None else await self._state(child, None)
            elif dep.kind == "n_to_n" and dep.job_id is not None:
                child = await self._child(dep.job_id, job.array_index)
                states[key] = None if child is None else await self._state(child, None)
            elif dep.job_id is not None and dep.index is not None:
                child = await self._child(dep.job_id, dep.index)
                states[key] = None if child is None else await self._state(child, None)
            elif dep.job_id is not None:
                states[key] = await self._state(dep.job_id, None)
        return evaluate(deps, states)

    def _singleton_state(self, job: JobRecord) -> JobState:
        """RUNNING while another job of the same name and user runs, or an older one waits.

        That is Slurm's singleton: one such job at a time, in submission order.
        """
        for other in self.jobs.active.values():
            if other.id == job.id or other.user != job.user or other.name != job.name:
                continue
            if other.state.is_active or other.id < job.id:
                return JobState.RUNNING
        return JobState.SUCCEEDED

    async def _child(self, parent_id: int, index: int | None) -> int | None:
        if index is None:
            return None
        children = self._children.get(parent_id)
        if children is None:
            rows = await self.jobs.store.list_jobs(array_parents=[parent_id], limit=1_000_000)
            children = {j.array_index: j.id for j in rows if j.array_index is not None}
            self._children[parent_id] = children
        return children.get(index)

    async def _state(self, job_id: int, default: JobState | None) -> JobState | None:
        live = self.jobs.active.get(job_id) or self.arrays.parents.get(job_id)
        if live is not None:
            return live.state
        if job_id in self._final:
            return self._final[job_id]
        stored = await self.jobs.store.get_job(job_id)
        if stored is None:
            return default
        if stored.state.is_final:
            self._final[job_id] = stored.state
        return stored.state
