"""Plain records of jobs, attempts and placements shared by the store and the controller.

They are dataclasses rather than pydantic models: they are built by the
thousand on hot paths (scheduling passes, listings) and carry data that was
already validated on the way in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.states import JobState


@dataclass(frozen=True, slots=True)
class Placement:
    """One node of an allocation: which host, and what of it."""

    host: str
    cpus: int
    memory_mb: int
    gpus: tuple[int, ...] = ()
    exclusive: bool = False
    # The host's core numbers given to it (its cpuset), or () where none were pinned.
    cores: tuple[int, ...] = ()


class AttemptState(StrEnum):
    """The life of one node of one attempt, as the controller tracks it."""

    STARTING = "STARTING"
    """Written down; the launch request is on its way to the agent."""

    RUNNING = "RUNNING"
    """The agent confirmed the process started."""

    EXITED = "EXITED"
    """The exit status was collected."""

    LOST = "LOST"
    """The controller gave up on it (host failure, or never launched). If it is
    still alive on its host it is fenced (killed) when the host returns."""


@dataclass(slots=True)
class AttemptRecord:
    job_id: int
    attempt: int
    node: int
    host: str
    cpus: int
    memory_mb: int
    gpus: tuple[int, ...]
    state: AttemptState
    created: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    # What the attempt used on this node, recorded at its end (core.usage; NULL before).
    elapsed_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    mem_peak_bytes: int | None = None
    gpu_util: float | None = None
    gpu_mem_peak_bytes: int | None = None
    usage_source: str | None = None
    cores: tuple[int, ...] = ()  # the host's core numbers it was given; () if unpinned
    exclusive: bool = False  # whole host held (derived from the job's request, not stored)

    @property
    def attempt_id(self) -> str:
        return attempt_id(self.job_id, self.attempt, self.node)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "node": self.node,
            "host": self.host,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "gpus": list(self.gpus),
            "cores": list(self.cores),
            "state": str(self.state),
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "usage": self.usage_json(),
        }

    def take_usage(self, fields: Mapping[str, Any]) -> None:
        """Set the usage columns (core.usage.usage_fields) recorded at the attempt's end."""
        for key, value in fields.items():
            setattr(self, key, value)

    def usage_json(self) -> dict[str, Any] | None:
        """What this node used (None before the attempt's end was recorded)."""
        if self.usage_source is None:
            return None
        return {
            "elapsed_s": self.elapsed_s,
            "cpu_user_s": self.cpu_user_s,
            "cpu_sys_s": self.cpu_sys_s,
            "mem_peak_bytes": self.mem_peak_bytes,
            "gpu_util": self.gpu_util,
            "gpu_mem_peak_bytes": self.gpu_mem_peak_bytes,
            "source": self.usage_source,
        }


@dataclass(slots=True)
class JobRecord:
    """A job as the controller holds it.

    `request` is the validated request as JSON, as the store keeps it (and `show`
    prints it); the controller reads it typed, as `spec`.
    """

    id: int
    name: str
    user: str
    uid: int
    queue: str
    state: JobState
    reason: str | None
    request: dict[str, Any]
    submitted: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    attempt: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)
    # Arrays: a child points at its parent and has an index; a parent has a size.
    array_parent: int | None = None
    array_index: int | None = None
    array_size: int | None = None
    hold: str | None = None  # `user` or `admin` while held (core.jobcontrol)
    # `spec`, built from `request` on first use: a listing of stored jobs never pays for it.
    _spec: JobSpec | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> JobSpec:
        """The request, typed (core.jobspec); rebuilt if `request` was replaced."""
        spec = self._spec
        if spec is None or spec.raw is not self.request:
            spec = self._spec = JobSpec.from_json(self.request)
        return spec

    @property
    def display_id(self) -> str:
        """`PARENT_INDEX` for an array child (Slurm's style), else the plain id."""
        if self.array_parent is not None:
            return f"{self.array_parent}_{self.array_index}"
        return str(self.id)

    @property
    def is_array_parent(self) -> bool:
        return self.array_size is not None

    def summary(self) -> dict[str, Any]:
        req = self.request  # the JSON, not `spec`: listings of stored jobs stay cheap
        hosts = sorted({a.host for a in self.attempts if a.attempt == self.attempt})
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "queue": self.queue,
            "share_id": req.get("share_id") or self.user,
            "state": str(self.state),
            "reason": self.reason,
            "submitted": self.submitted,
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "attempt": self.attempt,
            "nodes": req.get("nodes", 1),
            "cpus": req.get("cpus", 1),
            "memory_mb": req.get("memory_mb"),
            "gpus": req.get("gpus", 0),
            "time_limit_s": req.get("time_limit_s"),
            "hosts": hosts,
            "display_id": self.display_id,
            "array_parent": self.array_parent,
            "array_index": self.array_index,
            "array_size": self.array_size,
            "hold": self.hold,
            "definition": req.get("definition"),
            "tags": req.get("tags") or {},
        }


def current_attempts(job: JobRecord) -> list[AttemptRecord]:
    """The job's node attempts of its current attempt number."""
    return [a for a in job.attempts if a.attempt == job.attempt]


def new_attempts(
    job_id: int, attempt: int, placements: Iterable[Placement], now: float
) -> list[AttemptRecord]:
    """A started attempt's nodes, one per placement, STARTING."""
    return [
        AttemptRecord(
            job_id=job_id,
            attempt=attempt,
            node=node,
            host=p.host,
            cpus=p.cpus,
            memory_mb=p.memory_mb,
            gpus=p.gpus,
            cores=p.cores,
            state=AttemptState.STARTING,
            created=now,
            exclusive=p.exclusive,
        )
        for node, p in enumerate(placements)
    ]


def attempt_id(job_id: int, attempt: int, node: int) -> str:
    """The agent-side name of one node of one attempt: `<job>.<attempt>.<node>`."""
    return f"{job_id}.{attempt}.{node}"


def parse_attempt_id(text: str) -> tuple[int, int, int]:
    job, attempt, node = text.split(".")
    return int(job), int(attempt), int(node)
