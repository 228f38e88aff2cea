"""Cancel and terminate, as `scancel` does: by ids, array children, or filters.

Targets are job ids (`12`), array children (`12_7`), whole arrays (the
parent's id: every child still live), or filters (user, queue, name, states)
over the live jobs. This module only finds the jobs; `JobService.cancel` (the
one cancel path) fails those that have not started in bulk, one store
transaction for all of them, so cancelling a 10,000-child array is quick, and
terminates STARTING and RUNNING ones through their hosts.
"""

from __future__ import annotations

import re
from typing import Any

from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store

TARGET_RE = re.compile(r"^(\d+)(?:_(\d+))?$")


async def _resolve(
    jobs: JobService, store: Store, text: str
) -> tuple[str | int, list[JobRecord] | str]:
    """A target as the live jobs it names, or a message why none."""
    m = TARGET_RE.match(text.strip())
    if m is None:
        return text, "not a job id (give N or ARRAY_INDEX)"
    label: str | int = int(text) if text.strip().isdigit() else text.strip()
    job_id = int(m.group(1))
    if m.group(2) is not None:
        index = int(m.group(2))
        rows = await store.jobs.list_jobs(array_parents=[job_id], limit=1_000_000)
        child = next((j for j in rows if j.array_index == index), None)
        if child is None:
            return label, "not found"
        job_id = child.id
    parent = jobs.array_parents.get(job_id)
    if parent is not None:
        children = [j for j in jobs.live_jobs() if j.array_parent == job_id]
        return label, children
    live = jobs.live(job_id)
    if live is not None:
        return label, [live]
    stored = await store.jobs.get_job(job_id)
    return label, "not found" if stored is None else f"already {stored.state}"


def _matches(job: JobRecord, args: dict[str, Any]) -> bool:
    states = {str(s).upper() for s in args.get("states") or []}
    return (
        (args.get("user") is None or job.user == args["user"])
        and (args.get("queue") is None or job.queue == args["queue"])
        and (args.get("name") is None or job.name == args["name"])
        and (not states or str(job.state) in states)
    )


async def cancel_jobs(
    jobs: JobService, store: Store, arrays: ArrayTracker, args: dict[str, Any], caller: Caller
) -> list[dict[str, Any]]:
    targets = [str(t) for t in args.get("job_ids") or []]
    filters = any(args.get(k) for k in ("user", "queue", "name", "states"))
    if not targets and not filters:
        raise ApiError("bad_request", "name jobs to cancel, or filters (user, queue, name, states)")
    for s in args.get("states") or []:
        if str(s).upper() not in JobState.__members__:
            raise ApiError("bad_request", f"unknown state {s!r}")
    results: list[dict[str, Any]] = []
    chosen: dict[int, JobRecord] = {}
    for text in targets:
        label, found = await _resolve(jobs, store, text)
        if isinstance(found, str):
            results.append({"job_id": label, "result": found})
            continue
        for job in found:
            if _matches(job, args):
                chosen.setdefault(job.id, job)
    if not targets:
        for job in jobs.live_jobs():
            if _matches(job, args):
                chosen[job.id] = job
    allowed = []
    for job in chosen.values():
        if job.uid != caller.uid and not caller.admin:
            forbidden = "forbidden: not your job"
            results.append({"job_id": job.id, "display_id": job.display_id, "result": forbidden})
        else:
            allowed.append(job)
    results += await jobs.cancel(allowed, caller.user, args.get("reason"))
    # Array parents follow their children: their summaries are written before the reply.
    await arrays.flush()
    return results
