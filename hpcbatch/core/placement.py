"""Free resources during one scheduling pass, indexed so that placing a job is cheap.

A pass over 10,000 jobs and 1,000 hosts cannot afford to scan every host for
every job. Each compute environment (or a queue's own host list, for queues
without one) gets a `Pool`: its usable hosts bucketed by (free GPUs, free CPUs),
with the bucket keys kept sorted. Best fit for a single-node job is then "the
first host in the lowest bucket at or above the request that has the memory":
a couple of bisections instead of a scan. Whole-host jobs look at the pool's
idle hosts only.

Pools are built lazily (a queue with nothing to run never pays for its index)
and every host knows the pools that list it, so taking resources on a host
moves it between buckets in each of them. Nothing here does I/O; `schedule`
owns the pass.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcbatch.core.records import Placement

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
    sites: list[tuple[Pool, int]] = field(default_factory=list)  # (pool, position there)

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
        if job.whole_hosts:
            placement = Placement(self.host.name, self.cpus, self.memory_mb, gpus, exclusive=True)
            self.cpus = 0
            self.memory_mb = 0
            # Nothing shares a host taken whole, not even its unassigned GPUs.
            self.usable = False
            self.whole_taken = True
        else:
            placement = Placement(self.host.name, job.cpus, job.memory_mb, gpus)
            self.cpus -= job.cpus
            self.memory_mb -= job.memory_mb
        self.busy = True
        new = self.key()
        for pool, pos in self.sites:
            pool.moved(pos, old, new, was_idle)
        return placement


class Pool:
    """The hosts of one compute environment during a pass, with its vCPU account."""

    __slots__ = (
        "_buckets",
        "_built",
        "_ckeys",
        "_gkeys",
        "_idle",
        "enabled",
        "hosts",
        "max_vcpus",
        "name",
        "real",
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
    ) -> None:
        self.name = name
        self.hosts = hosts
        self.real = real  # a configured compute environment, not a queue's plain host list
        self.enabled = enabled
        self.max_vcpus = max_vcpus
        self.used_vcpus = used_vcpus
        self._built = False
        self._buckets: dict[tuple[int, int], list[int]] = {}
        self._gkeys: list[int] = []
        self._ckeys: dict[int, list[int]] = {}
        self._idle: list[int] = []

    def room(self, vcpus: int) -> bool:
        """Whether the vCPU cap leaves room for `vcpus` more."""
        return self.max_vcpus is None or self.used_vcpus + vcpus <= self.max_vcpus

    def _build(self) -> None:
        self._built = True
        for pos, f in enumerate(self.hosts):
            f.sites.append((self, pos))
            key = f.key()
            if key is not None:
                self._add(pos, key)
                if not f.busy:
                    self._idle.append(pos)

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
        """A host of this pool changed bucket (it was given work)."""
        if old != new:
            if old is not None:
                self._remove(pos, old)
            if new is not None:
                self._add(pos, new)
        if was_idle:
            del self._idle[bisect_left(self._idle, pos)]

    def pick_single(self, job: JobView, allow: Allow | None) -> Free | None:
        """Best fit: fewest spare GPUs, then fewest free CPUs, then pool order."""
        if not self._built:
            self._build()
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

    def pick_gang(self, job: JobView, allow: Allow | None) -> list[Free] | None:
        """`job.nodes` idle hosts; with a fabric, all in the smallest island that fits."""
        if not self._built:
            self._build()
        hosts = self.hosts
        cpus, mem, gpus, n = job.cpus, job.memory_mb, job.gpus, job.nodes
        if not job.fabric:
            chosen: list[Free] = []
            for pos in self._idle:
                f = hosts[pos]
                if (
                    f.cpus >= cpus
                    and f.memory_mb >= mem
                    and len(f.gpus) >= gpus
                    and (allow is None or allow(f))
                ):
                    chosen.append(f)
                    if len(chosen) == n:
                        return chosen
            return None
        islands: dict[str, list[Free]] = {}
        for pos in self._idle:
            f = hosts[pos]
            if (
                f.host.fabric is not None
                and f.cpus >= cpus
                and f.memory_mb >= mem
                and len(f.gpus) >= gpus
                and (allow is None or allow(f))
            ):
                islands.setdefault(f.host.fabric, []).append(f)
        # The smallest island that fits, to keep large islands whole for large jobs.
        best: list[Free] | None = None
        for members in islands.values():
            if len(members) >= n and (best is None or len(members) < len(best)):
                best = members
        return best[:n] if best is not None else None

    def pick(self, job: JobView, allow: Allow | None) -> list[Free] | None:
        if job.whole_hosts:
            return self.pick_gang(job, allow)
        one = self.pick_single(job, allow)
        return [one] if one is not None else None
