"""The controller's in-memory view of hosts and what is allocated on them.

The store is the source of truth; this is its working copy, rebuilt from the
store at start-up and updated in step with every committed change. The
scheduler's snapshot is built from here, so a pass costs no SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.core.facts import HostFacts
from hpcbatch.core.records import AttemptRecord, AttemptState
from hpcbatch.core.scheduler import HostView
from hpcbatch.core.states import AdminState, HostState
from hpcbatch.inventory import ResolvedHost, ResolvedInventory


@dataclass(slots=True)
class HostRuntime:
    """One host: its inventory entry, probed facts, state, and current allocations."""

    spec: ResolvedHost
    state: HostState = HostState.UNKNOWN
    reason: str | None = None
    admin: AdminState = AdminState.ACTIVE
    admin_reason: str | None = None
    facts: HostFacts | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    gpus: tuple[int, ...] = ()
    mismatches: list[str] = field(default_factory=list)
    # attempt id -> the attempt holding resources here
    holders: dict[str, AttemptRecord] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def known(self) -> bool:
        return self.cpus is not None

    def used(self) -> tuple[int, int, frozenset[int], bool]:
        cpus = mem = 0
        gpus: set[int] = set()
        exclusive = False
        for a in self.holders.values():
            cpus += a.cpus
            mem += a.memory_mb
            gpus.update(a.gpus)
            exclusive = exclusive or a.exclusive
        return cpus, mem, frozenset(gpus), exclusive

    def view(self) -> HostView:
        cpus, mem, gpus, exclusive = self.used()
        available = self.state == HostState.UP and self.admin == AdminState.ACTIVE and self.known
        why: str | None = None
        if not available:
            if self.admin != AdminState.ACTIVE:
                why = f"{self.name} {'down' if self.admin == AdminState.DOWN else 'drained'}"
            elif not self.known:
                why = f"{self.name} not yet probed"
            else:
                why = f"{self.name} {self.state.lower()}"
        return HostView(
            name=self.name,
            cpus=self.cpus or 0,
            memory_mb=self.memory_mb or 0,
            gpus=self.gpus,
            fabric=self.spec.fabric,
            available=available,
            unavailable_reason=why,
            used_cpus=cpus,
            used_memory_mb=mem,
            used_gpus=gpus,
            exclusive=exclusive,
        )

    def capacity_view(self) -> HostView:
        """Full capacity, nothing used: for the 'could this ever run' check."""
        return HostView(
            name=self.name,
            cpus=self.cpus or 0,
            memory_mb=self.memory_mb or 0,
            gpus=self.gpus,
            fabric=self.spec.fabric,
        )

    def summary(self) -> dict[str, Any]:
        cpus, mem, gpus, _ = self.used()
        f = self.facts
        return {
            "name": self.name,
            "address": self.spec.address,
            "port": self.spec.port,
            "state": str(self.state),
            "reason": self.reason,
            "admin": str(self.admin),
            "admin_reason": self.admin_reason,
            "fabric": self.spec.fabric,
            "labels": dict(self.spec.labels),
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "gpus": list(self.gpus),
            "alloc_cpus": cpus,
            "alloc_memory_mb": mem,
            "alloc_gpus": sorted(gpus),
            "jobs": sorted({a.job_id for a in self.holders.values()}),
            "mismatches": list(self.mismatches),
            "facts": None
            if f is None
            else {
                "hostname": f.hostname,
                "gpus": [
                    {"index": g.index, "name": g.name, "memory_mb": g.memory_mb, "uuid": g.uuid}
                    for g in f.gpus
                ],
                "fast_links": list(f.fast_links),
                "efa": list(f.efa),
                "runtimes": dict(f.runtimes),
                "runtime_versions": dict(f.runtime_versions),
                "runtimes_unusable": dict(f.runtimes_unusable),
                "python": f.python,
                "kernel": f.kernel,
            },
        }


class Cluster:
    """Hosts by name, queues as the scheduler sees them, and allocation bookkeeping."""

    def __init__(self, inventory: ResolvedInventory) -> None:
        self.inventory = inventory
        self.hosts: dict[str, HostRuntime] = {
            name: HostRuntime(spec=spec) for name, spec in inventory.hosts.items()
        }
        self.queue_enabled: dict[str, bool] = {
            name: q.enabled for name, q in inventory.queues.items()
        }

    def queue_hosts(self, queue: str) -> tuple[str, ...]:
        """The queue's hosts, in the order of its enabled compute environments."""
        return self.inventory.queue_hosts(queue)

    def compute_env_of(self, queue: str, host: str) -> str:
        q = self.inventory.queues[queue]
        for ce_name in q.compute_environments:
            if host in self.inventory.compute_environments[ce_name].hosts:
                return ce_name
        return q.compute_environments[0]

    def host_views(self) -> list[HostView]:
        return [h.view() for h in self.hosts.values()]

    def hold(self, attempts: Iterable[AttemptRecord]) -> None:
        for a in attempts:
            host = self.hosts.get(a.host)
            if host is not None and a.state in (AttemptState.STARTING, AttemptState.RUNNING):
                host.holders[a.attempt_id] = a

    def release(self, attempts: Iterable[AttemptRecord]) -> None:
        for a in attempts:
            host = self.hosts.get(a.host)
            if host is not None:
                host.holders.pop(a.attempt_id, None)
