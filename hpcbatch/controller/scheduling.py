"""The scheduler loop: load a snapshot, decide (pure), write down, then launch.

It sleeps on an asyncio.Event that submit, exit, cancel and host changes set;
there is no timer. Several wake-ups while a pass runs fold into one more pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hpcbatch.controller.jobs import JobService
from hpcbatch.controller.snapshot import Snapshot, UsageLedger, held_by_job, running_views
from hpcbatch.core.records import JobRecord
from hpcbatch.core.scheduler import Plan, schedule_in_steps
from hpcbatch.core.states import JobState
from hpcbatch.store.db import StartOrder, StoreError

log = logging.getLogger(__name__)

MAX_PASS_GAP_S = 0.2  # the longest a wake-up waits for the previous pass's cool-down
STEP_S = 0.005  # the longest planning runs before the loop serves others
SLICE = 512  # hosts viewed, or waiting jobs' reasons noted, per turn of the loop


class SchedulerLoop:
    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        half_lives = tuple(
            float(q.share_decay_half_life_s)
            for q in jobs.cluster.inventory.queues.values()
            if q.share_decay_half_life_s is not None
        )
        self.ledger = UsageLedger(
            others=half_lives
        )  # the composition root makes it observe the jobs
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
        # Elastic hosts a plan needs powered up (the composition root sets it).
        self.on_resume: Callable[[list[str]], None] | None = None
        self._begin_timer: asyncio.TimerHandle | None = None  # the next --begin's pass

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
        runnable = jobs.runnable()
        if not runnable:
            # This look is O(active jobs) too: when tens of thousands run and each exit
            # wakes the loop, unspaced looks cost more than everything else together.
            self._last_end = time.perf_counter()
            self._cost = self._last_end - t0
            return 0
        plan = await self._plan(runnable)
        plan_s = time.perf_counter() - t0
        self.max_plan_s = max(self.max_plan_s, plan_s)
        self.total_plan_s += plan_s
        await self._note_reasons(plan.reasons)
        if plan.resume and self.on_resume is not None:
            self.on_resume(plan.resume)
        await self._timed(plan)
        if not plan.starts:
            self._account(t0)
            return 0
        orders = []
        for job_id, placements in plan.starts:
            job = jobs.live(job_id)
            if job is None:
                continue  # ended (cancelled) while the plan was made: nothing to start
            where = ",".join(p.host for p in placements)
            orders.append(StartOrder(job_id, job.attempt + 1, placements, f"allocated on {where}"))
        started = await jobs.start_plan(orders, time.time())
        self._account(t0)
        return started

    async def _plan(self, runnable: list[JobRecord]) -> Plan:
        """Decide (pure): which runnable jobs start where, and why the others wait.

        The inputs are views built here; the pure scheduler runs a step at a time
        (`schedule_in_steps`), and the loop serves the API and the hosts whenever a
        step ends more than STEP_S after the last time it did: a pass over 50,000 jobs
        at 5,000 hosts takes up to seconds. Meanwhile only the scheduler starts jobs,
        so what the views say is free can only grow (jobs that end free more), and a
        job cancelled meanwhile is skipped (its compare-and-set fails). The views
        themselves are built in slices, for the same reason and with the same effect.
        """
        jobs = self.jobs
        cluster = jobs.cluster
        hosts = list(cluster.hosts.values())
        views, held, running = [], {}, []
        for at in range(0, len(hosts), SLICE):  # in slices: 50 ms at 5,000 hosts
            views += [h.view() for h in hosts[at : at + SLICE]]
            held.update(held_by_job(hosts[at : at + SLICE]))
            await asyncio.sleep(0)
        jobs_held = list(held.items())
        for at in range(0, len(jobs_held), SLICE * 4):  # 40,000 running jobs: 0.2 s
            running += running_views(cluster, jobs.live, dict(jobs_held[at : at + SLICE * 4]))
            await asyncio.sleep(0)
        snap = Snapshot.build(cluster, jobs.live, self.ledger, time.time(), running)
        waiting = [jobs.view(j) for j in runnable]
        steps = schedule_in_steps(views, snap.queues, waiting, **snap.kwargs())
        last, budget = time.perf_counter(), STEP_S
        for step in steps:
            if step is not None:
                return step
            if time.perf_counter() - last > budget:
                await asyncio.sleep(0)
                # A busy loop's turn can take 100 ms (thousands of hosts' packets and
                # launches): planning 5 ms per turn then took 46 s at 5,000 hosts. It
                # runs for half of what the last turn took: a third of the loop at most.
                now = time.perf_counter()
                last, budget = now, max(STEP_S, (now - last - budget) / 2)
        raise AssertionError("a pass ends with its plan")

    async def _note_reasons(self, reasons: dict[int, str]) -> None:
        """Why jobs wait, in slices: every waiting job's reason may change (the largest
        free host is named), and each change is published (~30 us: 40,000 waiting
        jobs, a second). Only to jobs still RUNNABLE: one may be held meanwhile."""
        jobs = self.jobs
        items = list(reasons.items())
        for at in range(0, len(items), SLICE):
            jobs.note_reasons(
                {i: r for i, r in items[at : at + SLICE]
                 if (j := jobs.live(i)) is not None and j.state == JobState.RUNNABLE}
            )  # fmt: skip
            if at + SLICE < len(items):
                await asyncio.sleep(0)

    def share_usage(self) -> tuple[dict[str, float], dict[float, dict[str, float]]]:
        """Decayed usage per share identifier now (running work included): with the
        default half-life, and per half-life of the queues that set their own."""
        jobs = self.jobs
        snap = Snapshot.build(jobs.cluster, jobs.live, self.ledger, time.time())
        return snap.usage, snap.usage_by_half_life

    async def _timed(self, plan: Plan) -> None:
        """Jobs past their --deadline fail (DeadLine); a pass again at the next --begin."""
        for job_id, why in plan.expired.items():
            job = self.jobs.live(job_id)
            if job is not None:
                await self.jobs.fail_job(job, why)
        if plan.wake_at is not None:
            if self._begin_timer is not None:
                self._begin_timer.cancel()
            delay = max(0.0, plan.wake_at - time.time()) + 0.05
            self._begin_timer = asyncio.get_running_loop().call_later(delay, self.wake)

    def _account(self, t0: float) -> None:
        self.passes += 1
        self._last_end = time.perf_counter()
        self.last_pass_s = self._cost = self._last_end - t0
        self.max_pass_s = max(self.max_pass_s, self.last_pass_s)
        self.total_pass_s += self.last_pass_s
