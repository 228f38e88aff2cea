"""Counters for watching a running controller at scale: the `stats` API op.

Why it exists: at thousands of hosts and tens of thousands of jobs, `hosts`
and `jobs` replies are megabytes; a benchmark or a monitor polling every
fraction of a second needs only counts. This reads in-memory state only (no
SQL), so it is cheap enough to poll.
"""

from __future__ import annotations

import resource
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpcbatch.controller.app import Controller


def controller_stats(c: Controller) -> dict[str, Any]:
    """Hosts and active jobs by state, scheduler pass timings, links, tasks, CPU time."""
    hosts = Counter(str(h.state) for h in c.cluster.hosts.values())
    jobs = Counter(str(j.state) for j in c.jobs.active.values())
    sched = c.scheduler
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "hosts": dict(hosts),
        "links_connected": sum(1 for link in c.links.values() if link.connected),
        "jobs": dict(jobs),
        "array_parents": len(c.jobs.array_parents),
        "scheduler": {
            "passes": sched.passes,
            "last_pass_s": sched.last_pass_s,
            "max_pass_s": sched.max_pass_s,
            "total_pass_s": sched.total_pass_s,
            "max_plan_s": sched.max_plan_s,
            "total_plan_s": sched.total_plan_s,
        },
        "tasks": len(c.jobs._tasks),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_kb": usage.ru_maxrss,
    }
