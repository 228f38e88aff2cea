"""The scheduling pass: a pure function from a snapshot to a plan.

No I/O happens here. The controller builds a snapshot (hosts with what is
allocated on them, queues, runnable jobs in order), calls `schedule`, writes
the plan down, and only then launches. That keeps the policy testable on tiny
inline clusters and by property-based tests.

Two different refusals, as in flux: `infeasible()` says a request could never
run on the hosts a queue has (refused at submit); `schedule()` gives a pending
reason for a request that cannot run *now*.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hpcbatch.core.records import Placement


@dataclass(frozen=True, slots=True)
class HostView:
    """A host as the scheduler sees it: capacity, what is in use, whether it takes work."""

    name: str
    cpus: int
    memory_mb: int
    gpus: tuple[int, ...] = ()
    fabric: str | None = None
    available: bool = True
    unavailable_reason: str | None = None
    used_cpus: int = 0
    used_memory_mb: int = 0
    used_gpus: frozenset[int] = frozenset()
    exclusive: bool = False

    @property
    def idle(self) -> bool:
        return self.used_cpus == 0 and self.used_memory_mb == 0 and not self.used_gpus


@dataclass(frozen=True, slots=True)
class QueueView:
    name: str
    priority: int
    hosts: tuple[str, ...]
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class JobView:
    """A runnable job's request. Per-node figures; `nodes > 1` or `exclusive` means whole hosts."""

    id: int
    queue: str
    cpus: int = 1
    memory_mb: int = 0
    gpus: int = 0
    nodes: int = 1
    exclusive: bool = False
    fabric: str | None = None

    @property
    def whole_hosts(self) -> bool:
        return self.nodes > 1 or self.exclusive

    def shape(self) -> tuple[str, int, int, int, int, bool, str | None]:
        return (
            self.queue,
            self.cpus,
            self.memory_mb,
            self.gpus,
            self.nodes,
            self.exclusive,
            self.fabric,
        )


@dataclass(slots=True)
class Plan:
    """What to start now, and why everything else waits."""

    starts: list[tuple[int, tuple[Placement, ...]]] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Free:
    """Mutable free resources of one host during a pass."""

    host: HostView
    cpus: int
    memory_mb: int
    gpus: list[int]
    busy: bool  # anything allocated at all (whole-host jobs need idle hosts)

    @classmethod
    def of(cls, h: HostView) -> _Free:
        return cls(
            host=h,
            cpus=h.cpus - h.used_cpus,
            memory_mb=h.memory_mb - h.used_memory_mb,
            gpus=[g for g in h.gpus if g not in h.used_gpus],
            busy=not h.idle or h.exclusive,
        )

    def fits(self, job: JobView) -> bool:
        if not self.host.available or self.host.exclusive:
            return False
        if job.whole_hosts and self.busy:
            return False
        return (
            self.cpus >= job.cpus and self.memory_mb >= job.memory_mb and len(self.gpus) >= job.gpus
        )

    def take(self, job: JobView) -> Placement:
        gpus = tuple(self.gpus[: job.gpus])
        del self.gpus[: job.gpus]
        if job.whole_hosts:
            placement = Placement(self.host.name, self.cpus, self.memory_mb, gpus, exclusive=True)
            self.cpus = 0
            self.memory_mb = 0
        else:
            placement = Placement(self.host.name, job.cpus, job.memory_mb, gpus)
            self.cpus -= job.cpus
            self.memory_mb -= job.memory_mb
        self.busy = True
        return placement


def describe(job: JobView) -> str:
    parts = [f"{job.cpus} CPU{'s' if job.cpus != 1 else ''}"]
    if job.memory_mb:
        parts.append(f"{job.memory_mb} MB")
    if job.gpus:
        parts.append(f"{job.gpus} GPU{'s' if job.gpus != 1 else ''}")
    what = ", ".join(parts)
    if job.nodes > 1:
        where = f"{job.nodes} whole hosts with {what} each"
        if job.fabric:
            where += " in one fabric island"
        return where
    if job.exclusive:
        return f"a whole host with {what}"
    return f"{what} on one host"


