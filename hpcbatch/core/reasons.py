"""Why a job waits, and why a request is refused: the words users read.

"Why is my job not running?" is the question users ask most, so every reason
names what is lacking and where. Reasons start with a stable code (documented
in `hpcbatch.core.scheduler` and docs/scheduling.md) so tools can match them.

`infeasible` is the other answer, "never": a request that no host (or set of
hosts) of its queue could ever satisfy is refused at submit rather than left
waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from hpcbatch.core.targeting import ANY_FABRIC, fabric_matches

if TYPE_CHECKING:
    from hpcbatch.core.placement import Free
    from hpcbatch.core.views import ComputeEnvView, HostView, JobView, QueueView


def describe(job: JobView) -> str:
    """The request in words: `2 CPUs, 4000 MB, 1 GPU on one host`."""
    parts = [f"{job.cpus} CPU{'s' if job.cpus != 1 else ''}"]
    if job.memory_mb:
        parts.append(f"{job.memory_mb} MB")
    if job.gpus:
        parts.append(f"{job.gpus} GPU{'s' if job.gpus != 1 else ''}")
    what = ", ".join(parts)
    target = f" ({job.target.words()})" if job.target is not None else ""
    if job.nodes > 1:
        where = f"{job.nodes} whole hosts with {what} each"
        if job.fabric:
            where += " in one fabric island"
            if job.fabric != ANY_FABRIC:
                where += f" of kind {job.fabric}"
        return where + target
    if job.exclusive:
        return f"a whole host with {what}{target}"
    return f"{what} on one host{target}"


def resources(
    job: JobView,
    queue: str,
    hosts: Sequence[Free],
    cache: dict[tuple[object, ...], tuple[int, str]] | None = None,
    version: int = 0,
) -> str:
    """`Resources:` the request, and the best the queue's hosts offer now.

    `cache` (one per queue and pass) with `version` (changes whenever
    resources do) saves rescanning the hosts for every failing shape.
    """
    key: tuple[object, ...] = (
        (job.cpus, job.memory_mb, job.gpus, job.nodes, job.fabric, job.target)
        if job.nodes > 1
        else (job.gpus, job.target)
    )
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1] if job.nodes > 1 else f"Resources: needs {describe(job)}; {hit[1]}"
    text = _resources(job, queue, hosts)
    if cache is not None:
        if job.nodes > 1:
            cache[key] = (version, text)
        elif "; " in text and text.startswith("Resources: needs "):
            cache[key] = (version, text.split("; ", 1)[1])
    return text


def _resources(job: JobView, queue: str, hosts: Sequence[Free]) -> str:
    usable = [f for f in hosts if f.usable]
    target = job.target
    if target is not None and usable:
        usable = [f for f in usable if target.admits(f.host)]
        if not usable:
            return f"Resources: needs {describe(job)}; no such host of queue {queue} takes work now"
    if not usable:
        states = sorted({f.host.unavailable_reason or "busy" for f in hosts})
        if not states:
            return f"Resources: queue {queue} has no hosts"
        return f"Resources: no host of queue {queue} takes work now ({'; '.join(states)})"
    if job.nodes > 1:
        fitting = [f for f in usable if not f.busy and f.fits(job)]
        if job.fabric:
            counts: dict[str, int] = {}
            for f in fitting:
                if f.host.fabric and fabric_matches(job.fabric, f.host.fabric):
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


def _fitting(job: JobView, pool: Sequence[HostView]) -> list[HostView]:
    return [
        h
        for h in pool
        if h.cpus >= job.cpus and h.memory_mb >= job.memory_mb and len(h.gpus) >= job.gpus
    ]


def infeasible_on(job: JobView, hosts: Iterable[HostView], where: str) -> str | None:
    """Why `job` could never run on `hosts` (full capacity, now or later), or None."""
    pool = list({h.name: h for h in hosts}.values())  # a host listed twice counts once
    if not pool:
        return f"{where} has no hosts"
    target = job.target
    if target is not None:
        missing = sorted(target.nodelist - {h.name for h in pool})
        if missing:
            return f"asks for host {','.join(missing)}, which is not in {where}"
        pool = [h for h in pool if target.admits(h)]
        bad = sorted(h for h in target.nodelist if h not in {p.name for p in pool})
        if bad:
            return f"asks for host {','.join(bad)}, which does not match ({target.words()})"
        if not pool:
            return f"no host in {where} matches ({target.words()})"
        if len(target.nodelist) > job.nodes:
            return f"names {len(target.nodelist)} hosts with -w but asks for {job.nodes}"
        if target.nodelist and job.nodes == 1:
            pool = [h for h in pool if h.name in target.nodelist]
    if job.fabric and job.whole_hosts:  # a fabric places whole-host jobs only
        pool = [h for h in pool if fabric_matches(job.fabric, h.fabric)]
        if not pool:
            return f"no host in {where} is on a fabric island of kind {job.fabric}"
    fit = _fitting(job, pool)
    if job.nodes == 1 and not (job.exclusive and job.fabric):
        if fit:
            return None
        biggest = max(pool, key=lambda h: (len(h.gpus), h.cpus, h.memory_mb))
        return (
            f"needs {describe(job)}; no host in {where} is that large "
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
        return f"needs {describe(job)}; the largest island in {where} has {best[0]} such hosts" + (
            f" ({best[1]})" if best[1] else ""
        )
    if len(fit) >= job.nodes:
        return None
    return f"needs {describe(job)}; {where} has only {len(fit)} such hosts"


def _cheapest_vcpus(job: JobView, hosts: Sequence[HostView]) -> int:
    """The fewest vCPUs the job could ever be charged on `hosts` (whole hosts: theirs)."""
    if not job.whole_hosts:
        return job.cpus
    sizes = sorted(h.cpus for h in _fitting(job, hosts) if not job.fabric or h.fabric)
    return sum(sizes[: job.nodes]) if len(sizes) >= job.nodes else job.cpus * job.nodes


def infeasible(
    job: JobView,
    hosts: Iterable[HostView],
    *,
    queue: QueueView | None = None,
    compute_envs: Iterable[ComputeEnvView] = (),
) -> str | None:
    """Why `job` could never run in its queue, or None if it could some day.

    `hosts` are capacity views (what is in use or down does not matter for
    "never"). Without `queue`, or for a queue without compute environments,
    `hosts` are the queue's hosts. With them, the job must fit in one of the
    queue's compute environments, enabled or not (a disabled one may be enabled
    later: the job waits), within its vCPU cap and the queue's.
    """
    pool = list(hosts)
    if queue is None or not queue.compute_envs:
        return infeasible_on(job, pool, f"queue {job.queue}")
    need = job.cpus * job.nodes
    if queue.max_vcpus is not None and need > queue.max_vcpus:
        return f"needs {need} vCPUs; queue {queue.name} allows at most {queue.max_vcpus} at once"
    by_name = {h.name: h for h in pool}
    ces = {c.name: c for c in compute_envs}
    why: list[str] = []
    for name in queue.compute_envs:
        ce = ces.get(name)
        if ce is None:
            continue
        members = [by_name[n] for n in dict.fromkeys(ce.hosts) if n in by_name]
        reason = infeasible_on(job, members, f"compute environment {name}")
        if reason is None:
            charge = _cheapest_vcpus(job, members)
            if queue.max_vcpus is not None and charge > queue.max_vcpus:
                reason = (
                    f"needs {charge} vCPUs on {name}'s hosts; "
                    f"queue {queue.name} allows at most {queue.max_vcpus}"
                )
            elif ce.max_vcpus is not None and charge > ce.max_vcpus:
                reason = (
                    f"needs {charge} vCPUs; compute environment {name} "
                    f"allows at most {ce.max_vcpus}"
                )
        if reason is None:
            return None
        why.append(reason)
    if not why:
        return f"queue {queue.name} has no known compute environment"
    if len(why) == 1:
        return why[0]
    return f"no compute environment of queue {queue.name} could ever run it: " + "; ".join(why)
