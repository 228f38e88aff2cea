"""Plain records of jobs, attempts and placements shared by the store and the controller.

They are dataclasses rather than pydantic models: they are built by the
thousand on hot paths (scheduling passes, listings) and carry data that was
already validated on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hpcbatch.core.states import JobState


@dataclass(frozen=True, slots=True)
class Placement:
    """One node of an allocation: which host, and what of it."""

    host: str
    cpus: int
    memory_mb: int
    gpus: tuple[int, ...] = ()
    exclusive: bool = False


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
            "state": str(self.state),
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "reason": self.reason,
            "stdout": self.stdout,
            "stderr": self.stderr,
        }


@dataclass(slots=True)
class JobRecord:
    """A job as the controller holds it. `request` is the validated request as JSON."""

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
        req = self.request
        hosts = sorted({a.host for a in self.attempts if a.attempt == self.attempt})
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "queue": self.queue,
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
            "definition": req.get("definition"),
        }


def attempt_id(job_id: int, attempt: int, node: int) -> str:
    """The agent-side name of one node of one attempt: `<job>.<attempt>.<node>`."""
    return f"{job_id}.{attempt}.{node}"


def parse_attempt_id(text: str) -> tuple[int, int, int]:
    job, attempt, node = text.split(".")
    return int(job), int(attempt), int(node)