def infeasible(job: JobView, hosts: Iterable[HostView]) -> str | None:
    """Why `job` could never run on `hosts` (their full capacity), or None if it could."""
    pool = list(hosts)
    if not pool:
        return f"queue {job.queue} has no hosts"
    fit = [
        h
        for h in pool
        if h.cpus >= job.cpus and h.memory_mb >= job.memory_mb and len(h.gpus) >= job.gpus
    ]
    if job.nodes == 1 and not (job.exclusive and job.fabric):
        if fit:
            return None
        biggest = max(pool, key=lambda h: (len(h.gpus), h.cpus, h.memory_mb))
        return (
            f"needs {describe(job)}; no host in queue {job.queue} is that large "
            f"(largest: {biggest.name} with {biggest.cpus} CPUs, {biggest.memory_mb} MB, "
            f"{len(biggest.gpus)} GPUs)"
        )
    if job.fabric:
        islands: dict[str | None, int] = {}
        for h in fit:
            islands[h.fabric] = islands.get(h.fabric, 0) + 1
        best = max(((n, f) for f, n in islands.items() if f is not None), default=(0, None))
        if best[0] >= job.nodes:
            return None
        return (
            f"needs {describe(job)}; the largest island in queue {job.queue} "
            f"has {best[0]} such hosts" + (f" ({best[1]})" if best[1] else "")
        )
    if len(fit) >= job.nodes:
        return None
    return f"needs {describe(job)}; queue {job.queue} has only {len(fit)} such hosts"


def _pick_single(job: JobView, order: Sequence[_Free]) -> _Free | None:
    """Best fit: the host left with the fewest free CPUs, so whole hosts stay free."""
    best: _Free | None = None
    for free in order:
        if free.fits(job) and (
            best is None
            or (len(free.gpus) - job.gpus, free.cpus) < (len(best.gpus) - job.gpus, best.cpus)
        ):
            best = free
    return best


def _pick_gang(job: JobView, order: Sequence[_Free]) -> list[_Free] | None:
    fitting = [f for f in order if f.fits(job)]
    if not job.fabric:
        return fitting[: job.nodes] if len(fitting) >= job.nodes else None
    islands: dict[str, list[_Free]] = {}
    for f in fitting:
        if f.host.fabric is not None:
            islands.setdefault(f.host.fabric, []).append(f)
    # The smallest island that fits, to keep large islands whole for large jobs.
    candidates = sorted(
        (members for members in islands.values() if len(members) >= job.nodes), key=len
    )
    return candidates[0][: job.nodes] if candidates else None


def _waiting_reason(job: JobView, order: Sequence[_Free]) -> str:
    usable = [f for f in order if f.host.available and not f.host.exclusive]
    if not usable:
        states = sorted({f.host.unavailable_reason or "busy" for f in order})
        return f"Resources: no host of queue {job.queue} takes work now ({'; '.join(states)})"
    if job.nodes > 1:
        fitting = [f for f in usable if f.fits(job)]
        if job.fabric:
            counts: dict[str, int] = {}
            for f in fitting:
                if f.host.fabric:
                    counts[f.host.fabric] = counts.get(f.host.fabric, 0) + 1
            best_island, best_n = max(counts.items(), key=lambda kv: kv[1], default=("-", 0))
            return (
                f"Resources: needs {describe(job)}; best island {best_island} "
                f"has {best_n} free, lacks {job.nodes - best_n}"
            )
        return f"Resources: needs {describe(job)}; {len(fitting)} free now"
    best = max(usable, key=lambda f: (len(f.gpus) >= job.gpus, f.cpus, f.memory_mb, len(f.gpus)))
    return (
        f"Resources: needs {describe(job)}; the largest free is {best.cpus} CPUs, "
        f"{best.memory_mb} MB, {len(best.gpus)} GPUs on {best.host.name}"
    )


def schedule(
    hosts: Iterable[HostView], queues: Iterable[QueueView], jobs: Iterable[JobView]
) -> Plan:
    """Decide which runnable jobs start now and where.

    Queues are served in priority order (higher first), jobs within a queue in
    the order given (FIFO). A job that does not fit now gets a pending reason and
    later jobs may still start. Once a shape of request has failed in this pass
    it fails again without another scan: resources only shrink during a pass.
    """
    free = {h.name: _Free.of(h) for h in hosts}
    qs = sorted(queues, key=lambda q: -q.priority)
    by_queue: dict[str, list[JobView]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job)
    plan = Plan()
    for q in qs:
        waiting = by_queue.pop(q.name, [])
        if not waiting:
            continue
        if not q.enabled:
            for job in waiting:
                plan.reasons[job.id] = f"QueueDisabled: queue {q.name} is disabled"
            continue
        order = [free[name] for name in dict.fromkeys(q.hosts) if name in free]
        failed: dict[tuple[object, ...], str] = {}
        for job in waiting:
            key = job.shape()
            if key in failed:
                plan.reasons[job.id] = failed[key]
                continue
            if job.whole_hosts:
                gang = _pick_gang(job, order)
                if gang is not None:
                    plan.starts.append((job.id, tuple(f.take(job) for f in gang)))
                    continue
            else:
                one = _pick_single(job, order)
                if one is not None:
                    plan.starts.append((job.id, (one.take(job),)))
                    continue
            failed[key] = plan.reasons[job.id] = _waiting_reason(job, order)
    for orphans in by_queue.values():
        for job in orphans:
            plan.reasons[job.id] = f"QueueUnknown: queue {job.queue} is not in the inventory"
    return plan
