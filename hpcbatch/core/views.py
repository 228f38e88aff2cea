"""The scheduler's inputs and output: plain frozen views of a snapshot, and the plan.

The controller fills these from its state (see docs/scheduling.md, "Feeding the
scheduler"); `hpcbatch.core.scheduler.schedule` reads them and returns a `Plan`.
They are separate from the pass so that the controller, tests and benchmarks
can build snapshots without importing the policy. Every field added after the
first version has a default, so older callers keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from hpcbatch.core.backfill import Reservation
from hpcbatch.core.records import Placement


@dataclass(frozen=True, slots=True)
class HostView:
    """A host as the scheduler sees it: capacity, what is in use, whether it takes work."""

    name: str
    cpus: int
    memory_mb: int
    gpus: tuple[int, ...] = ()
    fabric: str | None = None
    available: bool = True
    unavailable_reason: str | None = None
    used_cpus: int = 0
    used_memory_mb: int = 0
    used_gpus: frozenset[int] = frozenset()
    exclusive: bool = False

    @property
    def idle(self) -> bool:
        return self.used_cpus == 0 and self.used_memory_mb == 0 and not self.used_gpus


class QueuePolicy(StrEnum):
    """How a queue orders its own jobs."""

    FIFO = "FIFO"
    """Submission order (the order the jobs are given in)."""

    FAIRSHARE = "FAIRSHARE"
    """The user with the least decayed usage per share first; FIFO within a user."""


@dataclass(frozen=True, slots=True)
class QueueView:
    """A job queue. `compute_envs` (names, in order) replace `hosts` when given."""

    name: str
    priority: int
    hosts: tuple[str, ...] = ()
    enabled: bool = True
    compute_envs: tuple[str, ...] = ()
    policy: QueuePolicy = QueuePolicy.FIFO
    max_running: int | None = None
    max_vcpus: int | None = None
    default_time_limit_s: float | None = None


@dataclass(frozen=True, slots=True)
class ComputeEnvView:
    """A compute environment: hosts (already resolved from labels), state, vCPU cap.

    `used_vcpus` None means "count it from the running allocations charged to
    this environment" (`RunningView.compute_env`).
    """

    name: str
    hosts: tuple[str, ...]
    enabled: bool = True
    max_vcpus: int | None = None
    used_vcpus: int | None = None


@dataclass(frozen=True, slots=True)
class JobView:
    """A runnable job's request. Per-node figures; `nodes > 1` or `exclusive` means whole hosts."""

    id: int
    queue: str
    cpus: int = 1
    memory_mb: int = 0
    gpus: int = 0
    nodes: int = 1
    exclusive: bool = False
    fabric: str | None = None
    user: str = ""
    time_limit_s: float | None = None
    throttle_group: str | None = None  # e.g. the array parent's id
    throttle_limit: int | None = None  # at most this many of the group at once

    @property
    def whole_hosts(self) -> bool:
        return self.nodes > 1 or self.exclusive

    def shape(self) -> tuple[str, int, int, int, int, bool, str | None]:
        return (
            self.queue,
            self.cpus,
            self.memory_mb,
            self.gpus,
            self.nodes,
            self.exclusive,
            self.fabric,
        )


@dataclass(frozen=True, slots=True)
class RunningView:
    """An allocation held now (STARTING or RUNNING), for limits, throttles and backfill."""

    job_id: int
    queue: str
    placements: tuple[Placement, ...]
    start: float = 0.0
    time_limit_s: float | None = None  # None: the queue's default limit, if any
    user: str = ""
    throttle_group: str | None = None
    compute_env: str | None = None


@dataclass(slots=True)
class Plan:
    """What to start now, and why everything else waits."""

    starts: list[tuple[int, tuple[Placement, ...]]] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    compute_envs: dict[int, str] = field(default_factory=dict)  # started job -> its CE
