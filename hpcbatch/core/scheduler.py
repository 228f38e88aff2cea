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
2. Within a queue, FIFO (the order given) or fair share (the user with the
   least decayed usage per share first; see `fairshare`).
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
`Throttle:`
    Its array already runs as many children as its `%N` throttle allows.
`Dependency:`
    (Set by the controller from `hpcbatch.core.dependencies`, not here.) It
    waits for another job, named, or for a singleton.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import attrgetter

from hpcbatch.core import fairshare, reasons
from hpcbatch.core.backfill import NEVER, Hold, Reservation, Timeline, reserve
from hpcbatch.core.placement import Free, Pool
from hpcbatch.core.reasons import describe, infeasible
from hpcbatch.core.records import Placement
from hpcbatch.core.units import format_duration
from hpcbatch.core.views import (
    ComputeEnvView,
    HostView,
    JobView,
    Plan,
    QueuePolicy,
    QueueView,
    RunningView,
)

__all__ = [
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


def _limit(limit: float | None, queue: QueueView | None) -> float | None:
    if limit is not None and limit > 0:
        return limit
    if queue is not None and queue.default_time_limit_s:
        return queue.default_time_limit_s
    return None


def _when(t: float, now: float) -> str:
    return "now" if t <= now else f"in {format_duration(math.ceil(t - now))}"


class _FairOrder:
    """A queue's jobs, the user with the lowest usage per share first, re-ranked as it goes."""

    def __init__(
        self, jobs: Sequence[JobView], usage: Mapping[str, float], shares: Mapping[str, float]
    ) -> None:
        self.per_user: dict[str, deque[tuple[int, JobView]]] = {}
        for pos, job in enumerate(jobs):
            self.per_user.setdefault(job.user, deque()).append((pos, job))
        self.usage = {u: max(usage.get(u, 0.0), 0.0) for u in self.per_user}
        self.shares = {u: fairshare.share_of(u, shares) for u in self.per_user}

    def charge(self, user: str, amount: float) -> None:
        self.usage[user] = self.usage.get(user, 0.0) + amount

    def __iter__(self) -> Iterator[JobView]:
        usage, shares, key_of = self.usage, self.shares, fairshare.ordering_key
        heap = [(key_of(usage[u], shares[u]), q[0][0], u) for u, q in self.per_user.items()]
        heapq.heapify(heap)
        while heap:
            _, _, user = heapq.heappop(heap)
            q = self.per_user[user]
            while q:
                yield q.popleft()[1]  # the caller may charge `user` before we rank them again
                if q:
                    # Stay with this user while they still rank first: most jobs do not
                    # start (nothing charged), and this saves a heap push and pop each.
                    entry = (key_of(usage[user], shares[user]), q[0][0], user)
                    if heap and entry > heap[0]:
                        heapq.heappush(heap, entry)
                        break


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
        count_q = any(q.max_vcpus is not None for q in self.queues)
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
        self, jobs: Iterable[JobView], usage: Mapping[str, float], shares: Mapping[str, float]
    ) -> Plan:
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
            self.run_queue(q, active, waiting, usage, shares)
        for orphans in by_queue.values():
            for job in orphans:
                reasons_[job.id] = f"QueueUnknown: queue {job.queue} is not in the inventory"
        return self.plan

    def run_queue(
        self,
        q: QueueView,
        pools: list[Pool],
        waiting: list[JobView],
        usage: Mapping[str, float],
        shares: Mapping[str, float],
    ) -> None:
        fair = _FairOrder(waiting, usage, shares) if q.policy == QueuePolicy.FAIRSHARE else None
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
        for job in it:
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
                job.queue, job.cpus, job.memory_mb, job.gpus, job.nodes, job.exclusive, job.fabric
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
            started = self.consider(q, pools, hosts, job, end, shape, failed, failed_by_end)
            if started and fair is not None:
                seconds = self.horizon if limit is None else limit
                need_c, need_g = job.cpus * job.nodes, job.gpus * job.nodes
                fair.charge(job.user, fairshare.charge(need_c, need_g, seconds, self.gpu_weight))

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
    backfill: bool = True,
    fairshare_horizon_s: float = fairshare.DEFAULT_HORIZON_S,
    gpu_weight: float = fairshare.DEFAULT_GPU_WEIGHT,
) -> Plan:
    """Decide which runnable jobs start now and where, and why the others wait.

    `jobs` are the runnable jobs in submission order. `running` are the
    allocations held now (queue limits, throttles, CE use, and their expected
    ends for backfill); `usage` is each user's decayed usage for fair-share
    queues and `shares` their shares (1 when not listed). `now` is the clock the
    `running` start times use. Inputs are not changed; the same inputs give
    the same plan.

    Once a request shape has failed in a pass it fails again without another
    search: resources only shrink during a pass, and the reservation only
    tightens.
    """
    p = _Pass(hosts, queues, compute_envs, running, now, backfill, fairshare_horizon_s, gpu_weight)
    return p.run(jobs, usage or {}, shares or {})
