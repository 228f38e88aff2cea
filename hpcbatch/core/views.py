"""The scheduler's inputs and output: plain frozen views of a snapshot, and the plan.

The controller fills these from its state (see docs/scheduling.md, "Feeding the
scheduler"); `hpcbatch.core.scheduler.schedule` reads them and returns a `Plan`.
They are separate from the pass so that the controller, tests and benchmarks
can build snapshots without importing the policy. Every field added after the
first version has a default, so older callers keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter

from hpcbatch.core.records import Placement
from hpcbatch.core.targeting import Target


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
    weight: int = 1  # lower fills first (a cost, as Slurm's node Weight)
    # Elastic hosts (docs/elastic.md): "" for a host that is not elastic; else UP,
    # POWERING_UP, POWERED_DOWN (may be resumed), POWERING_DOWN, or OFF (failed,
    # DOWN: neither counted against max_vcpus nor resumed). `cpus` etc. of a host
    # not up are its declared ones.
    power: str = ""
    powering_since: float | None = None
    features: frozenset[str] = frozenset()  # inventory features, labels (core.targeting)
    gpu_type: str | None = None  # declared, or read from the probed GPU name
    used_cores: frozenset[int] = frozenset()  # core numbers pinned to running jobs

    @property
    def idle(self) -> bool:
        return self.used_cpus == 0 and self.used_memory_mb == 0 and not self.used_gpus


class AllocationStrategy(StrEnum):
    """How a compute environment picks hosts for a job (as AWS Batch's strategies).

    Host `weight` comes first in every strategy: a job goes to the lowest weight
    that has room, and the strategy chooses within that weight.
    """

    BEST_FIT = "BEST_FIT"
    """Pack: the host with the fewest spare GPUs, then the fewest free CPUs, so that
    whole hosts stay free for large jobs. Hosts powered down count as candidates
    like any other (an elastic environment resumes the best fit)."""

    BEST_FIT_PROGRESSIVE = "BEST_FIT_PROGRESSIVE"
    """Best fit among the hosts already up; only when none fits, power up more."""

    SPREAD = "SPREAD"
    """Least loaded first: the host with the most free CPUs, to spread load (and
    heat, and failure) over the hosts."""


class QueuePolicy(StrEnum):
    """How a queue orders its own jobs."""

    FIFO = "FIFO"
    """Submission order (the order the jobs are given in)."""

    FAIRSHARE = "FAIRSHARE"
    """The share identifier (by default the user) with the least decayed usage per
    share first; FIFO within an identifier."""


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
    # Fair share (docs/scheduling.md): weight per share identifier (1 when not listed;
    # empty: the `shares` given to `schedule`), the usage half-life (None: the
    # default), and the percentage of capacity kept for identifiers not yet active.
    shares: Mapping[str, float] = field(default_factory=dict)
    half_life_s: float | None = None
    compute_reservation: int = 0
    # Per user (or, with limits_per "share", per share identifier) at once in this
    # queue (Slurm's MaxJobsPerUser / MaxTRESPerUser): see `core.limits`.
    user_limits: UserLimits | None = None


@dataclass(frozen=True, slots=True)
class UserLimits:
    """What one user (or share identifier) may hold at once in a queue; None: no limit."""

    per: str = "user"  # "user" or "share"
    max_running: int | None = None
    max_vcpus: int | None = None
    max_gpus: int | None = None
    max_nodes: int | None = None


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
    strategy: AllocationStrategy = AllocationStrategy.BEST_FIT


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
    share_id: str = ""  # the fair-share identifier; "" means the user
    target: Target | None = None  # host targeting: -w, -x, -C, GPU type (core.targeting)
    order: tuple[int, int] = (0, 0)  # core.jobcontrol.order_key: (-priority, nice)
    begin: float | None = None  # not before this time (`--begin`)
    deadline: float | None = None  # fails unless it can end by then (`--deadline`)

    @property
    def share(self) -> str:
        """The identifier fair share charges: `share_id`, or the user."""
        return self.share_id or self.user

    @property
    def whole_hosts(self) -> bool:
        return self.nodes > 1 or self.exclusive

    def shape(self) -> tuple[object, ...]:
        return (
            self.queue,
            self.cpus,
            self.memory_mb,
            self.gpus,
            self.nodes,
            self.exclusive,
            self.fabric,
            self.target,
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
    share_id: str = ""  # as JobView's

    @property
    def share(self) -> str:
        return self.share_id or self.user


@dataclass(frozen=True, slots=True)
class Reservation:
    """A start time promised to a waiting job, and where: part of the plan, made by
    `core.backfill` and shown to users as a pending reason."""

    job_id: int
    start: float
    hosts: tuple[str, ...]


@dataclass(slots=True)
class Plan:
    """What to start now, and why everything else waits."""

    starts: list[tuple[int, tuple[Placement, ...]]] = field(default_factory=list)
    resume: list[str] = field(default_factory=list)  # powered-down hosts to power up
    reasons: dict[int, str] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    compute_envs: dict[int, str] = field(default_factory=dict)  # started job -> its CE
    expired: dict[int, str] = field(default_factory=dict)  # past --deadline: fail, with why
    wake_at: float | None = None  # the earliest --begin still ahead: pass again then


def by_priority(jobs: list[JobView]) -> list[JobView]:
    """A queue's jobs, higher per-job priority (then lower nice) first; among equals the
    order given (a stable sort). The key is `core.jobcontrol.order_key`, kept apart
    from the queue's policy (FIFO, fair share), which orders within equals."""
    if all(j.order == (0, 0) for j in jobs):
        return jobs
    return sorted(jobs, key=attrgetter("order"))
