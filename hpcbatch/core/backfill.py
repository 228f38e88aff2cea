"""EASY backfill: one reservation per pass, and the cheap check that protects it.

When the highest-priority job that cannot start now (for lack of resources) is
found, `reserve` works out the earliest time it could start: from what is free
now plus what running allocations release at their expected ends (start + time
limit; an allocation with no limit never ends, and neither does use the
snapshot cannot attribute to a running job). That job gets a `Hold` on the
hosts it would use at that time.

After that, a lower job may start now only where it cannot delay the hold:
on hosts outside the hold, or on held hosts if it ends by the reserved start,
or (single-node holds) if it fits in what the held host will still have spare
at the reserved start after the reserved job takes its share. That is a
constant-time check per candidate host, not a re-simulation.

Approximations, all on the cautious side or documented in docs/scheduling.md:
the reservation ignores compute-environment vCPU caps and queue limits; GPUs
are counted, not matched by index (any free GPUs will do at the reserved time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hpcbatch.core.records import Placement
from hpcbatch.core.targeting import fabric_matches
from hpcbatch.core.views import Reservation

if TYPE_CHECKING:
    from hpcbatch.core.placement import Free, Pool
    from hpcbatch.core.views import JobView

NEVER = math.inf


# (end, cpus, memory_mb, gpus, exclusive): what one placement gives back, and when.
Release = tuple[float, int, int, int, bool]


class Timeline:
    """What each host gets back, and when, from allocations with a known end."""

    __slots__ = ("_exclusive_ends", "_releases")

    def __init__(self) -> None:
        self._releases: dict[str, list[Release]] = {}
        self._exclusive_ends: dict[str, float] = {}

    def add(self, placements: Iterable[Placement], end: float) -> None:
        releases = self._releases
        for p in placements:
            if p.exclusive:
                ends = self._exclusive_ends
                ends[p.host] = max(ends.get(p.host, end), end)
            if end < NEVER:
                rel = (end, p.cpus, p.memory_mb, len(p.gpus), p.exclusive)
                found = releases.get(p.host)
                if found is None:
                    releases[p.host] = [rel]
                else:
                    found.append(rel)

    def exclusive_until(self, f: Free) -> float:
        """When the whole-host hold on `f` ends (-inf if none; NEVER if unknown)."""
        if not (f.host.exclusive or f.whole_taken):
            return -NEVER
        return self._exclusive_ends.get(f.host.name, NEVER)

    def earliest(self, f: Free, job: JobView, now: float) -> tuple[float, int, int, int]:
        """Earliest time `job` (one node of it) fits on `f`, and what is free then.

        Whole-host jobs need the host entirely free. Returns (NEVER, ...) when it
        never does, as far as known ends tell.
        """
        h = f.host
        if not h.available or h.cpus < job.cpus or h.memory_mb < job.memory_mb:
            return NEVER, 0, 0, 0
        if len(h.gpus) < job.gpus:
            return NEVER, 0, 0, 0
        excl = self.exclusive_until(f)
        whole = job.whole_hosts
        cpus, mem, gpus = f.cpus, f.memory_mb, len(f.gpus)

        def ok(t: float) -> bool:
            if t < excl:
                return False
            if whole:
                return cpus >= h.cpus and mem >= h.memory_mb and gpus >= len(h.gpus)
            return cpus >= job.cpus and mem >= job.memory_mb and gpus >= job.gpus

        if (not whole or not f.busy) and ok(now):
            return now, cpus, mem, gpus
        for end, c, m, g, _ in sorted(self._releases.get(h.name, ())):
            cpus = min(cpus + c, h.cpus)
            mem = min(mem + m, h.memory_mb)
            gpus = min(gpus + g, len(h.gpus))
            t = max(end, now)
            if ok(t):
                return t, cpus, mem, gpus
        return NEVER, 0, 0, 0


@dataclass(slots=True)
class Hold:
    """The reservation being protected during the rest of the pass."""

    reservation: Reservation
    whole: bool  # the reserved job takes whole hosts: nothing may overlap its start
    spare: dict[str, list[int]] = field(default_factory=dict)  # host -> [cpus, mem, gpus]

    @property
    def start(self) -> float:
        return self.reservation.start

    def allows(self, f: Free, job: JobView, end: float) -> bool:
        """Whether `job`, ending at `end`, may use `f` now without delaying the hold."""
        spare = self.spare.get(f.host.name)
        if spare is None or end <= self.reservation.start:
            return True
        if self.whole or job.whole_hosts:
            return False
        return job.cpus <= spare[0] and job.memory_mb <= spare[1] and job.gpus <= spare[2]

    def charge(self, f: Free, job: JobView, end: float) -> None:
        """`job` started on `f` and runs past the reserved start: it uses spare room."""
        spare = self.spare.get(f.host.name)
        if spare is not None and end > self.reservation.start:
            spare[0] -= job.cpus
            spare[1] -= job.memory_mb
            spare[2] -= job.gpus


def reserve(job: JobView, pools: Sequence[Pool], timeline: Timeline, now: float) -> Hold | None:
    """The earliest start of `job` on `pools`' hosts, as a Hold; None if never (as known)."""
    if job.target is not None and job.target.nodelist:
        return None  # no reservation for a job that names its hosts: it waits for them
    best: tuple[float, list[tuple[Free, int, int, int]]] | None = None
    for pool in pools:
        if job.whole_hosts:
            found = _gang(job, pool, timeline, now)
        else:
            found = _single(job, pool, timeline, now)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    if best is None:
        return None
    start, where = best
    hold = Hold(
        Reservation(job.id, start, tuple(f.host.name for f, *_ in where)), whole=job.whole_hosts
    )
    if not job.whole_hosts:
        for f, cpus, mem, gpus in where:
            hold.spare[f.host.name] = [cpus - job.cpus, mem - job.memory_mb, gpus - job.gpus]
    else:
        for f, *_ in where:
            hold.spare[f.host.name] = [0, 0, 0]
    return hold


def _single(
    job: JobView, pool: Pool, timeline: Timeline, now: float
) -> tuple[float, list[tuple[Free, int, int, int]]] | None:
    best: tuple[float, list[tuple[Free, int, int, int]]] | None = None
    target = job.target
    for f in pool.hosts:
        if target is not None and not target.admits(f.host):
            continue
        t, cpus, mem, gpus = timeline.earliest(f, job, now)
        if t < NEVER and (best is None or t < best[0]):
            best = (t, [(f, cpus, mem, gpus)])
            if t <= now:
                break
    return best


def _gang(
    job: JobView, pool: Pool, timeline: Timeline, now: float
) -> tuple[float, list[tuple[Free, int, int, int]]] | None:
    groups: dict[str | None, list[tuple[float, int, Free]]] = {}
    seen: set[str] = set()
    for pos, f in enumerate(pool.hosts):
        if f.host.name in seen or (job.fabric and not fabric_matches(job.fabric, f.host.fabric)):
            continue
        if job.target is not None and not job.target.admits(f.host):
            continue
        seen.add(f.host.name)
        t, *_ = timeline.earliest(f, job, now)
        if t < NEVER:
            groups.setdefault(f.host.fabric if job.fabric else None, []).append((t, pos, f))
    best: tuple[float, list[tuple[Free, int, int, int]]] | None = None
    for members in groups.values():
        if len(members) < job.nodes:
            continue
        members.sort(key=lambda m: (m[0], m[1]))
        chosen = members[: job.nodes]
        t = chosen[-1][0]
        if best is None or t < best[0]:
            best = (t, [(f, 0, 0, 0) for _, _, f in chosen])
    return best
