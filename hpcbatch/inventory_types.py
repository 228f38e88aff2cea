"""The resolved inventory: every host, compute environment and queue with each setting
decided (defaults applied, hostlists expanded, paths made absolute).

Why apart from `inventory`: these are the types the rest of hpcbatch reads (the
controller, the scheduler's snapshot, the sandbox), while `inventory` is how a TOML
file becomes one; `hpcbatch.inventory` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpcbatch.models import ApiSpec, NotificationsSpec, RetentionSpec, WebhookSpec


@dataclass(frozen=True)
class ResolvedHost:
    """A host with every setting decided. Treat `labels` as read-only.

    `address`, `port` and `user` are what the SSH client connects to.
    `identity`, `known_hosts` and `ssh_config` are absolute local paths, or
    None for the SSH client's defaults (host-key checking is never turned off).
    `work_dir` and `python` are used on the host, so `~` in them is the remote
    home and is left as written. `cpus`, `memory_mb` and `gpus` are the declared
    resources (None: use what the host reports, see `core.facts`).
    """

    name: str
    address: str
    port: int
    user: str
    identity: Path | None
    known_hosts: Path | None
    ssh_config: Path | None
    work_dir: str
    python: str
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    run_as: str = "login"  # or "submitter": jobs run as their user (docs/security.md)
    min_uid: int = 1000
    fabric: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    weight: int = 1
    features: tuple[str, ...] = ()
    gpu_type: str | None = None


@dataclass(frozen=True)
class ResolvedComputeEnv:
    """A compute environment as the names of its hosts, in a stable order."""

    name: str
    hosts: tuple[str, ...]
    enabled: bool = True
    max_vcpus: int | None = None
    allocation_strategy: str = "BEST_FIT"
    health_check: str | None = None
    health_check_interval_s: int = 300
    health_check_timeout_s: int = 60
    container_runtimes: tuple[str, ...] | None = None
    min_vcpus: int = 0
    desired_vcpus: int | None = None
    idle_time_s: int = 300
    resume_command: str | None = None
    suspend_command: str | None = None
    resume_timeout_s: int = 600
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    log_collection: str | None = None  # "off" or "on_exit"; None: not set here

    @property
    def elastic(self) -> bool:
        """Whether its hosts are powered up and down on demand (docs/elastic.md)."""
        return self.resume_command is not None


@dataclass(frozen=True)
class ResolvedQueue:
    """A queue (the fields of `models.QueueSpec`, `state` as `enabled`)."""

    name: str
    compute_environments: tuple[str, ...]
    priority: int = 1
    enabled: bool = True
    policy: Literal["FIFO", "FAIRSHARE"] = "FIFO"
    default_time_limit_s: int | None = None
    max_running: int | None = None
    max_vcpus: int | None = None
    fabric: str | None = None
    shares: dict[str, float] = field(default_factory=dict, hash=False)
    share_decay_half_life_s: float | None = None
    compute_reservation: int = 0
    limits_per: str = "user"
    max_running_per_user: int | None = None
    max_vcpus_per_user: int | None = None
    max_gpus_per_user: int | None = None
    max_nodes_per_user: int | None = None
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    log_collection: str | None = None


@dataclass(frozen=True)
class ResolvedInventory:
    """The whole cluster, checked and resolved. Treat the dicts as read-only.

    The dicts keep the file's order (made-up `all`/`default` entries last).
    """

    path: Path
    hosts: dict[str, ResolvedHost] = field(hash=False)
    compute_environments: dict[str, ResolvedComputeEnv] = field(hash=False)
    queues: dict[str, ResolvedQueue] = field(hash=False)
    default_queue: str
    metrics_address: str | None = None  # `[metrics] address`: None, metrics off
    notifications: NotificationsSpec = field(default_factory=NotificationsSpec, hash=False)
    webhooks: tuple[WebhookSpec, ...] = ()
    admins: tuple[str, ...] = ()
    api: ApiSpec = field(default_factory=ApiSpec)
    retention: RetentionSpec = field(default_factory=RetentionSpec)

    def queue_hosts(self, queue: str, *, include_disabled: bool = False) -> tuple[str, ...]:
        """The hosts of a queue's (enabled) compute environments, in order, each once."""
        seen: dict[str, None] = {}
        for name in self.queues[queue].compute_environments:
            env = self.compute_environments[name]
            if env.enabled or include_disabled:
                for host in env.hosts:
                    seen.setdefault(host, None)
        return tuple(seen)


# --------------------------------------------------------------------------- loading
