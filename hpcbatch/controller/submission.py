"""Submissions that are more than one plain job: arrays, and jobs with dependencies.

A plain job goes straight to `JobService.submit`. An array is stored in one
transaction (a parent row with the request, one small row per child) and its
children join the active jobs; a job with dependencies starts PENDING and the
`DependencyTracker` releases it (RUNNABLE) or fails it when they settle.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.deps import DependencyTracker
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.arrays import ArraySpecError, parse_spec
from hpcbatch.core.dependencies import DependencyError, parse
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.store.db import NewJob


class Submitter:
    """The API's `submit`: plain jobs, arrays and dependent jobs."""

    def __init__(self, jobs: JobService, arrays: ArrayTracker, deps: DependencyTracker) -> None:
        self.jobs = jobs
        self.arrays = arrays
        self.deps = deps
        jobs.set_aside = self._set_aside

    def _set_aside(self, job: JobRecord) -> bool:
        """On load: parents go to the array tracker, not to the runnable jobs."""
        if job.is_array_parent:
            self.arrays.add_parent(job)
            return True
        return False

    async def load(self) -> None:
        """After `JobService.load`: child counts of each live parent, dependency watches."""
        for parent_id in list(self.arrays.parents):
            done = await self.jobs.store.list_jobs(
                array_parents=[parent_id],
                states=[str(JobState.SUCCEEDED), str(JobState.FAILED)],
                limit=1_000_000,
            )
            self.arrays.seed(parent_id, Counter(j.state for j in done))
        for job in self.jobs.active.values():
            self.arrays.child_changed(job)
            if job.state == JobState.PENDING:
                self.deps.watch(job)
        await self.arrays.flush()
        await self.deps.settle()

    async def submit(self, raw: Any, caller: Caller) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ApiError("bad_request", "request must be an object")
        array_text = raw.get("array")
        dep_text = raw.get("dependency")
        if not array_text and not dep_text:
            return {"job_id": await self.jobs.submit(raw, caller)}
        req, queue = self.jobs.check_request(raw)
        spec = None
        if array_text:
            try:
                spec = parse_spec(str(array_text))
            except ArraySpecError as exc:
                raise ApiError("bad_request", f"--array: {exc}") from None
        dependencies = []
        if dep_text:
            try:
                dependencies = list(parse(str(dep_text)))
            except DependencyError as exc:
                raise ApiError("bad_request", f"--dependency: {exc}") from None
            await self.deps.check_targets(dependencies, spec)
        request = req.model_dump(mode="json")
        request["queue"] = queue
        if spec is not None:
            request["array_throttle"] = spec.throttle
            request["array_count"] = len(spec.indices)
            request["array_min"] = min(spec.indices)
            request["array_max"] = max(spec.indices)
        now = time.time()
        state = JobState.PENDING if dependencies else JobState.RUNNABLE
        reason = "Dependency: waiting" if dependencies else "Resources: waiting for the scheduler"
        new = NewJob(req.name, caller.user, caller.uid, queue, request, now)
        async with self.jobs.lock:
            if spec is None:
                (job_id,) = await self.jobs.store.insert_jobs([new], state, reason)
                records = [self._record(job_id, new, request, state, reason)]
                parent = None
            else:
                job_id, child_ids = await self.jobs.store.insert_array(
                    new, spec.indices, state, reason
                )
                parent = self._record(job_id, new, request, JobState.PENDING, reason)
                parent.array_size = len(child_ids)
                records = []
                for child_id, index in zip(child_ids, spec.indices, strict=True):
                    child = self._record(child_id, new, request, state, reason)
                    child.array_parent, child.array_index = job_id, index
                    records.append(child)
                self.arrays.add_parent(parent)
            for rec in records:
                self.jobs.active[rec.id] = rec
        if parent is not None:
            self.jobs.publish(parent)
        if parent is not None and not dependencies:
            # New children: no job can depend on them yet and none is final, so of the
            # observers only the array counts care, and those take them in one call
            # (per child, the observers cost 5 us each: 50 ms for 10,000 children).
            for rec in records:
                self.jobs.publish_summary(rec)
            self.arrays.children_added(parent.id, [r.id for r in records], state)
        else:
            for rec in records:
                self.jobs.publish(rec)
                if dependencies:
                    self.deps.watch(rec)
        await self.arrays.flush()
        if dependencies:
            await self.deps.settle()
        else:
            self.jobs.wake_scheduler()
        out: dict[str, Any] = {"job_id": job_id}
        if spec is not None:
            out["array_size"] = len(spec.indices)
        return out

    @staticmethod
    def _record(
        job_id: int, new: NewJob, request: dict[str, Any], state: JobState, reason: str
    ) -> JobRecord:
        return JobRecord(
            id=job_id,
            name=new.name,
            user=new.user,
            uid=new.uid,
            queue=new.queue,
            state=state,
            reason=reason,
            request=request,
            submitted=new.submitted,
        )
