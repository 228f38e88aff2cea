"""Job lifecycle in the controller: submit, launch, exit, cancel.

Every change follows the same order: compare-and-set in the store (committed),
then the in-memory copy, then the side effects (launch, kill, ack, events).
All mutations of job state run under one lock, so the in-memory copy always
matches what was committed; the store's compare-and-set is the second guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from hpcbatch.controller import containers, gang
from hpcbatch.controller.callers import ApiError, Caller, format_validation_error
from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.retries import host_failure_retry, retry_reason
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.controller.snapshot import job_view
from hpcbatch.core.exits import exit_reason
from hpcbatch.core.gang import STOP_GRACE_S, gang_shape
from hpcbatch.core.hostlist import compress
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, parse_attempt_id
from hpcbatch.core.scheduler import JobView, infeasible
from hpcbatch.core.states import JobState
from hpcbatch.models import JobRequest
from hpcbatch.store.db import AttemptUpdate, NewJob, Store
from hpcbatch.transport.link import AgentError, HostLink, HostUnavailable

log = logging.getLogger(__name__)

NOT_YET: dict[str, str] = {}


class JobService:
    """Owns the active jobs (every job not yet final) and every change to them."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        bus: EventBus,
        links: dict[str, HostLink],
        settings: ControllerSettings,
        wake_scheduler: Callable[[], None],
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.bus = bus
        self.links = links
        self.settings = settings
        self.wake_scheduler = wake_scheduler
        self.active: dict[int, JobRecord] = {}
        self.lock = asyncio.Lock()
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._acks: dict[str, list[str]] = {}  # host -> exits to acknowledge
        # A job's request never changes: its scheduler view is built once, not every pass.
        self._views: dict[int, JobView] = {}
        # Array parents by id (owned by the ArrayTracker): live, but never run.
        self.array_parents: dict[int, JobRecord] = {}
        # Called with each job whose state changed (arrays, dependencies follow this).
        self.observers: list[Callable[[JobRecord], None]] = []
        # Jobs loaded from the store that are not this service's to run (array parents).
        self.set_aside: Callable[[JobRecord], bool] = lambda job: False

    def view(self, job: JobRecord) -> JobView:
        view = self._views.get(job.id)
        if view is None:
            view = self._views[job.id] = job_view(job)
        return view

    # ------------------------------------------------------------------ helpers

    def spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def publish(self, job: JobRecord) -> None:
        self.publish_summary(job)
        for observe in self.observers:
            observe(job)

    def publish_summary(self, job: JobRecord) -> None:
        """Tell watchers (dashboard, `wait`) about a job, without telling the observers."""
        if self.bus.watched:  # a summary costs ~10 us: a 10,000-child array, 0.1 s
            self.bus.publish({"event": "job", "job": job.summary()})

    def current_attempts(self, job: JobRecord) -> list[AttemptRecord]:
        return [a for a in job.attempts if a.attempt == job.attempt]

    async def load(self) -> None:
        """Rebuild the in-memory state from the store after a (re)start."""
        for job in await self.store.load_active():
            if self.set_aside(job):
                continue
            exclusive = job.request.get("nodes", 1) > 1 or bool(job.request.get("exclusive"))
            job.attempts = [replace(a, exclusive=exclusive) for a in job.attempts]
            self.active[job.id] = job
            self.cluster.hold(self.current_attempts(job))

    def _finished(self, job: JobRecord) -> None:
        self.cluster.release(self.current_attempts(job))
        self.active.pop(job.id, None)
        self._views.pop(job.id, None)
        self.resolve_waiters(job.id)
        self.publish(job)
        self.wake_scheduler()

    def resolve_waiters(self, job_id: int) -> None:
        for fut in self._waiters.pop(job_id, []):
            if not fut.done():
                fut.set_result(None)

    async def wait_final(self, job_ids: Iterable[int], timeout: float | None) -> None:
        job_ids = list(job_ids)
        futures = []
        loop = asyncio.get_running_loop()
        for job_id in job_ids:
            if job_id in self.active or job_id in self.array_parents:
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(job_id, []).append(fut)
                futures.append(fut)
        if not futures:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            # A waiter that gave up (timeout, client gone) leaves nothing behind:
            # a log follower waits in short slices for as long as a job runs.
            for job_id in job_ids:
                left = [f for f in self._waiters.get(job_id, []) if not f.done()]
                if left:
                    self._waiters[job_id] = left
                else:
                    self._waiters.pop(job_id, None)

    # ------------------------------------------------------------------ submit

    def check_request(self, raw: Any) -> tuple[JobRequest, str]:
        if not isinstance(raw, dict):
            raise ApiError("bad_request", "request must be an object")
        for key, what in NOT_YET.items():
            if raw.get(key) not in (None, ""):
                raise ApiError("bad_request", f"{what} are not supported by this controller yet")
        try:
            req = JobRequest.model_validate(raw)
        except ValidationError as exc:
            raise ApiError("bad_request", format_validation_error(exc)) from None
        inv = self.cluster.inventory
        queue = req.queue or inv.default_queue
        if queue not in inv.queues:
            known = ", ".join(sorted(inv.queues))
            raise ApiError("bad_request", f"unknown queue {queue!r} (queues: {known})")
        if req.fabric is None and inv.queues[queue].fabric is not None:
            req = req.model_copy(update={"fabric": inv.queues[queue].fabric})
        hosts = [self.cluster.hosts[n] for n in self.cluster.queue_hosts(queue)]
        known_hosts = [h.capacity_view() for h in hosts if h.known]
        cpus, memory_mb, gpus = gang_shape(req.model_dump(mode="json"))
        view = JobView(
            id=0,
            queue=queue,
            cpus=cpus,
            memory_mb=memory_mb,
            gpus=gpus,
            nodes=req.nodes,
            exclusive=req.exclusive,
            fabric=req.fabric,
        )
        # "Never" needs every host's size; while some are not yet probed, only "not now".
        if len(known_hosts) == len(hosts):
            why = infeasible(view, known_hosts)
            if why is not None:
                raise ApiError("infeasible", f"refused: {why}")
        why = containers.check_image(self.cluster, req, queue)
        if why is not None:
            raise ApiError("infeasible", f"refused: {why}")
        return req, queue

    async def submit(self, raw: Any, caller: Caller) -> int:
        req, queue = self.check_request(raw)
        request = req.model_dump(mode="json")
        request["queue"] = queue
        now = time.time()
        reason = "Resources: waiting for the scheduler"
        async with self.lock:
            (job_id,) = await self.store.insert_jobs(
                [NewJob(req.name, caller.user, caller.uid, queue, request, now)],
                JobState.RUNNABLE,
                reason,
            )
            job = JobRecord(
                id=job_id,
                name=req.name,
                user=caller.user,
                uid=caller.uid,
                queue=queue,
                state=JobState.RUNNABLE,
                reason=reason,
                request=request,
                submitted=now,
            )
            self.active[job_id] = job
        self.publish(job)
        self.wake_scheduler()
        return job_id

    # ------------------------------------------------------------------ launch

    def launch_soon(self, job: JobRecord, only: Iterable[AttemptRecord] | None = None) -> None:
        if only is None and gang.is_gang(job):
            attempts = self.current_attempts(job)
            self.spawn(gang.launch_all(self, job, attempts), f"launch-{job.id}.{job.attempt}")
            return
        targets = list(only) if only is not None else self.current_attempts(job)
        for a in targets:
            self.spawn(self.launch_one(job, a), f"launch-{a.attempt_id}")

    async def launch_one(self, job: JobRecord, a: AttemptRecord) -> None:
        link = self.links.get(a.host)
        req = job.request
        if link is None or not link.connected:
            return  # launched when the host (re)connects: see HostService.reconcile
        fields = gang.launch_fields(self, job, a)
        if req.get("image"):
            container = await containers.prepare(self, job, a, link)
            if container is False:
                return
            fields["container"] = container
        # The check and the write to the channel happen with no await between them,
        # so a cancel cannot slip in and be overtaken by this launch.
        # (A gang's job may be RUNNING already: a first node's exit can overtake the
        # launch of its main node.)
        if not job.state.is_active or a.state != AttemptState.STARTING:
            return
        try:
            reply = await link.request(
                "launch",
                attempt=a.attempt_id,
                timeout_s=req.get("time_limit_s"),
                kill_grace_s=self.settings.kill_grace_s,
                **fields,
            )
        except HostUnavailable:
            return  # the host reconnect path finds it STARTING and launches again
        except AgentError as exc:
            if "exists" in str(exc):
                return  # already launched (a retry after a lost reply): its exit will come
            await self.fail_job(job, f"launch failed on {a.host}: {str(exc).split(': ', 2)[-1]}")
            return
        started = float(reply.get("started") or time.time())
        await self.mark_running(job, a, started, fields["stdout"], fields["stderr"])

    async def mark_running(
        self,
        job: JobRecord,
        a: AttemptRecord,
        started: float,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> None:
        async with self.lock:
            if a.state != AttemptState.STARTING or job.id not in self.active:
                return
            upd = AttemptUpdate(
                job.id,
                a.attempt,
                a.node,
                AttemptState.RUNNING,
                started=started,
                stdout=stdout,
                stderr=stderr,
            )
            all_started = all(
                x.state == AttemptState.RUNNING or x is a for x in self.current_attempts(job)
            )
            if job.state == JobState.STARTING and all_started:
                where = compress([x.host for x in self.current_attempts(job)])
                ok = await self.store.transition(
                    job.id,
                    JobState.STARTING,
                    JobState.RUNNING,
                    f"running on {where}",
                    started,
                    started=started,
                    attempt_updates=[upd],
                )
                if not ok:
                    return
                job.state = JobState.RUNNING
                job.reason = f"running on {where}"
                job.started = started
            else:
                await self.store.update_attempts([upd])
            a.state = AttemptState.RUNNING
            a.started = started
            a.stdout = stdout or a.stdout
            a.stderr = stderr or a.stderr
        self.publish(job)

    # ------------------------------------------------------------------ exits

    async def on_exit(self, host: str, ev: dict[str, Any]) -> None:
        """An attempt ended on `host` (an agent event, or found by reconcile)."""
        try:
            job_id, attempt, node = parse_attempt_id(str(ev["attempt"]))
        except (KeyError, ValueError):
            log.warning("%s: exit event with a bad attempt id: %r", host, ev)
            return
        async with self.lock:
            job = self.active.get(job_id)
            a = None
            if job is not None and job.attempt == attempt:
                a = next((x for x in self.current_attempts(job) if x.node == node), None)
            if (
                job is None
                or a is None
                or a.state not in (AttemptState.STARTING, AttemptState.RUNNING)
            ):
                stale = True
            else:
                stale = False
                state, reason = exit_reason(ev, job.request.get("time_limit_s"))
                outcome = gang.exit_outcome(job, a, state, reason)
                ended = float(ev.get("ended") or time.time())
                started = ev.get("started")
                # The exit may overtake the launch reply: record that it did run.
                if (
                    job.state == JobState.STARTING
                    and started
                    and await self.store.transition(
                        job_id,
                        JobState.STARTING,
                        JobState.RUNNING,
                        f"running on {host}",
                        float(started),
                        started=float(started),
                    )
                ):
                    job.state, job.started = JobState.RUNNING, float(started)
                upd = AttemptUpdate(
                    job_id,
                    attempt,
                    node,
                    AttemptState.EXITED,
                    started=ev.get("started"),
                    ended=ended,
                    exit_code=ev.get("code"),
                    signal=ev.get("signal"),
                    reason=reason,
                )
                others = [
                    x
                    for x in self.current_attempts(job)
                    if x is not a and x.state in (AttemptState.STARTING, AttemptState.RUNNING)
                ]
                again = (
                    retry_reason(job, ev, outcome.reason)
                    if outcome.final == str(JobState.FAILED)
                    else None
                )
                if outcome.final is None:  # one node's part is done; the job goes on
                    others = []
                    await self.store.update_attempts([upd])
                    ok = True
                elif again is not None:
                    # Another attempt of the whole job: every node is stopped and released.
                    why = gang.others_reason(job, a, outcome.reason)
                    ok = await self.store.transition(
                        job_id,
                        job.state,
                        JobState.RUNNABLE,
                        again,
                        ended,
                        attempt_updates=[upd, *self._lost_updates(others, ended, why)],
                    )
                else:
                    why = gang.others_reason(job, a, outcome.reason)
                    ok = await self.store.transition(
                        job_id,
                        job.state,
                        JobState(outcome.final),
                        outcome.reason,
                        ended,
                        ended=ended,
                        exit_code=ev.get("code"),
                        attempt_updates=[upd, *self._lost_updates(others, ended, why)],
                    )
                if ok:
                    a.state = AttemptState.EXITED
                    a.ended, a.exit_code, a.signal, a.reason = (
                        ended,
                        ev.get("code"),
                        ev.get("signal"),
                        reason,
                    )
                if ok and again is not None:
                    for x in others:
                        x.state, x.ended, x.reason = AttemptState.LOST, ended, why
                    self.cluster.release(self.current_attempts(job))
                    job.state, job.reason = JobState.RUNNABLE, again
                    self.publish(job)
                    self.wake_scheduler()
                    for x in others:
                        self.spawn(self._kill(x, why, STOP_GRACE_S), f"kill-{x.attempt_id}")
                elif ok and outcome.final is not None:
                    for x in others:
                        x.state, x.ended, x.reason = AttemptState.LOST, ended, why
                    job.state, job.reason, job.ended, job.exit_code = (
                        JobState(outcome.final),
                        outcome.reason,
                        ended,
                        ev.get("code"),
                    )
                    self._finished(job)
                    for x in others:
                        self.spawn(self._kill(x, why, STOP_GRACE_S), f"kill-{x.attempt_id}")
        self._queue_ack(host, str(ev["attempt"]))
        if stale:
            log.info("%s: collected stale attempt %s", host, ev["attempt"])

    @staticmethod
    def _lost_updates(
        attempts: Iterable[AttemptRecord], ended: float, why: str
    ) -> list[AttemptUpdate]:
        return [
            AttemptUpdate(a.job_id, a.attempt, a.node, AttemptState.LOST, ended=ended, reason=why)
            for a in attempts
        ]

    def _queue_ack(self, host: str, attempt: str) -> None:
        """Acknowledge exits in batches: one `ack` per host for every exit collected
        before the flush runs (a burst of exits costs a few messages,
        not one round trip each)."""
        pending = self._acks.setdefault(host, [])
        pending.append(attempt)
        if len(pending) == 1:
            self.spawn(self._ack(host), f"ack-{host}")

    async def _ack(self, host: str) -> None:
        await asyncio.sleep(0)  # let the exits already queued join this batch
        attempts = self._acks.pop(host, [])
        link = self.links.get(host)
        if link is None or not attempts:
            return
        # On failure they are listed again by the next hello, and acked then.
        with contextlib.suppress(HostUnavailable, AgentError):
            await link.request("ack", attempts=attempts)

    # ------------------------------------------------------------------ cancel / fail

    async def fail_job(self, job: JobRecord, reason: str, *, host_failure: bool = False) -> bool:
        """Fail a job now; its live attempts are marked LOST (fenced if they ever run).

        With `host_failure` (its host is DOWN, or lost the attempt) the job's retry
        strategy decides first: another attempt (RUNNABLE, maybe on another host)
        or FAILED.
        """
        async with self.lock:
            if job.id not in self.active:
                return False
            now = time.time()
            live = [
                a
                for a in self.current_attempts(job)
                if a.state in (AttemptState.STARTING, AttemptState.RUNNING)
            ]
            updates = [
                AttemptUpdate(
                    job.id, a.attempt, a.node, AttemptState.LOST, ended=now, reason=reason
                )
                for a in live
            ]
            if host_failure and not live:
                return False  # already retried or ended (another node of it was lost first)
            again = host_failure_retry(job, reason) if host_failure else None
            ok = await self.store.transition(
                job.id,
                job.state,
                JobState.RUNNABLE if again else JobState.FAILED,
                again or reason,
                now,
                ended=None if again else now,
                attempt_updates=updates,
            )
            if not ok:
                return False
            for a in live:
                a.state, a.ended, a.reason = AttemptState.LOST, now, reason
            if again:
                self.cluster.release(self.current_attempts(job))
                job.state, job.reason = JobState.RUNNABLE, again
                self.publish(job)
                self.wake_scheduler()
            else:
                job.state, job.reason, job.ended = JobState.FAILED, reason, now
                self._finished(job)
        for a in live:
            self.spawn(self._kill(a, reason), f"kill-{a.attempt_id}")
        return True

    async def _kill(self, a: AttemptRecord, reason: str, grace: float | None = None) -> None:
        link = self.links.get(a.host)
        if link is None or not link.connected:
            return
        if grace is None:
            grace = self.settings.kill_grace_s
        with contextlib.suppress(HostUnavailable, AgentError):
            await link.request("kill", attempt=a.attempt_id, reason=reason, grace_s=grace)

    async def cancel(
        self, job_ids: Iterable[int], caller: Caller, reason: str | None
    ) -> list[dict[str, Any]]:
        results = []
        for job_id in job_ids:
            job = self.active.get(job_id)
            if job is None:
                stored = await self.store.get_job(job_id)
                status = "not found" if stored is None else f"already {stored.state}"
                results.append({"job_id": job_id, "result": status})
                continue
            if job.uid != caller.uid and not caller.admin:
                results.append({"job_id": job_id, "result": "forbidden: not your job"})
                continue
            why = reason or f"cancelled by {caller.user}"
            if job.state.is_active:
                why = reason or f"terminated by {caller.user}"
                results.append({"job_id": job_id, "result": await self._terminate(job, why)})
            else:
                ok = await self.fail_job(job, why)
                results.append({"job_id": job_id, "result": "cancelled" if ok else "already final"})
        return results

    async def _terminate(self, job: JobRecord, reason: str) -> str:
        """Kill a STARTING/RUNNING job's processes; the exit event finishes it."""
        pending = []
        for a in self.current_attempts(job):
            if a.state not in (AttemptState.STARTING, AttemptState.RUNNING):
                continue
            link = self.links.get(a.host)
            found = False
            if link is not None and link.connected:
                try:
                    reply = await link.request(
                        "kill",
                        attempt=a.attempt_id,
                        reason=reason,
                        grace_s=self.settings.kill_grace_s,
                    )
                    found = bool(reply.get("found"))
                except (HostUnavailable, AgentError):
                    found = False
            if not found:
                pending.append(a)
        if pending and job.id in self.active:
            # Never launched, or its host is unreachable: fail it now; if the process
            # exists after all, the host fences it when it reconnects.
            await self.fail_job(job, reason)
            return "terminated"
        return "terminating"

    # ------------------------------------------------------------------ hosts

    def attempts_on(self, host: str) -> list[tuple[JobRecord, AttemptRecord]]:
        out = []
        for job in self.active.values():
            for a in self.current_attempts(job):
                if a.host == host and a.state in (AttemptState.STARTING, AttemptState.RUNNING):
                    out.append((job, a))
        return out
