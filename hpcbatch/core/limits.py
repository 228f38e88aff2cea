"""Limits per user or share identifier within a queue (pure, used by the pass).

`UserCounts` counts what each user (or share identifier) holds in one queue
now, from the running allocations, and refuses a job that would take them past
the queue's `UserLimits` with a `UserLimit:` reason naming the limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hpcbatch.core.views import JobView, RunningView, UserLimits


class UserCounts:
    __slots__ = ("gpus", "jobs", "limits", "nodes", "queue", "vcpus")

    def __init__(self, queue: str, limits: UserLimits, running: Iterable[RunningView]) -> None:
        self.queue = queue
        self.limits = limits
        self.jobs: Counter[str] = Counter()
        self.vcpus: Counter[str] = Counter()
        self.gpus: Counter[str] = Counter()
        self.nodes: Counter[str] = Counter()
        share = limits.per == "share"
        for r in running:
            if r.queue != queue:
                continue
            key = (r.share_id or r.user) if share else r.user
            self.jobs[key] += 1
            self.vcpus[key] += sum(p.cpus for p in r.placements)
            self.gpus[key] += sum(len(p.gpus) for p in r.placements)
            self.nodes[key] += len(r.placements)

    def key(self, job: JobView) -> str:
        return (job.share_id or job.user) if self.limits.per == "share" else job.user

    def refuses(self, job: JobView) -> str | None:
        """Why `job` must wait for its user's limit, or None."""
        lim, k = self.limits, self.key(job)
        who = f"share {k}" if lim.per == "share" else f"user {k}"
        checks = (
            ("jobs", lim.max_running, self.jobs[k], 1),
            ("vCPUs", lim.max_vcpus, self.vcpus[k], job.cpus * job.nodes),
            ("GPUs", lim.max_gpus, self.gpus[k], job.gpus * job.nodes),
            ("nodes", lim.max_nodes, self.nodes[k], job.nodes),
        )
        for what, limit, held, need in checks:
            if limit is not None and held + need > limit:
                return (
                    f"UserLimit: {who} may hold at most {limit} {what} at once in queue "
                    f"{self.queue} ({held} held, this job needs {need})"
                )
        return None

    def started(self, job: JobView) -> None:
        k = self.key(job)
        self.jobs[k] += 1
        self.vcpus[k] += job.cpus * job.nodes
        self.gpus[k] += job.gpus * job.nodes
        self.nodes[k] += job.nodes


def never_within(job: JobView, queue: str, limits: UserLimits | None) -> str | None:
    """Why `job` is bigger than one user may ever hold in `queue` (it could never
    start: refused at submit, not kept waiting), or None."""
    if limits is None:
        return None
    checks = (
        ("vCPUs", "max_vcpus_per_user", limits.max_vcpus, job.cpus * job.nodes),
        ("GPUs", "max_gpus_per_user", limits.max_gpus, job.gpus * job.nodes),
        ("nodes", "max_nodes_per_user", limits.max_nodes, job.nodes),
    )
    who = "share identifier" if limits.per == "share" else "user"
    for what, field, limit, need in checks:
        if limit is not None and need > limit:
            return (
                f"needs {need} {what}; queue {queue} allows one {who} at most {limit} "
                f"at once ({field} = {limit})"
            )
    return None
