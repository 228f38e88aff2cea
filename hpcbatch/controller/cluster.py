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
from hpcbatch.core.states import POWER_STATES, AdminState, HostState
from hpcbatch.core.targeting import gpu_type_of, host_features
from hpcbatch.core.usage import LiveUsage
from hpcbatch.inventory import ResolvedComputeEnv, ResolvedHost, ResolvedInventory


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
    # what its running jobs use now, from the agent's heartbeats (cgroup samples)
    live: LiveUsage = field(default_factory=LiveUsage)
    # Elastic hosts (docs/elastic.md): powered up and down by the controller.
    elastic: bool = False
    powering_since: float | None = None  # wall clock of the last resume
    idle_since: float | None = None  # monotonic, while UP with nothing held
    _features: frozenset[str] | None = None
    _capacity: tuple[tuple[Any, ...], HostView] | None = None  # capacity_view, and its inputs

    def respec(self, spec: ResolvedHost) -> None:
        """A changed inventory entry (live administration); features read again."""
        self.spec, self._features = spec, None

    def power(self) -> str:
        """The power word the scheduler reads (`HostView.power`): "" if not elastic."""
        if not self.elastic:
            return ""
        if self.state in POWER_STATES:
            return str(self.state)
        return "OFF" if self.state == HostState.DOWN else "UP"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def features(self) -> frozenset[str]:
        """What `-C/--constraint` matches here (core.targeting.host_features)."""
        if self._features is None:
            self._features = host_features(self.spec.features, self.spec.labels)
        return self._features

    @property
    def gpu_type(self) -> str | None:
        """Declared in the inventory, else read from the first probed GPU's name."""
        if self.spec.gpu_type is not None:
            return self.spec.gpu_type
        gpus = self.facts.gpus if self.facts is not None else ()
        return gpu_type_of(gpus[0].name) if gpus else None

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

    def used_cores(self) -> frozenset[int]:
        """The core numbers pinned to the attempts held here (from their stored rows, so
        a restarted controller knows them too)."""
        return frozenset(c for a in self.holders.values() for c in a.cores)

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
        power = self.power()
        if power in ("POWERED_DOWN", "POWERING_UP"):
            spec = self.spec  # sized as declared until it is up and probed
            return HostView(
                name=self.name,
                cpus=self.cpus or spec.cpus or 0,
                memory_mb=self.memory_mb or spec.memory_mb or 0,
                gpus=self.gpus or tuple(range(spec.gpus or 0)),
                fabric=spec.fabric,
                available=False,
                unavailable_reason=f"{self.name} {power.lower().replace('_', ' ')}",
                weight=spec.weight,
                power=power,
                powering_since=self.powering_since,
            )
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
            used_cores=self.used_cores(),
            exclusive=exclusive,
            weight=self.spec.weight,
            power=power,
            features=self.features,
            gpu_type=self.gpu_type,
        )

    def capacity_view(self) -> HostView:
        """Full capacity, nothing used: for the 'could this ever run' check. Kept until
        the host's size or facts change: every submit asks it of every host in the
        queue (9 us each: 45 ms a submit at 5,000 hosts when built each time)."""
        key = (self.cpus, self.memory_mb, self.gpus, self.facts)
        if self._capacity is not None and self._capacity[0] == key:
            return self._capacity[1]
        view = HostView(
            name=self.name,
            cpus=self.cpus or 0,
            memory_mb=self.memory_mb or 0,
            gpus=self.gpus,
            fabric=self.spec.fabric,
            features=self.features,
            gpu_type=self.gpu_type,
        )
        self._capacity = (key, view)
        return view

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
            "run_as": self.spec.run_as,
            "labels": dict(self.spec.labels),
            "features": list(self.spec.features),
            "gpu_type": self.gpu_type,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "gpus": list(self.gpus),
            "alloc_cpus": cpus,
            "alloc_memory_mb": mem,
            "alloc_gpus": sorted(gpus),
            "alloc_cores": sorted(self.used_cores()),
            "jobs": sorted({a.job_id for a in self.holders.values()}),
            "actual": self.live.totals() if self.live.now else None,
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
                "limits": {
                    "enforced": f.limits_enforced,
                    "cgroup_version": f.cgroup_version,
                    "gpu_devices": f.gpu_devices,
                    "why": f.limits_why,
                },
            },
        }


class Cluster:
    """Hosts by name, queues as the scheduler sees them, and allocation bookkeeping."""

    def __init__(self, inventory: ResolvedInventory) -> None:
        self.inventory = inventory
        self.hosts: dict[str, HostRuntime] = {
            name: HostRuntime(spec=spec) for name, spec in inventory.hosts.items()
        }
        self._mark_elastic()
        self.queue_enabled: dict[str, bool] = {
            name: q.enabled for name, q in inventory.queues.items()
        }

    def _mark_elastic(self) -> None:
        elastic = {
            name
            for ce in self.inventory.compute_environments.values()
            if ce.elastic
            for name in ce.hosts
        }
        for name, host in self.hosts.items():
            host.elastic = name in elastic

    def replace(self, inventory: ResolvedInventory) -> tuple[list[str], list[str]]:
        """Swap in a changed inventory (live administration): hosts new to it get a
        runtime, hosts gone from it lose theirs (the caller removes only idle ones),
        the others keep theirs with the new entry. Queues take their declared
        state (the caller lays the operators' states over it). Returns (added,
        changed): hosts added, and hosts whose connection settings changed."""
        self.inventory = inventory
        added = [n for n in inventory.hosts if n not in self.hosts]
        changed: list[str] = []
        for name in [n for n in self.hosts if n not in inventory.hosts]:
            del self.hosts[name]
        for name, spec in inventory.hosts.items():
            host = self.hosts.get(name)
            if host is None:
                self.hosts[name] = HostRuntime(spec=spec)
            elif host.spec != spec:
                if _connection(host.spec) != _connection(spec):
                    changed.append(name)
                host.respec(spec)
        self._mark_elastic()
        self.queue_enabled = {name: q.enabled for name, q in inventory.queues.items()}
        return added, changed

    def queue_hosts(self, queue: str) -> tuple[str, ...]:
        """The queue's hosts, in the order of its enabled compute environments."""
        return self.inventory.queue_hosts(queue)

    def compute_env_of(self, queue: str, host: str) -> str:
        q = self.inventory.queues[queue]
        for ce_name in q.compute_environments:
            if host in self.inventory.compute_environments[ce_name].hosts:
                return ce_name
        return q.compute_environments[0]

    def elastic_env_of(self, host: str) -> ResolvedComputeEnv | None:
        """The first elastic compute environment listing `host` (its commands)."""
        for ce in self.inventory.compute_environments.values():
            if ce.elastic and host in ce.hosts:
                return ce
        return None

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


def _connection(spec: ResolvedHost) -> tuple[object, ...]:
    """What a host's SSH link is made from: a change means a new link."""
    return (spec.address, spec.port, spec.user, spec.identity, spec.known_hosts,
            spec.ssh_config, spec.work_dir, spec.python, spec.run_as)  # fmt: skip
