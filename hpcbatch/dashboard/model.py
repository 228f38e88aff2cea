"""The dashboard's in-memory picture of the cluster, kept current by events.

The controller pushes one job summary per state change; applying it by id
costs a dict assignment, so 10,000 jobs never need a re-fetch. Views read this
model and nothing else; it is plain data (standard library only) so the
snapshot tests can fill it with fixed records and the logic is unit-tested
without a terminal.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Job = dict[str, Any]
Host = dict[str, Any]
Queue = dict[str, Any]

FINAL = frozenset({"SUCCEEDED", "FAILED"})
WAITING = frozenset({"SUBMITTED", "PENDING", "RUNNABLE"})
HOLDING = frozenset({"STARTING", "RUNNING"})
# Job states whose hosts' allocations change: a host re-read follows them.
ALLOCATION_CHANGES = HOLDING | FINAL


def host_state(h: Host) -> str:
    """The sinfo-style word for a host: idle, mixed, allocated, drained, ..."""
    state = str(h.get("state", "UNKNOWN"))
    if state == "UNREACHABLE":
        return "unreachable"
    if state == "DOWN":
        return "down"
    if state in ("UNKNOWN", "CONNECTING"):
        return state.lower()
    if h.get("admin") == "DRAIN":
        return "draining" if h.get("jobs") else "drained"
    used = int(h.get("alloc_cpus") or 0)
    gpus = len(h.get("alloc_gpus") or [])
    if not used and not gpus:
        return "idle"
    if used >= int(h.get("cpus") or 0) > 0:
        return "allocated"
    return "mixed"


@dataclass
class Model:
    """Jobs by id, hosts and queues by name, and a version bumped on every change."""

    jobs: dict[int, Job] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    queues: dict[str, Queue] = field(default_factory=dict)
    children: dict[int, set[int]] = field(default_factory=dict)
    version: int = 0
    user: str = ""
    admin: bool = False

    # ------------------------------------------------------------------ updates

    def load(self, jobs: Iterable[Job], hosts: Iterable[Host], queues: Iterable[Queue]) -> None:
        """Replace everything (a fresh connection or a resync after an overflow)."""
        self.jobs.clear()
        self.children.clear()
        for job in jobs:
            self._put(job)
        self.hosts = {h["name"]: h for h in hosts}
        self.queues = {q["name"]: q for q in queues}
        self.version += 1

    def put_jobs(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self._put(job)
        self.version += 1

    def put_hosts(self, hosts: Iterable[Host]) -> None:
        for h in hosts:
            self.hosts[h["name"]] = h
        self.version += 1

    def put_queues(self, queues: Iterable[Queue]) -> None:
        for q in queues:
            self.queues[q["name"]] = q
        self.version += 1

    def _put(self, job: Job) -> None:
        self.jobs[int(job["id"])] = job
        parent = job.get("array_parent")
        if parent is not None:
            self.children.setdefault(int(parent), set()).add(int(job["id"]))

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one pushed event; True when the hosts' allocations should be re-read."""
        kind = event.get("event")
        self.version += 1
        if kind == "job" and isinstance(event.get("job"), dict):
            job = event["job"]
            self._put(job)
            return job.get("state") in ALLOCATION_CHANGES
        if kind == "host" and isinstance(event.get("host"), dict):
            h = event["host"]
            self.hosts[h["name"]] = h
            return False
        if kind == "queue" and event.get("queue") in self.queues:
            self.queues[event["queue"]] = {**self.queues[event["queue"]], "state": event["state"]}
        return False

    # ------------------------------------------------------------------ reading

    def array_children(self, parent: int) -> list[Job]:
        ids = sorted(self.children.get(parent, ()))
        return [self.jobs[i] for i in ids]

    def child_counts(self, parent: int) -> Counter[str]:
        return Counter(self.jobs[i]["state"] for i in self.children.get(parent, ()))

    def job_counts(self) -> Counter[str]:
        """Jobs per state, array parents left out (their children are counted)."""
        return Counter(j["state"] for j in self.jobs.values() if j.get("array_size") is None)

    def queue_counts(self, queue: str) -> Counter[str]:
        return Counter(
            j["state"]
            for j in self.jobs.values()
            if j.get("queue") == queue and j.get("array_size") is None
        )

    def jobs_on(self, host: str) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j["state"] in HOLDING and host in (j.get("hosts") or [])
        ]

    def host_counts(self) -> Counter[str]:
        return Counter(host_state(h) for h in self.hosts.values())

    def islands(self) -> dict[str, list[Host]]:
        """Hosts by fabric island (`""` for hosts on no fabric), names sorted."""
        out: dict[str, list[Host]] = {}
        for name in sorted(self.hosts, key=_natural):
            h = self.hosts[name]
            out.setdefault(str(h.get("fabric") or ""), []).append(h)
        return dict(sorted(out.items(), key=lambda kv: (kv[0] == "", kv[0])))


def _natural(name: str) -> tuple[Any, ...]:
    """node2 before node10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
