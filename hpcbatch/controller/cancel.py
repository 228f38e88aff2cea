"""Cancel and terminate, as `scancel` does: by ids, array children, or filters.

Targets are job ids (`12`), array children (`12_7`), whole arrays (the
parent's id: every child still live), or filters (user, queue, name, states)
over the live jobs. Jobs that have not started are failed in bulk, one store
transaction for all of them, so cancelling a 10,000-child array is quick;
STARTING and RUNNING ones are terminated through their hosts.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.core.records import JobRecord
from hpcbatch.core.states import JobState

if TYPE_CHECKING:
    from hpcbatch.controller.app import Controller

TARGET_RE = re.compile(r"^(\d+)(?:_(\d+))?$")
NOT_STARTED = (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNABLE)


async def _resolve(c: Controller, text: str) -> tuple[str | int, list[JobRecord] | str]:
    """A target as the live jobs it names, or a message why none."""
    m = TARGET_RE.match(text.strip())
    if m is None:
        return text, "not a job id (give N or ARRAY_INDEX)"
    label: str | int = int(text) if text.strip().isdigit() else text.strip()
    job_id = int(m.group(1))
    if m.group(2) is not None:
        index = int(m.group(2))
        rows = await c.store.list_jobs(array_parents=[job_id], limit=1_000_000)
        child = next((j for j in rows if j.array_index == index), None)
        if child is None:
            return label, "not found"
        job_id = child.id
    parent = c.jobs.array_parents.get(job_id)
    if parent is not None:
        children = [j for j in c.jobs.active.values() if j.array_parent == job_id]
        return label, children
    live = c.jobs.active.get(job_id)
    if live is not None:
        return label, [live]
    stored = await c.store.get_job(job_id)
    return label, "not found" if stored is None else f"already {stored.state}"


def _matches(job: JobRecord, args: dict[str, Any]) -> bool:
    states = {str(s).upper() for s in args.get("states") or []}
    return (
        (args.get("user") is None or job.user == args["user"])
        and (args.get("queue") is None or job.queue == args["queue"])
        and (args.get("name") is None or job.name == args["name"])
        and (not states or str(job.state) in states)
    )


async def cancel_jobs(c: Controller, args: dict[str, Any], caller: Caller) -> list[dict[str, Any]]:
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
        label, found = await _resolve(c, text)
        if isinstance(found, str):
            results.append({"job_id": label, "result": found})
            continue
        for job in found:
            if _matches(job, args):
                chosen.setdefault(job.id, job)
    if not targets:
        for job in list(c.jobs.active.values()):
            if _matches(job, args):
                chosen[job.id] = job
    reason = args.get("reason")
    quiet: list[int] = []
    for job in chosen.values():
        if job.uid != caller.uid and not caller.admin:
            results.append(
                {
                    "job_id": job.id,
                    "display_id": job.display_id,
                    "result": "forbidden: not your job",
                }
            )
        elif job.state in NOT_STARTED:
            quiet.append(job.id)
    if quiet:
        results += await _fail_unstarted(c, quiet, reason or f"cancelled by {caller.user}")
    live = [
        job.id
        for job in chosen.values()
        if job.state.is_active and (job.uid == caller.uid or caller.admin)
    ]
    if live:
        labels = {job.id: job.display_id for job in chosen.values()}
        for r in await c.jobs.cancel(live, caller, reason):
            r["display_id"] = labels.get(r["job_id"], str(r["job_id"]))
            results.append(r)
    return results


async def _fail_unstarted(c: Controller, ids: list[int], reason: str) -> list[dict[str, Any]]:
    """Fail jobs that never started, all in one transaction."""
    now = time.time()
    jobs = c.jobs
    async with jobs.lock:
        moved = await jobs.store.bulk_transition(
            ids, NOT_STARTED, JobState.FAILED, reason, now, ended=now
        )
        out: list[dict[str, Any]] = []
        for job_id, _old in moved:
            job = jobs.active.get(job_id)
            if job is None:
                continue
            job.state, job.reason, job.ended = JobState.FAILED, reason, now
            jobs._finished(job)
            out.append({"job_id": job.id, "display_id": job.display_id, "result": "cancelled"})
    missed = set(ids) - {job_id for job_id, _ in moved}
    out += [{"job_id": j, "result": "already started or final"} for j in sorted(missed)]
    await c.arrays.flush()
    return out
