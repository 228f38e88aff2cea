"""Fair-share order within a queue and the compute reservation (pure, used by the pass).

`FairOrder` yields a fair-share queue's jobs, the share identifier (by default
the user) with the lowest decayed usage per share first, re-ranking as the pass
charges the jobs it starts. `ShareReservation` keeps part of a queue's vCPUs
for share identifiers with nothing running, as AWS Batch's compute reservation.
The arithmetic is in `hpcbatch.core.fairshare`.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from hpcbatch.core import fairshare

if TYPE_CHECKING:
    from hpcbatch.core.placement import Pool
    from hpcbatch.core.views import JobView, QueueView, RunningView


class FairOrder:
    """A queue's jobs, the share identifier with the lowest usage per share first,
    re-ranked as it goes (`per_user` is keyed by share identifier: the user by default)."""

    def __init__(
        self, jobs: Sequence[JobView], usage: Mapping[str, float], shares: Mapping[str, float]
    ) -> None:
        self.per_user: dict[str, deque[tuple[int, JobView]]] = {}
        for pos, job in enumerate(jobs):
            self.per_user.setdefault(job.share_id or job.user, deque()).append((pos, job))
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


class ShareReservation:
    """AWS Batch's compute reservation: a share of a fair-share queue's vCPUs kept
    for share identifiers with nothing running yet. With N identifiers active, the
    active ones together may use at most `1 - (reservation/100)**N` of it."""

    __slots__ = ("active", "capacity", "percent", "queue")

    def __init__(self, queue: str, percent: int, capacity: int, active: set[str]) -> None:
        self.queue = queue
        self.percent = percent
        self.capacity = capacity
        self.active = active

    @classmethod
    def of(
        cls, q: QueueView, pools: list[Pool], running: Sequence[RunningView]
    ) -> ShareReservation | None:
        if q.compute_reservation <= 0:
            return None
        capacity = sum({f.name: f.host.cpus for p in pools for f in p.hosts}.values())
        active = {r.share_id or r.user for r in running if r.queue == q.name}
        return cls(q.name, q.compute_reservation, capacity, active)

    def refuses(self, job: JobView, used: int) -> str | None:
        """Why `job` must wait for the reservation, or None when it may start."""
        share = job.share_id or job.user
        if share not in self.active:
            return None  # the reservation is for identifiers like this one
        n = len(self.active)
        allowed = int(self.capacity * (1.0 - (self.percent / 100.0) ** n))
        need = job.cpus * job.nodes
        if used + need <= allowed:
            return None
        return (
            f"ShareReservation: queue {self.queue} keeps {self.capacity - allowed} of its "
            f"{self.capacity} vCPUs for share identifiers with nothing running "
            f"(compute_reservation {self.percent}%, {n} active); {used} in use, share "
            f"{share} needs {need}"
        )
