"""Free resources during one scheduling pass, indexed so that placing a job is cheap.

A pass over 10,000 jobs and 1,000 hosts cannot afford to scan every host for
every job. Each compute environment (or a queue's own host list, for queues
without one) gets a `Pool`: its usable hosts, split into tiers by host `weight`
(lower first, as Slurm's node Weight: cheaper hosts fill first), and within a
tier bucketed by (free GPUs, free CPUs) with the bucket keys kept sorted. Best
fit for a single-node job is then "the first host in the lowest bucket at or
above the request that has the memory": a couple of bisections instead of a
scan. `SPREAD` takes the highest bucket instead (least loaded first). Whole-host
jobs look at the pool's idle hosts only. With one weight (the usual case) there
is one tier and no extra cost.

Pools are built lazily (a queue with nothing to run never pays for its index)
and every host knows the pools that list it, so taking resources on a host
moves it between buckets in each of them. Nothing here does I/O; `schedule`
owns the pass.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcbatch.core.records import Placement
from hpcbatch.core.targeting import fabric_matches
from hpcbatch.core.views import AllocationStrategy

if TYPE_CHECKING:
    from hpcbatch.core.views import HostView, JobView

Allow = Callable[["Free"], bool]
"""A filter on candidate hosts (the backfill check); None means any host."""


@dataclass(slots=True, eq=False)
class Free:
    """Mutable free resources of one host during a pass."""

    host: HostView
    cpus: int
    memory_mb: int
    gpus: list[int]
    busy: bool  # anything allocated at all (whole-host jobs need idle hosts)
    usable: bool  # takes work: up, active, not held whole by a job
    whole_taken: bool = False  # taken whole in this pass
    # Free core numbers (0 .. cpus-1 less those pinned), worked out on the first take.
    cores: list[int] | None = None
    sites: list[tuple[_Tier, int]] = field(default_factory=list)  # (tier, position there)

    @classmethod
    def of(cls, h: HostView) -> Free:
        return cls(
            host=h,
            cpus=h.cpus - h.used_cpus,
            memory_mb=h.memory_mb - h.used_memory_mb,
            gpus=[g for g in h.gpus if g not in h.used_gpus],
            busy=not h.idle or h.exclusive,
            usable=h.available and not h.exclusive,
        )

    @property
    def name(self) -> str:
        return self.host.name

    def key(self) -> tuple[int, int] | None:
        """The pool bucket this host belongs in, or None when it takes nothing."""
        return (len(self.gpus), self.cpus) if self.usable else None

    def fits(self, job: JobView) -> bool:
        if not self.usable or (job.whole_hosts and self.busy):
            return False
        return (
            self.cpus >= job.cpus and self.memory_mb >= job.memory_mb and len(self.gpus) >= job.gpus
        )

    def take(self, job: JobView) -> Placement:
        """Allocate `job`'s share of this host (all of it for whole-host jobs)."""
        old = self.key()
        was_idle = not self.busy
        gpus = tuple(self.gpus[: job.gpus])
        del self.gpus[: job.gpus]
        cores = self.take_cores(self.cpus if job.whole_hosts else job.cpus)
        if job.whole_hosts:
            placement = Placement(
                self.host.name, self.cpus, self.memory_mb, gpus, exclusive=True, cores=cores
            )
            self.cpus = 0
            self.memory_mb = 0
            # Nothing shares a host taken whole, not even its unassigned GPUs.
            self.usable = False
            self.whole_taken = True
        else:
            placement = Placement(self.host.name, job.cpus, job.memory_mb, gpus, cores=cores)
            self.cpus -= job.cpus
            self.memory_mb -= job.memory_mb
        self.busy = True
        new = self.key()
        for tier, pos in self.sites:
            tier.moved(pos, old, new, was_idle)
        return placement

    def take_cores(self, n: int) -> tuple[int, ...]:
        """The lowest `n` free core numbers of this host, taken; () (not pinned: the CPU
        quota alone holds the job) when fewer are free, as when running jobs of an
        older controller hold CPUs without core numbers."""
        if self.cores is None:
            used = self.host.used_cores
            self.cores = [c for c in range(self.host.cpus) if c not in used]
        if n <= 0 or len(self.cores) < n:
            return ()
        taken = tuple(self.cores[:n])
        del self.cores[:n]
        return taken


_SLEEPING = frozenset({"POWERED_DOWN", "POWERING_UP"})
_NOT_POWERED = frozenset({"POWERED_DOWN", "OFF"})


