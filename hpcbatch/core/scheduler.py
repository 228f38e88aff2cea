"""The scheduling pass: a pure function from a snapshot to a plan.

No I/O happens here. The controller builds a snapshot (hosts with what is
allocated on them, queues, compute environments, running allocations, runnable
jobs in submission order), calls `schedule`, writes the plan down, and only
then launches. That keeps the policy testable on tiny inline clusters and by
property-based tests.

Two different refusals, as in flux: `infeasible()` says a request could never
run in its queue (refused at submit); `schedule()` gives a pending reason for a
request that cannot run *now*.

The policy, in order (docs/scheduling.md has the long form):

1. Queues by priority, higher first (ties: the order given). A disabled queue
   keeps its jobs and starts none.
2. Within a queue, FIFO (the order given) or fair share (the share identifier,
   by default the user, with the least decayed usage per share first; see
   `fairshare`), less any compute reservation kept for identifiers not active.
3. Per job: the queue's limits (running jobs, vCPUs), the job's array throttle,
   then placement on the queue's enabled compute environments in order, each
   within its vCPU cap. Single-node jobs go best-fit (fewest spare GPUs, then
   fewest free CPUs), to keep whole hosts free; whole-host jobs (`nodes > 1` or
   exclusive) take idle hosts, all in one fabric island (the smallest that fits)
   when they ask for a fabric. GPUs are assigned by index.
4. EASY backfill: the first job that cannot start for lack of resources gets a
   reservation (the earliest time running allocations free enough, from their
   start and time limit; the queue's default limit for jobs without one); a
   later job starts now only where it cannot delay that reservation.

Pending reason codes (the text before the first colon is stable):

`Resources:`
    Not enough free now: the request and the best host or island there is
    (e.g. "needs 4 GPUs on one host; the largest free is ... 2 GPUs on node3").
    The job that holds the pass's reservation adds when and where it will start.
    Wait, or ask for less.
`Reservation:`
    It fits now, but would delay the reservation held for a higher job (named).
    A shorter time limit (`--time`) lets it backfill before that start.
`QueueDisabled:`
    Its queue is disabled; an administrator must enable it.
`QueueUnknown:`
    Its queue is not in the configuration.
`QueueLimit:`
    The queue's limit on running jobs or vCPUs is reached; wait for its jobs to end.
`ComputeEnvDisabled:`
    Every compute environment of the queue is disabled.
`ComputeEnvLimit:`
    Every compute environment of the queue that is enabled is at its vCPU cap.
`ShareReservation:`
    Its fair-share queue keeps part of its vCPUs for share identifiers with
    nothing running (`compute_reservation`), and this job's identifier is active.
`UserLimit:`
    Its user (or share identifier) holds as much as the queue allows one at once.
`Throttle:`
    Its array already runs as many children as its `%N` throttle allows.
`BeginTime:`
    It asked not to start before a time (`--begin`), named.
`JobHeldUser:` / `JobHeldAdmin:`
    (Set by the controller: held jobs are PENDING, not given to the pass.)
`DeadLine:`
    (A failure, not a wait.) It could not end by its `--deadline`: started now,
    its time limit would run past it.
`Dependency:`
    (Set by the controller from `hpcbatch.core.dependencies`, not here.) It
    waits for another job, named, or for a singleton.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import attrgetter

from hpcbatch.core import fairshare, reasons
from hpcbatch.core.backfill import NEVER, Hold, Timeline, reserve
from hpcbatch.core.limits import UserCounts
from hpcbatch.core.placement import Free, Pool
from hpcbatch.core.reasons import describe, infeasible
from hpcbatch.core.records import Placement
from hpcbatch.core.shares import FairOrder, ShareReservation
from hpcbatch.core.units import format_clock, format_duration
from hpcbatch.core.views import (
    AllocationStrategy,
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueuePolicy,
    QueueView,
    Reservation,
    RunningView,
    by_priority,
)

__all__ = [
    "AllocationStrategy",
    "ComputeEnvView",
    "HostView",
    "JobView",
    "Plan",
    "QueuePolicy",
    "QueueView",
    "Reservation",
    "RunningView",
    "describe",
    "infeasible",
    "schedule",
]

_MAX_RESERVATION_TRIES = 8  # distinct request shapes tried for a reservation per pass
STEP = 64  # jobs considered between two steps of `schedule_in_steps`


def _limit(limit: float | None, queue: QueueView | None) -> float | None:
    if limit is not None and limit > 0:
        return limit
    if queue is not None and queue.default_time_limit_s:
        return queue.default_time_limit_s
    return None


def _when(t: float, now: float) -> str:
    return "now" if t <= now else f"in {format_duration(math.ceil(t - now))}"


class _Pass:
    """The mutable state of one scheduling pass."""

    def __init__(
        self,
        hosts: Iterable[HostView],
        queues: Iterable[QueueView],
        compute_envs: Iterable[ComputeEnvView],
        running: Iterable[RunningView],
        now: float,
        backfill: bool,
        fairshare_horizon_s: float,
        gpu_weight: float,
    ) -> None:
        self.now = now
        self.backfill = backfill
        self.horizon = fairshare_horizon_s
        self.gpu_weight = gpu_weight
        self.plan = Plan()
        self.free = {h.name: Free.of(h) for h in hosts}
        self.queues = list(queues)
        self.queue_by_name = {q.name: q for q in self.queues}
        self.running = running if isinstance(running, Sequence) else list(running)
        ces = list(compute_envs)
        # Counting thousands of running allocations is a real share of a pass: count
        # only what some limit needs, and in C where possible.
        self.q_running: Counter[str] = Counter(map(attrgetter("queue"), self.running))
        self.throttled: Counter[str] = Counter(map(attrgetter("throttle_group"), self.running))
        self.q_vcpus: Counter[str] = Counter()
        ce_used: Counter[str] = Counter()
        count_q = any(q.max_vcpus is not None or q.compute_reservation for q in self.queues)
        count_ce = any(c.used_vcpus is None and c.max_vcpus is not None for c in ces)
        if count_q or count_ce:
            for r in self.running:
                ps = r.placements
                vcpus = ps[0].cpus if len(ps) == 1 else sum(p.cpus for p in ps)
                self.q_vcpus[r.queue] += vcpus
                if r.compute_env is not None:
                    ce_used[r.compute_env] += vcpus
        # Built only when a reservation is needed; until then starts are noted here.
        self._timeline: Timeline | None = None
        self._started: list[tuple[tuple[Placement, ...], float]] = []
        self.pools: dict[str, Pool] = {}
        for ce in ces:
            self.pools[ce.name] = Pool(
                ce.name,
                self._hosts(ce.hosts),
                enabled=ce.enabled,
                max_vcpus=ce.max_vcpus,
                used_vcpus=ce_used[ce.name] if ce.used_vcpus is None else ce.used_vcpus,
                strategy=ce.strategy,
            )
        self.hold: Hold | None = None
        self.reserve_tries = 0
        self.no_reservation: set[tuple[object, ...]] = set()

    @property
    def timeline(self) -> Timeline:
        if self._timeline is None:
            self._timeline = t = Timeline()
            default = {q.name: _limit(None, q) for q in self.queues}
            add = t.add
            for r in self.running:
                limit = r.time_limit_s if r.time_limit_s else default.get(r.queue)
                add(r.placements, NEVER if limit is None else r.start + limit)
            for placements, end in self._started:
                t.add(placements, end)
            self._started.clear()
        return self._timeline

    def _hosts(self, names: Iterable[str]) -> list[Free]:
        return [self.free[n] for n in dict.fromkeys(names) if n in self.free]

    def pools_of(self, q: QueueView) -> list[Pool]:
        if q.compute_envs:
            return [self.pools[n] for n in dict.fromkeys(q.compute_envs) if n in self.pools]
        return [Pool(f"queue {q.name}", self._hosts(q.hosts), real=False)]

    def run(
        self,
        jobs: Iterable[JobView],
        usage: Mapping[str, float],
        shares: Mapping[str, float],
        usage_by_half_life: Mapping[float, Mapping[str, float]],
    ) -> Iterator[Plan | None]:
        """The pass, a step at a time: None after every STEP jobs considered, then the plan."""
        by_queue: dict[str, list[JobView]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        reasons_ = self.plan.reasons
        for q in sorted(self.queues, key=lambda q: -q.priority):
            waiting = by_queue.pop(q.name, [])
            if not waiting:
                continue
            if not q.enabled:
                for job in waiting:
                    reasons_[job.id] = f"QueueDisabled: queue {q.name} is disabled"
                continue
            pools = self.pools_of(q)
            active = [p for p in pools if p.enabled]
            if pools and not active:
                names = ", ".join(p.name for p in pools)
                for job in waiting:
                    reasons_[job.id] = (
                        f"ComputeEnvDisabled: every compute environment of queue {q.name} "
                        f"is disabled ({names})"
                    )
                continue
            q_usage = usage
            if q.half_life_s is not None:
                q_usage = usage_by_half_life.get(q.half_life_s, usage)
            yield from self.run_queue(q, active, waiting, q_usage, q.shares or shares)
        for orphans in by_queue.values():
            for job in orphans:
                reasons_[job.id] = f"QueueUnknown: queue {job.queue} is not in the inventory"
        yield self.plan

    def run_queue(
        self,
        q: QueueView,
        pools: list[Pool],
        waiting: list[JobView],
        usage: Mapping[str, float],
        shares: Mapping[str, float],
    ) -> Iterator[None]:
        waiting = by_priority(waiting)
        fair = FairOrder(waiting, usage, shares) if q.policy == QueuePolicy.FAIRSHARE else None
        reserve = ShareReservation.of(q, pools, self.running) if fair is not None else None
        per_user = UserCounts(q.name, q.user_limits, self.running) if q.user_limits else None
        order: Iterable[JobView] = fair if fair is not None else waiting
        hosts = list({f.name: f for p in pools for f in p.hosts}.values())
        # Failures stay failures for the rest of the pass (resources only shrink, the
        # hold only tightens): by shape, or by shape and end for backfill and caps.
        failed: dict[tuple[object, ...], str] = {}
        failed_by_end: dict[tuple[object, ...], str] = {}
        self.reason_cache: dict[tuple[object, ...], tuple[int, str]] = {}
        reasons_ = self.plan.reasons
        throttled = self.throttled
        it = iter(order)
        seen = 0
        for job in it:
            seen += 1
            if seen % STEP == 0:
                yield None
            if job.begin is not None and job.begin > self.now:
                reasons_[job.id] = f"BeginTime: not before {format_clock(job.begin)}"
                plan = self.plan
                plan.wake_at = job.begin if plan.wake_at is None else min(plan.wake_at, job.begin)
                continue
            if job.deadline is not None:
                most = _limit(job.time_limit_s, q) or 0
                if self.now + most > job.deadline:
                    self.plan.expired[job.id] = (
                        f"DeadLine: it could not end by {format_clock(job.deadline)} "
                        f"(time limit {format_duration(int(most))})"
                    )
                    continue
            if q.max_running is not None and self.q_running[q.name] >= q.max_running:
                why = (
                    f"QueueLimit: queue {q.name} runs at most {q.max_running} jobs at once "
                    f"({self.q_running[q.name]} running)"
                )
                reasons_[job.id] = why
                for rest in it:
                    reasons_[rest.id] = why
                return
            group = job.throttle_group
            if group is not None:
                n = job.throttle_limit
                if n is not None and throttled[group] >= n:
                    reasons_[job.id] = (
                        f"Throttle: array job {group} runs at most {n} "
                        f"children at once ({throttled[group]} running)"
                    )
                    continue
            # job.shape(), inlined: this line runs for every waiting job
            shape = (
                job.queue, job.cpus, job.memory_mb, job.gpus, job.nodes, job.exclusive, job.fabric,
                job.target,
            )  # fmt: skip
            known = failed.get(shape)
            if known is not None:
                reasons_[job.id] = known
                continue
            limit = _limit(job.time_limit_s, q)
            end = NEVER if limit is None else self.now + limit
            if failed_by_end:
                known = failed_by_end.get((*shape, end))
                if known is not None:
                    reasons_[job.id] = known
                    continue
            if per_user is not None:
                over = per_user.refuses(job)
                if over is not None:
                    reasons_[job.id] = over
                    continue
            if reserve is not None:
                held = reserve.refuses(job, self.q_vcpus[q.name])
                if held is not None:
                    reasons_[job.id] = held
                    continue
            started = self.consider(q, pools, hosts, job, end, shape, failed, failed_by_end)
            if started and per_user is not None:
                per_user.started(job)
            if started and fair is not None:
                seconds = self.horizon if limit is None else limit
                need_c, need_g = job.cpus * job.nodes, job.gpus * job.nodes
                share = job.share_id or job.user
                fair.charge(share, fairshare.charge(need_c, need_g, seconds, self.gpu_weight))
                if reserve is not None:
                    reserve.active.add(share)

    def consider(
        self,
        q: QueueView,
        pools: list[Pool],
        hosts: list[Free],
        job: JobView,
        end: float,
        shape: tuple[object, ...],
        failed: dict[tuple[object, ...], str],
        failed_by_end: dict[tuple[object, ...], str],
    ) -> bool:
        """Start `job` (True) or give it a reason (False)."""
        reasons_ = self.plan.reasons
        need = job.cpus * job.nodes
        if q.max_vcpus is not None and self.q_vcpus[q.name] + need > q.max_vcpus:
            reasons_[job.id] = (
                f"QueueLimit: queue {q.name} allows {q.max_vcpus} vCPUs at once; "
                f"{self.q_vcpus[q.name]} in use, this job needs {need}"
            )
            return False
        hold = self.hold
        allow = None
        if hold is not None:

            def allow(f: Free) -> bool:
                return hold.allows(f, job, end)

        capped = 0
        whole = job.whole_hosts
        for pool in pools:
            if pool.max_vcpus is not None and pool.used_vcpus + need > pool.max_vcpus:
                capped += 1
                continue
            if whole:
                picked = pool.pick_gang(job, allow)
                if picked is None:
                    continue
                charge = sum(f.cpus for f in picked)
                if not pool.room(charge):
                    capped += 1
                    continue
            else:
                one = pool.pick_single(job, allow)
                if one is None:
                    continue
                if (
                    pool.strategy != AllocationStrategy.BEST_FIT_PROGRESSIVE
                    and pool.elastic()
                    and pool.pick_power(job, below_weight=one.host.weight) is not None
                ):
                    continue  # a cheaper host is powered down: resume it (below)
                picked = [one]
                charge = need
            if q.max_vcpus is not None and self.q_vcpus[q.name] + charge > q.max_vcpus:
                reasons_[job.id] = (
                    f"QueueLimit: queue {q.name} allows {q.max_vcpus} vCPUs at once; "
                    f"{self.q_vcpus[q.name]} in use, this job would take {charge}"
                )
                return False
            self.start(q, pool, job, picked, charge, end)
            return True
        if self.power_up(pools, job):
            return False
        if capped == len(pools):
            why = "ComputeEnvLimit: " + "; ".join(
                f"compute environment {p.name} is at its vCPU cap "
                f"({p.used_vcpus} of {p.max_vcpus} in use, this job needs {need})"
                for p in pools
            )
            failed_by_end[(*shape, end)] = reasons_[job.id] = why
            return False
        if hold is not None and any(p.pick(job, None) is not None for p in pools):
            r = hold.reservation
            why = (
                f"Reservation: waiting behind the reservation for job {r.job_id}, which starts "
                f"{_when(r.start, self.now)} on {','.join(r.hosts)}; this job would delay it "
                f"(a shorter time limit may let it start sooner)"
            )
            failed_by_end[(*shape, end)] = reasons_[job.id] = why
            return False
        why = reasons.resources(job, q.name, hosts, self.reason_cache, len(self.plan.starts))
        failed[shape] = reasons_[job.id] = why
        if hold is None and self.backfill:
            self.try_reserve(job, pools, shape)
        return False

    def power_up(self, pools: list[Pool], job: JobView) -> bool:
        """Whether `job` waits for elastic hosts: powering up already, or resumed now
        (added to the plan's `resume`), which will fit it once up."""
        for pool in pools:
            if not pool.elastic():
                continue
            got = pool.pick_power(job)
            if got is None:
                continue
            resume = self.plan.resume
            for f in got:
                if f.host.power == "POWERED_DOWN" and f.name not in resume:
                    resume.append(f.name)
            since = min((f.host.powering_since or self.now for f in got), default=self.now)
            self.plan.reasons[job.id] = (
                f"Resources: powering up {', '.join(f.name for f in got)} "
                f"(since {max(0, int(self.now - since))} s)"
            )
            return True
        return False

    def start(
        self, q: QueueView, pool: Pool, job: JobView, picked: list[Free], charge: int, end: float
    ) -> None:
        hold = self.hold
        if hold is not None:
            for f in picked:
                hold.charge(f, job, end)
        if len(picked) == 1:
            placements: tuple[Placement, ...] = (picked[0].take(job),)
        else:
            placements = tuple(f.take(job) for f in picked)
        plan = self.plan
        plan.starts.append((job.id, placements))
        if pool.real:
            plan.compute_envs[job.id] = pool.name
        pool.used_vcpus += charge
        self.q_running[q.name] += 1
        self.q_vcpus[q.name] += charge
        if job.throttle_group is not None:
            self.throttled[job.throttle_group] += 1
        if self._timeline is None:
            self._started.append((placements, end))
        else:
            self._timeline.add(placements, end)

    def try_reserve(self, job: JobView, pools: list[Pool], shape: tuple[object, ...]) -> None:
        if shape in self.no_reservation or self.reserve_tries >= _MAX_RESERVATION_TRIES:
            return
        self.reserve_tries += 1
        hold = reserve(job, pools, self.timeline, self.now)
        if hold is None:
            self.no_reservation.add(shape)
            return
        self.hold = hold
        r = hold.reservation
        self.plan.reservations.append(r)
        self.plan.reasons[job.id] += (
            f"; reserved: expected to start {_when(r.start, self.now)} on {','.join(r.hosts)}"
        )


def schedule(
    hosts: Iterable[HostView],
    queues: Iterable[QueueView],
    jobs: Iterable[JobView],
    *,
    now: float = 0.0,
    running: Iterable[RunningView] = (),
    compute_envs: Iterable[ComputeEnvView] = (),
    usage: Mapping[str, float] | None = None,
    shares: Mapping[str, float] | None = None,
    usage_by_half_life: Mapping[float, Mapping[str, float]] | None = None,
    backfill: bool = True,
    fairshare_horizon_s: float = fairshare.DEFAULT_HORIZON_S,
    gpu_weight: float = fairshare.DEFAULT_GPU_WEIGHT,
) -> Plan:
    """Decide which runnable jobs start now and where, and why the others wait.

    `jobs` are the runnable jobs in submission order. `running` are the
    allocations held now (queue limits, throttles, CE use, and their expected
    ends for backfill); `usage` is each share identifier's (by default each
    user's) decayed usage for fair-share queues and `shares` their shares (1 when
    not listed; a queue's own `shares` replace them). A queue with its own
    `half_life_s` reads its usage from `usage_by_half_life[half_life_s]`. `now` is the clock the
    `running` start times use. Inputs are not changed; the same inputs give
    the same plan.

    Once a request shape has failed in a pass it fails again without another
    search: resources only shrink during a pass, and the reservation only
    tightens.
    """
    for step in schedule_in_steps(
        hosts, queues, jobs, now=now, running=running, compute_envs=compute_envs, usage=usage,
        shares=shares, usage_by_half_life=usage_by_half_life, backfill=backfill,
        fairshare_horizon_s=fairshare_horizon_s, gpu_weight=gpu_weight,
    ):  # fmt: skip
        if step is not None:
            return step
    raise AssertionError("a pass ends with its plan")


def schedule_in_steps(
    hosts: Iterable[HostView],
    queues: Iterable[QueueView],
    jobs: Iterable[JobView],
    *,
    now: float = 0.0,
    running: Iterable[RunningView] = (),
    compute_envs: Iterable[ComputeEnvView] = (),
    usage: Mapping[str, float] | None = None,
    shares: Mapping[str, float] | None = None,
    usage_by_half_life: Mapping[float, Mapping[str, float]] | None = None,
    backfill: bool = True,
    fairshare_horizon_s: float = fairshare.DEFAULT_HORIZON_S,
    gpu_weight: float = fairshare.DEFAULT_GPU_WEIGHT,
) -> Iterator[Plan | None]:
    """`schedule`, a step at a time: None after every STEP jobs it considered, then the
    Plan (the last item). A caller on an event loop serves others between steps (a pass
    over 50,000 jobs at 5,000 hosts takes up to seconds); the inputs are views it does
    not change, so what the caller changes meanwhile does not reach the plan."""
    p = _Pass(hosts, queues, compute_envs, running, now, backfill, fairshare_horizon_s, gpu_weight)
    return p.run(jobs, usage or {}, shares or {}, usage_by_half_life or {})
