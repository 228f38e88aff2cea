"""Job steps reported by srun: each `srun` inside a job is a step `JOB.STEP`.

A job's srun reports its step to its node's agent over the relay socket (the
same one hpcbatch-rsh uses, authenticated by the attempt's relay token); the
agent sends a `job_step` event on its channel. Here the event is checked (the
attempt must be a live node of that job on the host that sent it) and the
step's start or end is written to the store's `job_steps` table, with the
controller's clock. Shown by `hpcbatch show`; per-step accounting joins on it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hpcbatch.controller.jobs import JobService
from hpcbatch.core.records import AttemptState, JobRecord, parse_attempt_id
from hpcbatch.store.steps import StepRow, StepsTable, StepUsage

log = logging.getLogger(__name__)

LIVE = (AttemptState.STARTING, AttemptState.RUNNING)
STEP_EVENT = "job_step"
MAX_COMMAND = 4096


class StepService:
    def __init__(self, jobs: JobService, table: StepsTable) -> None:
        self.jobs = jobs
        self.table = table
        self.open: set[int] = set()  # jobs with a step reported since the controller started
        jobs.observe(self.job_changed)

    def job_changed(self, job: JobRecord) -> None:
        """A job that ended closes its steps that never reported an end (srun was killed)."""
        if job.id in self.open and job.state.is_final:
            self.open.discard(job.id)
            self.jobs.spawn(self.table.close_open(job.id, job.ended or time.time()),
                            name=f"steps of {job.id}")  # fmt: skip

    def on_event(self, host: str, ev: dict[str, Any]) -> None:
        """A `job_step` event from `host`'s agent: record it if it is that job's own."""
        try:
            job_id, attempt, node = parse_attempt_id(str(ev.get("attempt")))
            step = ev.get("step") or {}
            number = int(step["step"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: malformed step report %r", host, ev)
            return
        job = self.jobs.live(job_id)
        if (
            job is None
            or job.attempt != attempt
            or not any(
                a.node == node and a.host == host and a.state in LIVE
                for a in self.jobs.current_attempts(job)
            )
        ):
            log.warning("%s: step report for job %s, not running there", host, job_id)
            return
        now = time.time()
        self.open.add(job_id)
        if step.get("phase") == "end":
            code = int(step.get("exit_code") or 0)
            write = self.table.ended(job_id, attempt, number, now, code, step_usage(step))
        else:
            row = StepRow(
                job_id, attempt, number, str(step.get("command") or "")[:MAX_COMMAND],
                int(step.get("ntasks") or 0), int(step.get("nodes") or 0),
                str(step.get("node_list") or ""), now,
            )  # fmt: skip
            write = self.table.started(row)
        self.jobs.spawn(write, name=f"step {job_id}.{number}")


def step_usage(step: dict[str, Any]) -> StepUsage:
    """The usage in a step's end report (srun's node's tasks); a figure that is not a
    number is left out, not trusted."""

    def num(key: str) -> float | None:
        value = step.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            return None
        return float(value)

    peak = num("mem_peak_bytes")
    return StepUsage(num("cpu_user_s"), num("cpu_sys_s"), None if peak is None else int(peak))