class _Tier:
    """The hosts of one weight in a pool, bucketed by (free GPUs, free CPUs)."""

    __slots__ = ("_buckets", "_ckeys", "_gkeys", "hosts", "idle", "weight")

    def __init__(self, weight: int, hosts: list[Free]) -> None:
        self.weight = weight
        self.hosts = hosts
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._gkeys: list[int] = []
        self._ckeys: dict[int, list[int]] = {}
        self.idle: list[int] = []
        for pos, f in enumerate(hosts):
            f.sites.append((self, pos))
            key = f.key()
            if key is not None:
                self._add(pos, key)
                if not f.busy:
                    self.idle.append(pos)

    def _add(self, pos: int, key: tuple[int, int]) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [pos]
            g, c = key
            ckeys = self._ckeys.get(g)
            if ckeys is None:
                self._ckeys[g] = [c]
                insort(self._gkeys, g)
            else:
                insort(ckeys, c)
        else:
            insort(bucket, pos)

    def _remove(self, pos: int, key: tuple[int, int]) -> None:
        bucket = self._buckets[key]
        del bucket[bisect_left(bucket, pos)]
        if not bucket:
            del self._buckets[key]
            g, c = key
            ckeys = self._ckeys[g]
            del ckeys[bisect_left(ckeys, c)]
            if not ckeys:
                del self._ckeys[g]
                del self._gkeys[bisect_left(self._gkeys, g)]

    def moved(
        self, pos: int, old: tuple[int, int] | None, new: tuple[int, int] | None, was_idle: bool
    ) -> None:
        """A host of this tier changed bucket (it was given work)."""
        if old != new:
            if old is not None:
                self._remove(pos, old)
            if new is not None:
                self._add(pos, new)
        if was_idle:
            del self.idle[bisect_left(self.idle, pos)]

    def best_fit(self, job: JobView, allow: Allow | None) -> Free | None:
        """Fewest spare GPUs, then fewest free CPUs, then tier order."""
        gkeys, ckeys, buckets, hosts = self._gkeys, self._ckeys, self._buckets, self.hosts
        cpus, mem = job.cpus, job.memory_mb
        for gi in range(bisect_left(gkeys, job.gpus), len(gkeys)):
            g = gkeys[gi]
            cs = ckeys[g]
            for ci in range(bisect_left(cs, cpus), len(cs)):
                for pos in buckets[(g, cs[ci])]:
                    f = hosts[pos]
                    if f.memory_mb >= mem and (allow is None or allow(f)):
                        return f
        return None

    def spread(self, job: JobView, allow: Allow | None) -> Free | None:
        """Most free CPUs (least loaded), then fewest spare GPUs, then tier order."""
        gkeys, ckeys, buckets, hosts = self._gkeys, self._ckeys, self._buckets, self.hosts
        cpus, mem = job.cpus, job.memory_mb
        best: Free | None = None
        for gi in range(bisect_left(gkeys, job.gpus), len(gkeys)):
            g = gkeys[gi]
            cs = ckeys[g]
            low = bisect_left(cs, cpus)
            for ci in range(len(cs) - 1, low - 1, -1):
                if best is not None and cs[ci] <= best.cpus:
                    break  # a fewer-GPU candidate already has as many free CPUs
                found = None
                for pos in buckets[(g, cs[ci])]:
                    f = hosts[pos]
                    if f.memory_mb >= mem and (allow is None or allow(f)):
                        found = f
                        break
                if found is not None:
                    best = found
                    break
        return best


