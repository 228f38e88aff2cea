"""Job control, as `scontrol hold/release/update/requeue`: the API operations and their service.

Each operation names jobs (`12`, an array child `12_7`), checks that the
caller owns them (or is an administrator), decides with `core.jobcontrol`,
and changes them through one JobService intent (`JobService.control`: one
compare-and-set write, applied, published) or, for a requeue, `fail_job`'s
retry path (a new attempt). A held job is PENDING with the reason
`JobHeldUser: ...` or `JobHeldAdmin: ...`; the hold is stored (the `hold`
column), so it survives a controller restart.

A running job's time limit may be lowered by its owner and raised by an
administrator (as Slurm). The new limit reaches the hosts: the agent's
`retime` moves the kill deadline its shepherd holds (counted from the job's
start), so the job ends at the new limit as it would have at the old one
(`timeout: exceeded its time limit of ...`). Where a host cannot be told (not
connected, or its shepherd gone), it is told when it reconnects (`host_up`),
and the controller itself ends the job at the new limit (`TimeLimit:`); after
a restart it keeps that watch, a little after the limit, for every job whose
limit changed while it ran (`load`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from hpcbatch.controller.apiargs import ControlArgs, Operation, RequeueArgs, UpdateArgs
from hpcbatch.controller.arrays import ArrayTracker
from hpcbatch.controller.callers import ApiError, Caller, format_validation_error
from hpcbatch.controller.deadlines import DeadlineWatch
from hpcbatch.controller.deps import DependencyTracker
from hpcbatch.controller.jobs import JobService
from hpcbatch.core.dependencies import DependencyError, parse
from hpcbatch.core.jobcontrol import (
    Control,
    ControlError,
    decide_hold,
    decide_release,
    decide_update,
    held_reason,
)
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord
from hpcbatch.core.states import JobState
from hpcbatch.models import JobRequest
from hpcbatch.store.db import Store

WAITING = "Resources: waiting for the scheduler"
BACKSTOP_S = 15.0  # after a restart: past the limit and the hosts' kill grace
CheckRequest = Callable[[Any], tuple[JobRequest, str]]
Retime = Callable[[AttemptRecord, "float | None"], Awaitable[bool]]


class JobControl:
    """hold, release, update, requeue: who may, what is decided, and the one write."""

    def __init__(
        self, jobs: JobService, deps: DependencyTracker, check: CheckRequest, retime: Retime,
        arrays: ArrayTracker, store: Store,
    ) -> None:  # fmt: skip
        self.jobs = jobs
        self.deps = deps
        self.arrays = arrays  # a requeued finished child's parent counts it again
        self.store = store  # reads: an array's finished children
        self._reopening = asyncio.Lock()  # one array child requeued at a time
        self.check = check  # the submitter's request check: valid, queue known, feasible
        self.retime = retime  # the launcher's: a running attempt's new limit, on its host
        self.deadlines = DeadlineWatch(jobs)  # --deadline: waiting and running jobs
        jobs.observe(self.deadlines.changed)
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "hold": Operation(ControlArgs, self.hold),
            "release": Operation(ControlArgs, self.release),
            "requeue": Operation(RequeueArgs, self.requeue),
            "update": Operation(UpdateArgs, self.update),
        }

    def load(self) -> None:
        """After a restart: the controller's time limits of running jobs, armed again, and
        the deadlines of the live jobs watched."""
        self.deadlines.load()
        for job in self.jobs.live_jobs():
            changed = job.request.get("limit_updated") or job.request.get("limit_lowered")
            if job.state == JobState.RUNNING and changed:
                self._arm(job, BACKSTOP_S)

    def stop(self) -> None:
        """The controller stops: no time limit or deadline of its may fire any more (a
        stopped controller acting on a store another one holds would exit, 75)."""
        self.deadlines.stop()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # ------------------------------------------------------------------ operations

    async def hold(self, args: ControlArgs, caller: Caller) -> Any:
        def decide(job: JobRecord) -> Control:
            if job.state not in (JobState.PENDING, JobState.RUNNABLE):
                raise ControlError(f"only a waiting job can be held (it is {job.state})")
            hold = decide_hold(job.hold, caller.admin)
            return Control(JobState.PENDING, held_reason(hold), hold)

        return await self._each(args, caller, decide, "held")

    async def release(self, args: ControlArgs, caller: Caller) -> Any:
        def decide(job: JobRecord) -> Control:
            decide_release(job.hold, caller.admin)
            if job.spec.dependency:  # its dependencies are asked again (below)
                return Control(JobState.PENDING, "Dependency: waiting", None)
            return Control(JobState.RUNNABLE, WAITING, None)

        results = await self._each(args, caller, decide, "released")
        await self._settle(results)
        return results

    async def requeue(self, args: RequeueArgs, caller: Caller) -> Any:
        """Running jobs back to their queue as a new attempt; finished ones too (their id,
        attempts and history kept), as Slurm's requeue; with `hold`, held (requeuehold)."""
        out = []
        for target in args.job_ids or []:
            text = str(target).strip()
            try:
                found = self._targets(ControlArgs(job_ids=[target]), caller)
            except ApiError as exc:
                final_id = await self._final_id(text) if exc.kind == "not_found" else None
                if final_id is None:
                    raise
                out.append(await self._requeue_final(final_id, caller, bool(args.hold)))
                continue
            for job in found:
                result = await self._requeue_live(job, caller, bool(args.hold))
                out.append({"job_id": job.id, "display_id": job.display_id, "result": result})
        if not out:
            raise ApiError("bad_request", "job_ids: name at least one job")
        return out

    async def _requeue_live(self, job: JobRecord, caller: Caller, hold: bool) -> str:
        why = f"Requeue: requeued by {caller.user}"
        if job.spec.requeue is False:
            return "refused: submitted with --no-requeue"
        if job.state not in (JobState.STARTING, JobState.RUNNING):
            return f"refused: only a running or finished job is requeued (it is {job.state})"
        if hold:  # held first, so that it comes back PENDING, never startable in between
            try:
                held = decide_hold(job.hold, caller.admin)
                await self.jobs.control(job.id, lambda j: Control(j.state, j.reason, held))
            except ControlError as exc:
                return f"refused: {exc}"
            why = f"{held_reason(held)}; requeued by {caller.user}"
        ok = await self.jobs.fail_job(job, why, requeue=True)
        return (
            ("requeued and held" if hold else "requeued") if ok else "refused: it ended meanwhile"
        )

    async def _final_id(self, text: str) -> int | None:
        """The id of a job that is not live, named `N` or `ARRAY_INDEX` (a finished
        array child, looked up in the store); None where the name is neither."""
        head, _, index = text.partition("_")
        if not head.isdigit() or (index and not index.isdigit()):
            return None
        if not index:
            return int(head)
        children = await self.store.jobs.list_jobs(array_parents=[int(head)], limit=1_000_000)
        return next((c.id for c in children if c.array_index == int(index)), None)

    async def _requeue_final(self, job_id: int, caller: Caller, hold: bool) -> dict[str, Any]:
        """A finished job back to its queue: one write (controller.jobs' `control` with
        `final`); its next start is a new attempt, appending to its output files. A
        finished array child's parent counts it again, live again itself if it had
        ended (as Slurm's requeue of one task of a finished array)."""
        was: list[JobState] = []

        def decide(job: JobRecord) -> Control:
            if job.uid != caller.uid and not caller.admin:
                raise ApiError("forbidden", f"job {job.display_id}: not your job")
            if job.is_array_parent:
                raise ControlError("a finished array is requeued task by task (ARRAY_INDEX)")
            was[:] = [job.state]
            if not job.state.is_final:
                raise ControlError("it changed meanwhile; try again")
            if job.spec.requeue is False:
                raise ControlError("submitted with --no-requeue")
            if hold:
                held = decide_hold(None, caller.admin)
                return Control(JobState.PENDING, held_reason(held), held)
            return Control(JobState.RUNNABLE, f"Requeue: requeued by {caller.user}", None)

        async with self._reopening:  # a parent revived by one child at a time
            revived = await self._revive_array_of(job_id, caller)
            try:
                job = await self.jobs.control(job_id, decide, final=True)
            except (ControlError, ApiError) as exc:
                if revived is not None:  # back to its end: nothing of it was requeued
                    await self._count_array(revived, None, None)
                if isinstance(exc, ApiError):
                    raise
                gone = str(exc) == "the job is not waiting or running"
                if self.jobs.live(job_id) is None and gone:
                    raise ApiError("not_found", f"job {job_id} not found") from None
                return {"job_id": job_id, "result": f"refused: {exc}"}
            if revived is not None:
                await self._count_array(revived, job, was[0])
            elif job.array_parent in self.jobs.array_parents:
                self.arrays.reopened(job, was[0], None)
        result = "requeued and held" if hold else "requeued"
        return {"job_id": job.id, "display_id": job.display_id, "result": result}

    async def _revive_array_of(self, job_id: int, caller: Caller) -> int | None:
        """Before a finished array task is requeued: its array live again if it had ended
        (RUNNABLE; its summary follows once counted). First, so that a crash between the
        two writes leaves a live array that a restart's recount ends again, never a live
        task under an ended array. The array's id, or None where nothing was revived."""
        child = await self.store.jobs.get_job(job_id)
        if child is None or child.array_parent is None or not child.state.is_final:
            return None
        if child.spec.requeue is False or (child.uid != caller.uid and not caller.admin):
            return None  # refused below: the array is not touched
        parent_id = child.array_parent
        if parent_id in self.jobs.array_parents:
            return None

        def revive(parent: JobRecord) -> Control:
            if not parent.state.is_final:
                raise ControlError("it is live already")
            return Control(JobState.RUNNABLE, f"Requeue: {child.display_id} requeued", None)

        try:
            await self.jobs.control(parent_id, revive, final=True)
        except ControlError:
            return None
        return parent_id

    async def _count_array(
        self, parent_id: int, child: JobRecord | None, old: JobState | None
    ) -> None:
        """A revived array's counts from the store: its finished tasks, and the requeued
        one where it is (None: it was not requeued; the array ends again)."""
        done = await self.store.jobs.list_jobs(
            array_parents=[parent_id],
            states=[str(JobState.SUCCEEDED), str(JobState.FAILED)],
            limit=1_000_000,
        )
        if child is None:
            self.arrays.recount(parent_id, Counter(j.state for j in done))
        else:
            assert old is not None
            finished = Counter(j.state for j in done if j.id != child.id)
            self.arrays.reopened(child, old, finished)

    async def update(self, args: UpdateArgs, caller: Caller) -> Any:
        changes = dict(args.changes or {})
        if not changes:
            raise ApiError("bad_request", "changes: name at least one field to update")
        if "array_throttle" in changes:
            return await self._throttle(str(args.job_id), changes, caller)
        (job,) = self._targets(ControlArgs(job_ids=[args.job_id]), caller)
        if job.array_parent is not None and (changes.keys() - {"time_limit_s", "priority"}):
            raise ApiError("bad_request", "an array child's request is its array's: not updated")
        if isinstance(changes.get("dependency"), str) and changes["dependency"]:
            try:
                list(parse(changes["dependency"]))
            except DependencyError as exc:
                raise ApiError("bad_request", f"dependency: {exc}") from None

        def decide(job: JobRecord) -> Control:
            waiting = job.state in (JobState.PENDING, JobState.RUNNABLE)
            if not waiting and job.state != JobState.RUNNING:
                raise ControlError(f"a {job.state} job cannot be updated")
            request = decide_update(job.request, changes, waiting=waiting, admin=caller.admin)
            if not waiting:
                request["limit_updated"] = True
                return Control(job.state, job.reason, job.hold, request, job.name, job.queue)
            req, queue = self._checked(request)
            request["queue"], request["name"] = queue, req.name
            state, reason = job.state, job.reason
            if job.hold is None and request.get("dependency"):
                state, reason = JobState.PENDING, "Dependency: waiting"
            elif job.hold is None:
                state, reason = JobState.RUNNABLE, WAITING
            return Control(state, reason, job.hold, request, req.name, queue)

        try:
            done = await self.jobs.control(job.id, decide)
        except ControlError as exc:
            raise ApiError("bad_request", f"refused: {exc}") from None
        result = "updated"
        if done.state == JobState.RUNNING:
            result += await self._to_hosts(done)
        await self._settle([{"job_id": done.id, "result": result}])
        return {"job_id": done.id, "result": result, "job": done.summary()}

    async def _to_hosts(self, job: JobRecord) -> str:
        """A running job's new time limit, sent to each of its live attempts' hosts; where
        one is not reached the controller ends the job at the new limit itself."""
        limit = job.spec.time_limit_s
        missed = [
            a.host
            for a in self.jobs.current_attempts(job)
            if a.state in (AttemptState.STARTING, AttemptState.RUNNING)
            and not await self.retime(a, float(limit) if limit else None)
        ]
        if not missed:
            return ""
        self._arm(job)
        return (
            f" (not reached on {', '.join(missed)}: sent when it reconnects; "
            "until then the controller ends it at the new limit)"
        )

    async def host_up(self, host: str) -> None:
        """A host (re)connected: the time limits updated while it could not be told."""
        for job, a in self.jobs.attempts_on(host):
            if job.request.get("limit_updated") and a.state == AttemptState.RUNNING:
                limit = job.spec.time_limit_s
                await self.retime(a, float(limit) if limit else None)

    async def _throttle(self, target: str, changes: dict[str, Any], caller: Caller) -> Any:
        """An array's `%N`: the parent's request, which its children share."""
        parent = self.jobs.array_parents.get(int(target)) if target.isdigit() else None
        if parent is None:
            raise ApiError("not_found", f"{target} is not a live array (give the array's id)")
        if parent.uid != caller.uid and not caller.admin:
            raise ApiError("forbidden", f"job {target}: not your job")
        if changes.keys() != {"array_throttle"}:
            raise ApiError("bad_request", "update an array's throttle on its own")
        value = changes["array_throttle"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError("bad_request", "array_throttle: a whole number from 0 (0: no limit)")

        def decide(job: JobRecord) -> Control:
            request = decide_update(job.request, changes, waiting=True, admin=caller.admin)
            return Control(job.state, job.reason, job.hold, request, job.name, job.queue)

        try:
            done = await self.jobs.control(parent.id, decide)
        except ControlError as exc:
            raise ApiError("bad_request", f"refused: {exc}") from None
        return {"job_id": done.id, "result": "updated", "job": done.summary()}

    # ------------------------------------------------------------------ helpers

    def _checked(self, request: dict[str, Any]) -> tuple[JobRequest, str]:
        plain = {k: v for k, v in request.items() if k in JobRequest.model_fields}
        try:
            return self.check(plain)
        except ValidationError as exc:
            raise ControlError(format_validation_error(exc)) from None
        except ApiError as exc:
            raise ControlError(exc.message) from None

    def _targets(self, args: ControlArgs, caller: Caller) -> list[JobRecord]:
        """The live jobs named (a whole array: its live children), the caller's own."""
        out: list[JobRecord] = []
        for target in args.job_ids or []:
            text = str(target).strip()
            head, _, index = text.partition("_")
            if not head.isdigit() or (index and not index.isdigit()):
                raise ApiError("bad_request", f"{text!r} is not a job id (N or ARRAY_INDEX)")
            found = [
                j
                for j in self.jobs.live_jobs()
                if (j.id == int(head) and not index)
                or (j.array_parent == int(head) and (not index or j.array_index == int(index)))
            ]
            if not found:
                raise ApiError("not_found", f"job {text} is not waiting or running")
            for job in found:
                if job.uid != caller.uid and not caller.admin:
                    raise ApiError("forbidden", f"job {job.display_id}: not your job")
            out += found
        if not out:
            raise ApiError("bad_request", "job_ids: name at least one job")
        return out

    async def _each(
        self,
        args: ControlArgs,
        caller: Caller,
        decide: Callable[[JobRecord], Control],
        done: str,
    ) -> list[dict[str, Any]]:
        out = []
        for job in self._targets(args, caller):
            try:
                await self.jobs.control(job.id, decide)
                result = done
            except ControlError as exc:
                result = f"refused: {exc}"
            out.append({"job_id": job.id, "display_id": job.display_id, "result": result})
        return out

    async def _settle(self, results: list[dict[str, Any]]) -> None:
        """Jobs now PENDING on dependencies: asked again (released ones, updated ones)."""
        for r in results:
            job = self.jobs.live(int(r["job_id"]))
            if job is not None and job.state == JobState.PENDING and job.hold is None:
                self.deps.watch(job)
        await self.deps.settle()

    def _arm(self, job: JobRecord, slack: float = 0.0) -> None:
        """End a running job at its (updated) time limit, counted from its start."""
        limit = job.spec.time_limit_s
        old = self._timers.pop(job.id, None)
        if old is not None:
            old.cancel()
        if limit is None or job.started is None:
            return
        delay = max(0.0, job.started + limit + slack - time.time())
        loop = asyncio.get_running_loop()
        self._timers[job.id] = loop.call_later(delay, self._expire, job.id, limit)

    def _expire(self, job_id: int, limit: int) -> None:
        self._timers.pop(job_id, None)
        job = self.jobs.live(job_id)
        if job is not None and job.state == JobState.RUNNING:
            why = f"TimeLimit: the job ran past its updated time limit of {limit} s"
            self.jobs.spawn(self.jobs.cancel([job], "controller", why), f"timelimit-{job_id}")
