"""The scheduler's snapshot, built from the controller's memory (no SQL per pass).

`Snapshot.build` turns the live jobs, hosts and inventory into the pure
scheduler's inputs: queue and compute-environment views, running allocations
(for queue limits, array throttles, vCPU caps and backfill), and each user's
decayed usage for fair share, which `UsageLedger` keeps up to date as jobs end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.controller.cluster import Cluster, HostRuntime
from hpcbatch.core import fairshare
from hpcbatch.core.gang import gang_shape
from hpcbatch.core.jobcontrol import order_key
from hpcbatch.core.records import AttemptRecord, JobRecord, Placement
from hpcbatch.core.scheduler import (
    AllocationStrategy,
    ComputeEnvView,
    JobView,
    QueuePolicy,
    QueueView,
    RunningView,
)
from hpcbatch.core.views import UserLimits
from hpcbatch.inventory import ResolvedQueue
from hpcbatch.store.db import Store

# Decayed usage older than this many half-lives is below 0.1% and not loaded.
_HISTORY_HALF_LIVES = 10


def throttle_of(job: JobRecord) -> tuple[str | None, int | None]:
    """An array child's throttle group (its parent) and limit (`%N`), if throttled."""
    limit = job.spec.array_throttle
    if job.array_parent is None or not limit:
        return None, None
    return str(job.array_parent), int(limit)


def job_view(job: JobRecord) -> JobView:
    spec = job.spec
    group, limit = throttle_of(job)
    cpus, memory_mb, gpus = gang_shape(spec.raw)  # per node: the largest node range decides
    return JobView(
        id=job.id,
        queue=job.queue,
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        nodes=spec.nodes,
        exclusive=spec.exclusive,
        fabric=spec.fabric,
        user=job.user,
        time_limit_s=spec.time_limit_s,
        throttle_group=group,
        throttle_limit=limit,
        share_id=spec.share_id or "",
        target=spec.target,
        order=order_key(spec.priority, spec.nice),
        begin=spec.begin,
        deadline=spec.deadline,
    )


def user_limits(q: ResolvedQueue) -> UserLimits | None:
    """The queue's per-user limits as the scheduler reads them; None when it has none."""
    limits = (q.max_running_per_user, q.max_vcpus_per_user, q.max_gpus_per_user,
              q.max_nodes_per_user)  # fmt: skip
    if all(v is None for v in limits):
        return None
    return UserLimits(q.limits_per, *limits)


class UsageLedger:
    """Each share identifier's decayed usage of finished work, in CPU-seconds (GPUs
    weighted), kept once per half-life in use (the default and each fair-share
    queue's own `share_decay_half_life_s`): decay cannot be redone afterwards with
    another half-life, so every half-life has its own running sum."""

    def __init__(
        self,
        half_life_s: float = fairshare.DEFAULT_HALF_LIFE_S,
        others: tuple[float, ...] = (),
    ) -> None:
        self.half_life_s = half_life_s
        self.by_half_life: dict[float, dict[str, fairshare.Usage]] = {half_life_s: {}}
        self.watch(others)
        self.usage = self.by_half_life[half_life_s]

    def watch(self, half_lives: tuple[float, ...]) -> None:
        """Keep sums for these half-lives too (a new one starts from what ends next)."""
        for h in half_lives:
            self.by_half_life.setdefault(h, {})

    async def load(self, store: Store, now: float) -> None:
        since = now - _HISTORY_HALF_LIVES * max(self.by_half_life)
        for share, cpus, gpus, started, ended in await store.jobs.usage_rows(since):
            if ended is not None:
                self.add(share, cpus, gpus, started, ended)

    def add(self, share: str, cpus: int, gpus: int, started: float, ended: float) -> None:
        spent = fairshare.charge(cpus, gpus, ended - started)
        for half_life, sums in self.by_half_life.items():
            usage = sums.setdefault(share, fairshare.Usage(0.0, ended))
            sums[share] = usage.add(spent, ended, half_life)

    def job_finished(self, job: JobRecord) -> None:
        if not job.state.is_final:
            return
        share = job.spec.share_id or job.user
        for a in job.attempts:
            if a.attempt == job.attempt and a.started is not None:
                self.add(share, a.cpus, len(a.gpus), a.started, a.ended or time.time())

    def snapshot(
        self, now: float, running: list[RunningView], half_life_s: float | None = None
    ) -> dict[str, float]:
        """Decayed usage per share identifier now, running allocations included."""
        h = self.half_life_s if half_life_s is None else half_life_s
        sums = self.by_half_life.get(h, self.usage)
        out = {u: v.at(now, h) for u, v in sums.items()}
        for r in running:
            cpus = sum(p.cpus for p in r.placements)
            gpus = sum(len(p.gpus) for p in r.placements)
            share = r.share_id or r.user
            out[share] = out.get(share, 0.0) + fairshare.charge(cpus, gpus, now - r.start)
        return out


