"""The scheduler loop: load a snapshot, decide (pure), write down, then launch.

It sleeps on an asyncio.Event that submit, exit, cancel and host changes set;
there is no timer. Several wake-ups while a pass runs fold into one more pass.
"""

from __future__ import annotations

import asyncio
import logging
import time

from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.snapshot import Snapshot, UsageLedger
from hpcbatch.core.records import AttemptRecord, AttemptState
from hpcbatch.core.scheduler import schedule
from hpcbatch.core.states import JobState
from hpcbatch.store.db import StartOrder, StoreError

log = logging.getLogger(__name__)

MAX_PASS_GAP_S = 0.2  # the longest a wake-up waits for the previous pass's cool-down
LAUNCH_CHUNK = 256  # launches made ready per turn of the event loop


class SchedulerLoop:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.ledger = UsageLedger()
        jobs.observers.append(self.ledger.job_finished)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.last_pass_s = 0.0
        self.max_pass_s = 0.0  # these for the `stats` op: whole passes (with their
        self.total_pass_s = 0.0  # writes, and waits for the job lock), and planning alone
        self.max_plan_s = 0.0
        self.total_plan_s = 0.0
        self._last_end = 0.0
        self._cost = 0.0  # of the last pass, or of the last look that found nothing to run
        self._last_started = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")
        self.wake()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            await self._wake.wait()
            # Under a stream of wake-ups (a submit burst, many exits), space the passes
            # so that scheduling takes at most about half the loop's time: a pass costs
            # O(runnable jobs), and one pass per event would make a burst quadratic. An
            # idle controller still schedules a lone submit at once.
            # A pass that started nothing waits longer (4x): until something ends, new
            # submissions rarely change its answer.
            gap = self._cost * (1 if self._last_started else 4)
            since = time.perf_counter() - self._last_end
            if since < gap:
                await asyncio.sleep(min(gap - since, MAX_PASS_GAP_S))
            self._wake.clear()
            if self._stopping:
                break
            try:
                self._last_started = await self.pass_once()
                delay = 0.1
            except StoreError as exc:
                log.error("scheduling pass could not write: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()

    async def pass_once(self) -> int:
        """One pass; returns how many jobs it started."""
        jobs = self.jobs
        t0 = time.perf_counter()
        runnable = [j for j in jobs.active.values() if j.state == JobState.RUNNABLE]
        if not runnable:
            # This look is O(active jobs) too: when tens of thousands run and each exit
            # wakes the loop, unspaced looks cost more than everything else together.
            self._last_end = time.perf_counter()
            self._cost = self._last_end - t0
            return 0
        cluster = jobs.cluster
        snap = Snapshot.build(cluster, jobs.active, self.ledger, time.time())
        plan = schedule(
            cluster.host_views(),
            snap.queues,
            [jobs.view(j) for j in runnable],
            **snap.kwargs(),
        )
        plan_s = time.perf_counter() - t0
        self.max_plan_s = max(self.max_plan_s, plan_s)
        self.total_plan_s += plan_s
        for job_id, reason in plan.reasons.items():
            job = jobs.active.get(job_id)
            if job is not None and job.reason != reason:
                job.reason = reason
                jobs.publish(job)
        if not plan.starts:
            self._account(t0)
            return 0
        now = time.time()
        orders = []
        for job_id, placements in plan.starts:
            job = jobs.active[job_id]
            where = ",".join(p.host for p in placements)
            orders.append(StartOrder(job_id, job.attempt + 1, placements, f"allocated on {where}"))
        async with jobs.lock:
            started = set(await jobs.store.start_jobs(orders, now))
            launched = []
            for order in orders:
                job = jobs.active.get(order.job_id)
                if order.job_id not in started or job is None:
                    continue
                job.state = JobState.STARTING
                job.reason = order.reason
                job.attempt = order.attempt
                job.attempts = [
                    AttemptRecord(
                        job_id=job.id,
                        attempt=order.attempt,
                        node=node,
                        host=p.host,
                        cpus=p.cpus,
                        memory_mb=p.memory_mb,
                        gpus=p.gpus,
                        state=AttemptState.STARTING,
                        created=now,
                        exclusive=p.exclusive,
                    )
                    for node, p in enumerate(order.placements)
                ]
                cluster.hold(job.attempts)
                launched.append(job)
        for i, job in enumerate(launched, 1):
            jobs.publish(job)
            jobs.launch_soon(job)
            if i % LAUNCH_CHUNK == 0:
                # Let the loop read between chunks: a pass that starts 40,000 jobs made
                # 40,000 launch tasks ready at once, and the loop ran them all (~30 s)
                # before reading any socket, so every host looked silent and was cut off.
                await asyncio.sleep(0)
        self._account(t0)
        return len(launched)

    def _account(self, t0: float) -> None:
        self.passes += 1
        self._last_end = time.perf_counter()
        self.last_pass_s = self._cost = self._last_end - t0
        self.max_pass_s = max(self.max_pass_s, self.last_pass_s)
        self.total_pass_s += self.last_pass_s