class Pool:
    """The hosts of one compute environment during a pass, with its vCPU account."""

    __slots__ = (
        "_built",
        "_powered",
        "_tiers",
        "enabled",
        "hosts",
        "max_vcpus",
        "name",
        "real",
        "resuming",
        "sleeping",
        "strategy",
        "used_vcpus",
    )

    def __init__(
        self,
        name: str,
        hosts: list[Free],
        *,
        real: bool = True,
        enabled: bool = True,
        max_vcpus: int | None = None,
        used_vcpus: int = 0,
        strategy: AllocationStrategy = AllocationStrategy.BEST_FIT,
    ) -> None:
        self.name = name
        self.hosts = hosts
        self.real = real  # a configured compute environment, not a queue's plain host list
        self.enabled = enabled
        self.max_vcpus = max_vcpus
        self.used_vcpus = used_vcpus
        self.strategy = strategy
        self._built = False
        self._tiers: list[_Tier] = []
        # Elastic hosts powering up or powered down, and the vCPUs of those on (or
        # coming on) that count against max_vcpus; `resuming`: decided this pass.
        self.sleeping: list[Free] = []
        self._powered = 0
        self.resuming: set[str] = set()

    def room(self, vcpus: int) -> bool:
        """Whether the vCPU cap leaves room for `vcpus` more."""
        return self.max_vcpus is None or self.used_vcpus + vcpus <= self.max_vcpus

    def _build(self) -> None:
        self._built = True
        by_weight: dict[int, list[Free]] = {}
        for f in self.hosts:
            power = f.host.power
            if power:
                if power in _SLEEPING:
                    self.sleeping.append(f)
                if power not in _NOT_POWERED:
                    self._powered += f.host.cpus
                if power in _SLEEPING:
                    continue
            by_weight.setdefault(f.host.weight, []).append(f)
        # Hosts already powering up first, then the cheapest, then the smallest.
        self.sleeping.sort(
            key=lambda f: (f.host.power != "POWERING_UP", f.host.weight, f.host.cpus)
        )
        self._tiers = [_Tier(w, by_weight[w]) for w in sorted(by_weight)]

    def pick_single(self, job: JobView, allow: Allow | None) -> Free | None:
        """The lowest weight tier with room; in it, best fit or (SPREAD) least loaded."""
        if not self._built:
            self._build()
        target = job.target
        if target is not None:
            inner = allow
            # -w on a one-host job: that host (more than one is refused at submit).
            only = target.nodelist

            def allow(f: Free) -> bool:
                return (
                    (not only or f.host.name in only)
                    and target.admits(f.host)
                    and (inner is None or inner(f))
                )

        spread = self.strategy == AllocationStrategy.SPREAD
        for tier in self._tiers:
            f = tier.spread(job, allow) if spread else tier.best_fit(job, allow)
            if f is not None:
                return f
        return None

    def _idle(self) -> Iterator[Free]:
        for tier in self._tiers:
            hosts = tier.hosts
            for pos in tier.idle:
                yield hosts[pos]

    def pick_gang(self, job: JobView, allow: Allow | None) -> list[Free] | None:
        """`job.nodes` idle hosts, lowest weight first; with a fabric, all in the
        smallest island of that kind that fits; with a node list, every listed host
        among them."""
        if not self._built:
            self._build()
        cpus, mem, gpus, n = job.cpus, job.memory_mb, job.gpus, job.nodes
        target = job.target
        chosen: list[Free] | None

        def ok(f: Free) -> bool:
            return (
                f.cpus >= cpus
                and f.memory_mb >= mem
                and len(f.gpus) >= gpus
                and (target is None or target.admits(f.host))
                and (allow is None or allow(f))
            )

        if not job.fabric and (target is None or not target.nodelist):
            chosen = []  # the first n that fit: stop as soon as there are enough
            for f in self._idle():
                if ok(f):
                    chosen.append(f)
                    if len(chosen) == n:
                        return chosen
            return None
        candidates = [f for f in self._idle() if ok(f)]
        if not job.fabric:
            return _with_required(candidates, job)
        islands: dict[str, list[Free]] = {}
        for f in candidates:
            if fabric_matches(job.fabric, f.host.fabric):
                assert f.host.fabric is not None
                islands.setdefault(f.host.fabric, []).append(f)
        # The smallest island that fits, to keep large islands whole for large jobs.
        best: tuple[int, list[Free]] | None = None
        for members in islands.values():
            chosen = _with_required(members, job)
            if chosen is not None and (best is None or len(members) < best[0]):
                best = (len(members), chosen)
        return best[1] if best is not None else None

    def elastic(self) -> bool:
        if not self._built:
            self._build()
        return bool(self.sleeping)

    def _wakes(self, f: Free) -> bool:
        return f.host.power == "POWERED_DOWN" and f.name not in self.resuming

    def pick_power(self, job: JobView, below_weight: int | None = None) -> list[Free] | None:
        """Hosts powering up, or powered down and within max_vcpus once resumed, that
        will fit `job` when up (their declared size; unknown memory fits). With
        `below_weight`, only a look: whether cheaper such hosts exist. Otherwise the
        hosts are taken for the job and those to resume noted in `resuming`."""
        if not self._built:
            self._build()
        n = job.nodes if job.whole_hosts else 1
        chosen: list[Free] = []
        extra = 0
        for f in self.sleeping:
            if below_weight is not None and f.host.weight >= below_weight:
                break
            if not (
                f.cpus >= job.cpus
                and (f.host.memory_mb == 0 or f.memory_mb >= job.memory_mb)
                and len(f.gpus) >= job.gpus
                and (not job.whole_hosts or not f.busy)
                and (job.target is None or job.target.admits(f.host))
                and not f.whole_taken
            ):
                continue
            if self._wakes(f):
                if self.max_vcpus is not None and (
                    self._powered + extra + f.host.cpus > self.max_vcpus
                ):
                    continue
                extra += f.host.cpus
            chosen.append(f)
            if len(chosen) == n:
                break
        if len(chosen) < n:
            return None
        if below_weight is None:
            for f in chosen:
                if self._wakes(f):
                    self.resuming.add(f.name)
                f.take(job)
            self._powered += extra
        return chosen

    def pick(self, job: JobView, allow: Allow | None) -> list[Free] | None:
        if job.whole_hosts:
            return self.pick_gang(job, allow)
        one = self.pick_single(job, allow)
        return [one] if one is not None else None


def _with_required(candidates: list[Free], job: JobView) -> list[Free] | None:
    """`job.nodes` of `candidates`, every host of the job's node list first; None if short."""
    n = job.nodes
    required = job.target.nodelist if job.target is not None else frozenset()
    if not required:
        return candidates[:n] if len(candidates) >= n else None
    chosen = [f for f in candidates if f.name in required]
    if len(chosen) < len(required):
        return None
    chosen += [f for f in candidates if f.name not in required][: n - len(chosen)]
    return chosen if len(chosen) == n else None