@dataclass(slots=True)
class Snapshot:
    queues: list[QueueView]
    compute_envs: list[ComputeEnvView]
    running: list[RunningView]
    usage: dict[str, float]
    now: float
    usage_by_half_life: dict[float, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cluster: Cluster,
        live: Callable[[int], JobRecord | None],
        ledger: UsageLedger,
        now: float,
        running: list[RunningView] | None = None,
    ) -> Snapshot:
        """The scheduler's inputs now; `running` if the caller built it (in slices)."""
        inv = cluster.inventory
        queues = [
            QueueView(
                name=name,
                priority=q.priority,
                hosts=cluster.queue_hosts(name),
                enabled=cluster.queue_enabled.get(name, True),
                compute_envs=tuple(q.compute_environments),
                policy=QueuePolicy.FAIRSHARE if q.policy == "FAIRSHARE" else QueuePolicy.FIFO,
                max_running=q.max_running,
                max_vcpus=q.max_vcpus,
                default_time_limit_s=q.default_time_limit_s,
                shares=q.shares,
                half_life_s=q.share_decay_half_life_s,
                compute_reservation=q.compute_reservation,
                user_limits=user_limits(q),
            )
            for name, q in inv.queues.items()
        ]
        ces = [
            ComputeEnvView(
                name=name,
                hosts=tuple(ce.hosts),
                enabled=ce.enabled,
                max_vcpus=ce.max_vcpus,
                strategy=AllocationStrategy(ce.allocation_strategy),
            )
            for name, ce in inv.compute_environments.items()
        ]
        if running is None:
            running = running_views(cluster, live, held_by_job(cluster.hosts.values()))
        fair = any(q.policy == QueuePolicy.FAIRSHARE for q in queues)
        usage = ledger.snapshot(now, running) if fair else {}
        by_half_life = {
            q.half_life_s: ledger.snapshot(now, running, q.half_life_s)
            for q in queues
            if q.policy == QueuePolicy.FAIRSHARE and q.half_life_s is not None
        }
        return cls(queues, ces, running, usage, now, by_half_life)

    def kwargs(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "running": self.running,
            "compute_envs": self.compute_envs,
            "usage": self.usage,
            "usage_by_half_life": self.usage_by_half_life,
        }


def held_by_job(hosts: Iterable[HostRuntime]) -> dict[int, list[AttemptRecord]]:
    """What holds resources on `hosts`, by job: O(allocations), not O(jobs)."""
    held: dict[int, list[AttemptRecord]] = {}
    for host in hosts:
        for a in host.holders.values():
            held.setdefault(a.job_id, []).append(a)
    return held


def running_views(
    cluster: Cluster, live: Callable[[int], JobRecord | None], held: dict[int, list[AttemptRecord]]
) -> list[RunningView]:
    return [
        running_view(cluster, job, attempts)
        for job_id, attempts in held.items()
        if (job := live(job_id)) is not None
    ]


def running_view(cluster: Cluster, job: JobRecord, attempts: list[AttemptRecord]) -> RunningView:
    group, _limit = throttle_of(job)
    start = min((a.started or a.created) for a in attempts)
    return RunningView(
        job_id=job.id,
        queue=job.queue,
        placements=tuple(
            Placement(a.host, a.cpus, a.memory_mb, a.gpus, cores=a.cores) for a in attempts
        ),
        start=start,
        time_limit_s=job.spec.time_limit_s,
        user=job.user,
        throttle_group=group,
        compute_env=cluster.compute_env_of(job.queue, attempts[0].host),
        share_id=job.spec.share_id or "",
    )
