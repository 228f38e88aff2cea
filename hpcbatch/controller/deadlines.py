"""`--deadline` kept with a timer: waiting jobs that can no longer make it, running ones at it.

The scheduler's pass fails a RUNNABLE job it looks at that could not end by its
deadline, but a pass runs only when something wakes it, and it never looks at
PENDING jobs (held, or waiting on dependencies) nor at running ones. This watch
does the rest, as Slurm does: it follows every job with a deadline (a job
observer) and keeps one timer for the earliest moment one of them must be looked
at (`core.jobcontrol.deadline_due`). Then the pure `deadline_reason` decides: a
waiting job fails (`JobService.fail_job`), a started one is ended through its
hosts (`JobService.cancel`), both with the reason `DeadLine: ...` (Slurm's
DEADLINE state is hpcbatch's FAILED with that reason).

Only jobs with a deadline enter its heap; one that changed (updated, started)
gets a new entry and its old one is skipped when it comes up.
"""

from __future__ import annotations

import asyncio
import heapq
import time

from hpcbatch.controller.jobs import JobService
from hpcbatch.core.jobcontrol import deadline_due, deadline_reason
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState

__all__ = ["DeadlineWatch"]


class DeadlineWatch:
    """One timer over the jobs with a `--deadline`."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self._due: dict[int, float] = {}  # job id -> when it is looked at
        self._heap: list[tuple[float, int]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = False

    def load(self) -> None:
        """After a (re)start: every live job's deadline, from the store's records."""
        for job in self.jobs.live_jobs():
            self.changed(job)

    def changed(self, job: JobRecord) -> None:
        """A job observer: (re)schedule a look at a job with a deadline."""
        deadline = job.request.get("deadline")
        if deadline is None or job.state.is_final or job.is_array_parent:
            self._due.pop(job.id, None)
            return
        due = deadline_due(job.state, float(deadline), job.spec.time_limit_s)
        if self._due.get(job.id) == due:
            return
        self._due[job.id] = due
        heapq.heappush(self._heap, (due, job.id))
        self._arm()

    def stop(self) -> None:
        """The controller stops: nothing fires or is armed again."""
        self._stopped = True
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, None

    def _arm(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # stale: the job changed or ended since
        if not self._heap or self._stopped:
            self._cancel()
            return
        at = self._heap[0][0]
        if self._timer_at is not None and self._timer_at <= at:
            return
        self._cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - time.time()) + 0.01, self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, None
        now = time.time()
        while self._heap and self._heap[0][0] <= now:
            due, job_id = heapq.heappop(self._heap)
            if self._due.get(job_id) != due:
                continue
            del self._due[job_id]
            job = self.jobs.live(job_id)
            if job is not None:
                self._look(job, now)
        self._arm()

    def _look(self, job: JobRecord, now: float) -> None:
        deadline = job.request.get("deadline")
        if deadline is None:
            return
        why = deadline_reason(job.state, float(deadline), job.spec.time_limit_s, now)
        if why is None:
            self.changed(job)  # not yet (its limit was lowered meanwhile): look again later
        elif job.state in (JobState.STARTING, JobState.RUNNING):
            self.jobs.spawn(self.jobs.cancel([job], "controller", why), f"deadline-{job.id}")
        else:
            self.jobs.spawn(self.jobs.fail_job(job, why), f"deadline-{job.id}")
