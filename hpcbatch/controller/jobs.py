"""The one writer of job state: the active jobs, their attempts, and every change to them.

Other parts of the controller ask; they do not reach in. Each change is an
intent method (accept, accept_array, start_plan, mark_running, on_exit,
fail_job, host_lost, move_pending, cancel, ...) that runs the same four steps:
decide (with a pure function where there is something to decide, e.g.
`core.exits.decide_exit`), one compare-and-set write to the store, apply to the
in-memory records, then notify (observers, event bus, waiters, scheduler) and
hand host work to the launcher (`HostActions`). Writes run under one lock, so
memory always matches what was committed; compare-and-set is the second guard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from hpcbatch.controller.cluster import Cluster
from hpcbatch.controller.events import EventBus
from hpcbatch.controller.hostactions import HostActions
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.controller.snapshot import job_view
from hpcbatch.controller.waiters import Waiters
from hpcbatch.controller.writegroup import Change, WriteGroup
from hpcbatch.core.exits import ExitDecision, decide_exit, host_failure_retry
from hpcbatch.core.gang import STOP_GRACE_S
from hpcbatch.core.hostlist import compress
from hpcbatch.core.jobcontrol import Control, ControlError
from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.records import (
    AttemptRecord,
    AttemptState,
    JobRecord,
    current_attempts,
    new_attempts,
    parse_attempt_id,
)
from hpcbatch.core.scheduler import JobView
from hpcbatch.core.states import JobState
from hpcbatch.store.db import NewJob, StartOrder, Store
from hpcbatch.store.rows import exit_writes, lost_updates, new_record, running_write

log = logging.getLogger(__name__)

LIVE = (AttemptState.STARTING, AttemptState.RUNNING)
NOT_STARTED = (JobState.SUBMITTED, JobState.PENDING, JobState.RUNNABLE)
LAUNCH_CHUNK = 256  # launches made ready per turn of the event loop
START_SLICE, BUSY_SLICE = 1024, 64  # jobs a pass starts per transaction; while users submit
BUSY_S = 2.0  # users submit: the last submit came this recently


class JobService:
    """Owns the active jobs (every job not yet final) and every change to them."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        bus: EventBus,
        settings: ControllerSettings,
        wake_scheduler: Callable[[], None],
    ) -> None:
        self._store = store
        self.cluster = cluster
        self._bus = bus
        self.settings = settings
        self.wake_scheduler = wake_scheduler
        self._active: dict[int, JobRecord] = {}
        self._lock = asyncio.Lock()
        self._submitted = 0.0  # when the last submit came (time.monotonic)
        self._host: HostActions | None = None
        self._waiters = Waiters()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._views: dict[int, JobView] = {}  # built once per job: a request never changes
        # Array parents by id (their summaries are kept by the ArrayTracker): live, never run.
        self._parents: dict[int, JobRecord] = {}
        self._observers: list[Callable[[JobRecord], None]] = []
        # Launch replies and exits, committed in groups under the same lock.
        self._group = WriteGroup(self._lock, store.jobs.write_group, self.spawn)

    def use(self, host: HostActions) -> None:  # the launcher, wired once by the composition root
        self._host = host

    def observe(self, observer: Callable[[JobRecord], None]) -> None:
        """Call `observer` with each job whose state changed (arrays, dependencies, usage)."""
        self._observers.append(observer)

    @property
    def _hosts(self) -> HostActions:
        assert self._host is not None, "JobService.use(launcher) was not called"
        return self._host

    # ------------------------------------------------------------------ reads

    def live(self, job_id: int) -> JobRecord | None:
        """The in-memory record of an active job (None: final, unknown, or an array parent)."""
        return self._active.get(job_id)

    def live_jobs(self) -> list[JobRecord]:  # every active job's record
        return list(self._active.values())

    @property
    def array_parents(self) -> Mapping[int, JobRecord]:
        """The live array parents by id (a read-only view)."""
        return MappingProxyType(self._parents)

    def runnable(self) -> list[JobRecord]:
        """The jobs waiting for the scheduler."""
        return [j for j in self._active.values() if j.state == JobState.RUNNABLE]

    def task_count(self) -> int:  # background tasks (launches, kills, acks, exits) not done
        return len(self._tasks)

    def view(self, job: JobRecord) -> JobView:
        if (view := self._views.get(job.id)) is None:
            view = self._views[job.id] = job_view(job)
        return view

    def current_attempts(self, job: JobRecord) -> list[AttemptRecord]:
        return current_attempts(job)

    def attempts_on(self, host: str) -> list[tuple[JobRecord, AttemptRecord]]:
        live = ((j, a) for j in self._active.values() for a in current_attempts(j))
        return [(j, a) for j, a in live if a.host == host and a.state in LIVE]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def idle(self) -> None:
        """Wait until no background task is left, those they start included (burst runs)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def publish(self, job: JobRecord) -> None:
        self.publish_summary(job)
        for observe in self._observers:
            observe(job)

    def publish_summary(self, job: JobRecord) -> None:
        """Tell watchers (dashboard, `wait`) about a job, without telling the observers."""
        if self._bus.watched:  # a summary costs ~10 us: a 10,000-child array, 0.1 s
            self._bus.publish({"event": "job", "job": job.summary()})

    def _finished(self, job: JobRecord) -> None:
        self.cluster.release(current_attempts(job))
        self._active.pop(job.id, None)
        self._views.pop(job.id, None)
        self._waiters.resolve(job.id)
        self.publish(job)
        self.wake_scheduler()

    async def wait_final(self, job_ids: Iterable[int], timeout: float | None) -> None:
        """Wait until the given jobs (and array parents) that are live now are final."""
        await self._waiters.wait(job_ids, self._is_live_id, timeout)

    def _is_live_id(self, job_id: int) -> bool:
        return job_id in self._active or job_id in self._parents

    async def load(self) -> None:
        """Rebuild the in-memory state from the store after a (re)start."""
        for job in await self._store.jobs.load_active():
            if job.is_array_parent:
                self._parents[job.id] = job
                continue
            exclusive = job.spec.is_gang or job.spec.exclusive
            job.attempts = [replace(a, exclusive=exclusive) for a in job.attempts]
            self._active[job.id] = job
            self.cluster.hold(current_attempts(job))

    # ------------------------------------------------------------------ accept

    async def accept(self, new: NewJob, state: JobState, reason: str) -> JobRecord:
        """A new job (RUNNABLE, or PENDING on its dependencies)."""
        self._submitted = time.monotonic()
        async with self._lock:
            (job_id,) = await self._store.jobs.insert_jobs([new], state, reason)
            job = new_record(job_id, new, None, state, reason)  # spec: built on first read
            self._active[job_id] = job
        self.publish(job)
        return job

    async def accept_array(
        self, new: NewJob, indices: Sequence[int], state: JobState, reason: str, *, quiet: bool
    ) -> tuple[JobRecord, list[JobRecord]]:
        """A new array: its parent (never run) and one child per index, in one write.

        `quiet`: tell the observers about the parent only (the array tracker counts
        the children in one call; per child, the observers cost 5 us each).
        """
        self._submitted = time.monotonic()
        async with self._lock:
            parent_id, child_ids = await self._store.jobs.insert_array(new, indices, state, reason)
            spec = JobSpec.from_json(new.request)
            parent = new_record(parent_id, new, spec, JobState.PENDING, reason)
            parent.array_size = len(child_ids)
            children = []
            for child_id, index in zip(child_ids, indices, strict=True):
                child = new_record(child_id, new, spec, state, reason)
                child.array_parent, child.array_index = parent_id, index
                children.append(child)
            self._parents[parent_id] = parent
            for child in children:
                self._active[child.id] = child
        self.publish(parent)
        tell = self.publish_summary if quiet else self.publish
        for child in children:
            tell(child)
        return parent, children

    async def summarize_parent(
        self, parent: JobRecord, state: JobState, reason: str, now: float
    ) -> None:
        """An array parent's new summary of its children (decided by core.arrays)."""
        if state != parent.state:
            ended = now if state.is_final else None
            await self._store.jobs.set_summary_state(parent.id, state, reason, now, ended=ended)
            if state == JobState.RUNNING and parent.started is None:
                parent.started = now
            parent.state, parent.ended = state, ended
        parent.reason = reason
        self.publish(parent)
        if state.is_final:
            self._parents.pop(parent.id, None)
            self._waiters.resolve(parent.id)

    # ------------------------------------------------------------------ pending jobs

    def note_reasons(self, reasons: Mapping[int, str]) -> None:
        """Why jobs wait (the scheduler's and the dependencies' words): memory only."""
        for job_id, reason in reasons.items():
            job = self._active.get(job_id)
            if job is not None and job.reason != reason:
                job.reason = reason
                self.publish(job)

    def note_progress(self, host: str, event: Mapping[str, Any]) -> None:
        """A pull's progress line: shown as the STARTING job's reason (not stored: it is
        transient, and the pull's whole output goes to the top of the job's stderr)."""
        try:
            job_id, attempt, _node = parse_attempt_id(str(event.get("attempt")))
        except ValueError:
            return
        job = self._active.get(job_id)
        if job is None or job.attempt != attempt or not job.state.is_active:
            return
        text = str(event.get("text") or "")[:200]
        job.reason = f"pulling image on {host}: {text}" if text else f"pulling image on {host}"
        self.publish_summary(job)

    async def move_pending(self, ids: Iterable[int], new: JobState, reason: str) -> list[JobRecord]:
        """PENDING jobs released (RUNNABLE) or failed, in one write; returns those moved."""
        now = time.time()
        async with self._lock:
            moved = await self._store.jobs.bulk_transition(
                list(ids), [JobState.PENDING], new, reason, now, ended=now if new.is_final else None
            )
            out = [self._active[job_id] for job_id, _old in moved]
            for job in out:
                job.state, job.reason = new, reason
                if new.is_final:
                    job.ended = now
                    self._finished(job)
                else:
                    self.publish(job)
        return out

    async def control(
        self, job_id: int, decide: Callable[[JobRecord], Control], *, final: bool = False
    ) -> JobRecord:
        """A job-control change (hold, release, update, requeue; decided by `decide`, see
        controller.control) on a live job or array parent, or with `final` a finished job
        (then live again): one compare-and-set write, applied, published."""
        async with self._lock:
            job = self._active.get(job_id) or self._parents.get(job_id)
            if job is None and final:
                job = await self._store.jobs.get_job(job_id)
            if job is None or (job.state.is_final and not final):
                raise ControlError("the job is not waiting or running")
            c, reopen = decide(job), job.state.is_final
            name, queue = c.name or job.name, c.queue or job.queue
            if not await self._store.jobs.control(
                job.id, job.state, c.state, c.reason, c.hold, c.request, name, queue, time.time(),
                reopen=reopen,
            ):  # fmt: skip
                raise ControlError("the job changed while this was decided; try again")
            job.state, job.reason, job.hold, job.name, job.queue = c.state, c.reason, c.hold, name, queue  # noqa: E501  # fmt: skip
            if reopen:  # an array parent's children are live again: it is live too
                job.ended = job.exit_code = None
                (self._parents if job.is_array_parent else self._active)[job.id] = job
            if c.request is not None:  # an array parent's: its live children share it
                for j in [job, *(k for k in self._active.values() if k.array_parent == job.id)]:
                    j.request = c.request
                    self._views.pop(j.id, None)
        self.publish(job)
        self.wake_scheduler()
        return job

    # ------------------------------------------------------------------ start

    async def start_plan(self, orders: Sequence[StartOrder], now: float) -> int:
        """Start the scheduler's plan in slices, each one transaction under the lock and
        then launched, so that a pass starting 40,000 jobs lets submits, exits and
        queries in between; small ones while users submit: a submit waits for the slice
        under way (docs/scale.md, "Rerun on a quiet machine")."""
        started, at = 0, 0
        while at < len(orders):
            size = BUSY_SLICE if time.monotonic() - self._submitted < BUSY_S else START_SLICE
            started += await self._start_slice(orders[at : at + size], now)
            at += size
        return started

    async def _start_slice(self, orders: Sequence[StartOrder], now: float) -> int:
        async with self._lock:
            started = set(await self._store.jobs.start_jobs(orders, now))
            launched = []
            for order in orders:
                job = self._active.get(order.job_id)
                if order.job_id not in started or job is None:
                    continue
                job.state, job.reason, job.attempt = JobState.STARTING, order.reason, order.attempt
                job.attempts = new_attempts(job.id, order.attempt, order.placements, now)
                self.cluster.hold(job.attempts)
                launched.append(job)
        for i, job in enumerate(launched, 1):
            self.publish(job)
            self._hosts.launch(job)
            if i % LAUNCH_CHUNK == 0:
                # Let the loop read between chunks: 40,000 launch tasks made ready at once
                # ran (~30 s) before any socket was read: every host looked silent, cut off.
                await asyncio.sleep(0)
        return len(launched)

    def launch_soon(self, job: JobRecord, attempts: Iterable[AttemptRecord]) -> None:
        """Launch attempts written down but never launched (their host reconnected)."""
        self._hosts.launch(job, attempts)

    async def mark_running(
        self,
        job: JobRecord,
        a: AttemptRecord,
        started: float,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> None:
        """A node's launch reply: the attempt RUNNING, and the job once all its nodes are
        (written in the next group commit)."""
        await self._group.submit(job.id, lambda: self._running(job, a, started, stdout, stderr))

    def _running(
        self, job: JobRecord, a: AttemptRecord, started: float, out: str | None, err: str | None
    ) -> Change | None:
        if a.state != AttemptState.STARTING or job.id not in self._active:
            return None
        attempts = current_attempts(job)
        moves = job.state == JobState.STARTING and all(
            x.state == AttemptState.RUNNING or x is a for x in attempts
        )
        why = f"running on {compress([x.host for x in attempts])}" if moves else None

        def apply(ok: list[bool]) -> None:
            if not ok[0]:
                return
            if why is not None:
                job.state, job.reason, job.started = JobState.RUNNING, why, started
            a.state, a.started = AttemptState.RUNNING, started
            a.stdout, a.stderr = out or a.stdout, err or a.stderr
            self.publish(job)

        return Change([running_write(a, started, out, err, why)], apply)

    async def on_exit(self, host: str, ev: Mapping[str, Any]) -> None:
        """An attempt ended on `host` (an agent event, or found by reconcile); written in
        the next group commit, then acknowledged to the host."""
        try:
            job_id, attempt, node = parse_attempt_id(str(ev["attempt"]))
        except (KeyError, ValueError):
            log.warning("%s: exit event with a bad attempt id: %r", host, ev)
            return
        done = await self._group.submit(job_id, lambda: self._exit(job_id, attempt, node, host, ev))
        self._hosts.ack(host, str(ev["attempt"]))
        if not done:
            log.info("%s: collected stale attempt %s", host, ev["attempt"])

    def _exit(
        self, job_id: int, attempt: int, node: int, host: str, ev: Mapping[str, Any]
    ) -> Change | None:
        job = self._active.get(job_id)
        if job is None or job.attempt != attempt:
            return None
        a = next((x for x in current_attempts(job) if x.node == node), None)
        if a is None or a.state not in LIVE:
            return None
        d = decide_exit(job, a, ev, time.time())
        others = []
        if d.job_state is not None:  # the job moves: its other live nodes are stopped
            others = [x for x in current_attempts(job) if x is not a and x.state in LIVE]
        writes = exit_writes(job, a, host, d, others)

        def apply(ok: list[bool]) -> None:
            if len(ok) == 2 and ok[0]:
                job.state, job.started = JobState.RUNNING, d.started
            if ok[-1]:
                self._apply_exit(job, a, others, d)

        return Change(writes, apply)

    def _apply_exit(
        self, job: JobRecord, a: AttemptRecord, others: list[AttemptRecord], d: ExitDecision
    ) -> None:
        a.state = AttemptState.EXITED
        a.ended, a.exit_code, a.signal, a.reason = d.ended, d.exit_code, d.signal, d.attempt_reason
        a.take_usage(d.usage)
        if d.job_state is None:
            return
        for x in others:
            x.state, x.ended, x.reason = AttemptState.LOST, d.ended, d.others_reason
        if d.retried:
            # Another attempt of the whole job: every node is stopped and released.
            self.cluster.release(current_attempts(job))
            job.state, job.reason = JobState.RUNNABLE, d.job_reason
            self.publish(job)
            self.wake_scheduler()
        else:
            job.state, job.reason, job.ended = d.job_state, d.job_reason, d.ended
            job.exit_code = d.exit_code
            self._finished(job)
        for x in others:
            self._hosts.kill(x, d.others_reason, STOP_GRACE_S)

    async def fail_job(
        self, job: JobRecord, reason: str, *, host_failure: bool = False, requeue: bool = False
    ) -> bool:
        """Fail a job now; its live attempts are marked LOST (fenced if they ever run).

        With `host_failure` (its host is DOWN, or lost the attempt) its retry strategy
        decides: another attempt (RUNNABLE, maybe elsewhere) or FAILED. With `requeue`
        (`hpcbatch requeue`) it is another attempt, PENDING if held (requeue --hold).
        """
        async with self._lock:
            if job.id not in self._active:
                return False
            now = time.time()
            live = [a for a in current_attempts(job) if a.state in LIVE]
            if host_failure and not live:
                return False  # already retried or ended (another node of it was lost first)
            again = reason if requeue else host_failure_retry(job, reason) if host_failure else None
            back = JobState.PENDING if requeue and job.hold else JobState.RUNNABLE
            ok = await self._store.jobs.transition(
                job.id, job.state, back if again else JobState.FAILED, again or reason, now,
                ended=None if again else now, attempt_updates=lost_updates(live, now, reason),
            )  # fmt: skip
            if not ok:
                return False
            for a in live:
                a.state, a.ended, a.reason = AttemptState.LOST, now, reason
            if again:
                self.cluster.release(current_attempts(job))
                job.state, job.reason = back, again
                self.publish(job)
                self.wake_scheduler()
            else:
                job.state, job.reason, job.ended = JobState.FAILED, reason, now
                self._finished(job)
        for a in live:
            self._hosts.kill(a, reason)
        return True

    async def host_lost(self, host: str, reason: str) -> None:
        """A host's link went down: every multi-node job with a node there ends now.

        A single-node job keeps running (its shepherd does not need the link; the exit
        is collected when the host returns); a multi-node job cannot: its MPI ranks
        or relayed processes lost their peers, and its other nodes must be released.
        It is a host failure: the whole job is retried if its retry strategy says so.
        """
        for job, a in self.attempts_on(host):
            if job.spec.is_gang:
                why = f"host {host} lost (node {a.node}): {reason}"
                await self.fail_job(job, why, host_failure=True)

    # ------------------------------------------------------------------ cancel

    async def cancel(
        self, chosen: Iterable[JobRecord], by: str, reason: str | None
    ) -> list[dict[str, Any]]:
        """Cancel jobs for user `by`: unstarted ones failed in one write, live ones
        terminated through their hosts. One result per job."""
        chosen = list(chosen)
        quiet = [job.id for job in chosen if job.state in NOT_STARTED]
        results = await self._fail_unstarted(quiet, reason or f"cancelled by {by}") if quiet else []
        for job in [job for job in chosen if job.state.is_active]:
            results.append({**await self._stop(job, by, reason), "display_id": job.display_id})
        return results

    async def _fail_unstarted(self, ids: list[int], reason: str) -> list[dict[str, Any]]:
        """Fail jobs that never started, all in one transaction."""
        now = time.time()
        async with self._lock:
            moved = await self._store.jobs.bulk_transition(
                ids, NOT_STARTED, JobState.FAILED, reason, now, ended=now
            )
            out: list[dict[str, Any]] = []
            for job_id, _old in moved:
                job = self._active.get(job_id)
                if job is None:
                    continue
                job.state, job.reason, job.ended = JobState.FAILED, reason, now
                self._finished(job)
                out.append({"job_id": job.id, "display_id": job.display_id, "result": "cancelled"})
        missed = set(ids) - {job_id for job_id, _ in moved}
        out += [{"job_id": j, "result": "already started or final"} for j in sorted(missed)]
        return out

    async def _stop(self, chosen: JobRecord, by: str, reason: str | None) -> dict[str, Any]:
        job = self._active.get(chosen.id)
        if job is None:
            stored = await self._store.jobs.get_job(chosen.id)
            status = "not found" if stored is None else f"already {stored.state}"
            return {"job_id": chosen.id, "result": status}
        if job.state.is_active:
            result = await self._terminate(job, reason or f"terminated by {by}")
            return {"job_id": job.id, "result": result}
        ok = await self.fail_job(job, reason or f"cancelled by {by}")
        return {"job_id": job.id, "result": "cancelled" if ok else "already final"}

    async def _terminate(self, job: JobRecord, reason: str) -> str:
        """Kill a STARTING/RUNNING job's processes; the exit event finishes it."""
        pending = []
        for a in current_attempts(job):
            if a.state in LIVE and not await self._hosts.terminate(a, reason):
                pending.append(a)
        if pending and job.id in self._active:
            # Never launched, or its host is unreachable: fail it now; if the process
            # exists after all, the host fences it when it reconnects.
            await self.fail_job(job, reason)
            return "terminated"
        return "terminating"
