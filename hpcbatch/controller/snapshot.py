"""The scheduler's snapshot, built from the controller's memory (no SQL per pass).

`Snapshot.build` turns the live jobs, hosts and inventory into the pure
scheduler's inputs: queue and compute-environment views, running allocations
(for queue limits, array throttles, vCPU caps and backfill), and each user's
decayed usage for fair share, which `UsageLedger` keeps up to date as jobs end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from hpcbatch.controller.cluster import Cluster
from hpcbatch.core import fairshare
from hpcbatch.core.gang import gang_shape
from hpcbatch.core.records import AttemptRecord, JobRecord, Placement
from hpcbatch.core.scheduler import ComputeEnvView, JobView, QueuePolicy, QueueView, RunningView
from hpcbatch.store.db import Store

# Decayed usage older than this many half-lives is below 0.1% and not loaded.
_HISTORY_HALF_LIVES = 10


def throttle_of(job: JobRecord) -> tuple[str | None, int | None]:
    """An array child's throttle group (its parent) and limit (`%N`), if throttled."""
    limit = job.request.get("array_throttle")
    if job.array_parent is None or not limit:
        return None, None
    return str(job.array_parent), int(limit)


def job_view(job: JobRecord) -> JobView:
    req = job.request
    group, limit = throttle_of(job)
    cpus, memory_mb, gpus = gang_shape(req)  # per node: the largest node range decides
    return JobView(
        id=job.id,
        queue=job.queue,
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        nodes=req.get("nodes", 1),
        exclusive=bool(req.get("exclusive", False)),
        fabric=req.get("fabric"),
        user=job.user,
        time_limit_s=req.get("time_limit_s"),
        throttle_group=group,
        throttle_limit=limit,
    )


class UsageLedger:
    """Each user's decayed usage of finished work, in CPU-seconds (GPUs weighted)."""

    def __init__(self, half_life_s: float = fairshare.DEFAULT_HALF_LIFE_S) -> None:
        self.half_life_s = half_life_s
        self.usage: dict[str, fairshare.Usage] = {}

    async def load(self, store: Store, now: float) -> None:
        since = now - _HISTORY_HALF_LIVES * self.half_life_s
        for user, cpus, gpus, started, ended in await store.usage_rows(since):
            if ended is not None:
                self.add(user, cpus, gpus, started, ended)

    def add(self, user: str, cpus: int, gpus: int, started: float, ended: float) -> None:
        spent = fairshare.charge(cpus, gpus, ended - started)
        usage = self.usage.setdefault(user, fairshare.Usage(0.0, ended))
        self.usage[user] = usage.add(spent, ended, self.half_life_s)

    def job_finished(self, job: JobRecord) -> None:
        if not job.state.is_final:
            return
        for a in job.attempts:
            if a.attempt == job.attempt and a.started is not None:
                self.add(job.user, a.cpus, len(a.gpus), a.started, a.ended or time.time())

    def snapshot(self, now: float, running: list[RunningView]) -> dict[str, float]:
        out = {u: v.at(now, self.half_life_s) for u, v in self.usage.items()}
        for r in running:
            cpus = sum(p.cpus for p in r.placements)
            gpus = sum(len(p.gpus) for p in r.placements)
            out[r.user] = out.get(r.user, 0.0) + fairshare.charge(cpus, gpus, now - r.start)
        return out


@dataclass(slots=True)
class Snapshot:
    queues: list[QueueView]
    compute_envs: list[ComputeEnvView]
    running: list[RunningView]
    usage: dict[str, float]
    now: float

    @classmethod
    def build(
        cls,
        cluster: Cluster,
        active: dict[int, JobRecord],
        ledger: UsageLedger,
        now: float,
    ) -> Snapshot:
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
            )
            for name, q in inv.queues.items()
        ]
        ces = [
            ComputeEnvView(
                name=name, hosts=tuple(ce.hosts), enabled=ce.enabled, max_vcpus=ce.max_vcpus
            )
            for name, ce in inv.compute_environments.items()
        ]
        # What holds resources now, from the hosts' holders: O(allocations), not O(jobs).
        held: dict[int, list[AttemptRecord]] = {}
        for host in cluster.hosts.values():
            for a in host.holders.values():
                held.setdefault(a.job_id, []).append(a)
        running = [
            running_view(cluster, active[job_id], attempts)
            for job_id, attempts in held.items()
            if job_id in active
        ]
        fair = any(q.policy == QueuePolicy.FAIRSHARE for q in queues)
        usage = ledger.snapshot(now, running) if fair else {}
        return cls(queues, ces, running, usage, now)

    def kwargs(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "running": self.running,
            "compute_envs": self.compute_envs,
            "usage": self.usage,
        }


def running_view(cluster: Cluster, job: JobRecord, attempts: list[AttemptRecord]) -> RunningView:
    group, _limit = throttle_of(job)
    start = min((a.started or a.created) for a in attempts)
    return RunningView(
        job_id=job.id,
        queue=job.queue,
        placements=tuple(Placement(a.host, a.cpus, a.memory_mb, a.gpus) for a in attempts),
        start=start,
        time_limit_s=job.request.get("time_limit_s"),
        user=job.user,
        throttle_group=group,
        compute_env=cluster.compute_env_of(job.queue, attempts[0].host),
    )
