"""Row shapes of the store: what goes in (new jobs, start orders, attempt
updates) and how rows come back out as records. Kept apart from `db.py` so the
queries read without the plumbing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, Placement
from hpcbatch.core.states import JobState


@dataclass(frozen=True, slots=True)
class NewJob:
    name: str
    user: str
    uid: int
    queue: str
    request: dict[str, Any]
    submitted: float


@dataclass(frozen=True, slots=True)
class StartOrder:
    """Move one job RUNNABLE -> STARTING with a new attempt on these placements."""

    job_id: int
    attempt: int
    placements: tuple[Placement, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Transition:
    job_id: int
    ts: float
    old: str | None
    new: str
    reason: str | None


JOB_COLUMNS = (
    "id, name, user, uid, queue, state, reason, request, submitted, started, ended, "
    "exit_code, attempt, array_parent, array_index, array_size"
)
ATTEMPT_COLUMNS = (
    "job_id, attempt, node, host, cpus, memory_mb, gpus, state, created, started, ended, "
    "exit_code, signal, reason, stdout, stderr"
)


def job_from_row(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        name=row[1],
        user=row[2],
        uid=row[3],
        queue=row[4],
        state=JobState(row[5]),
        reason=row[6],
        # An array child stores no request of its own: it shares its parent's
        # (see Store._inherit), so a 10,000-child array is not 10,000 copies.
        request=json.loads(row[7]) if row[7] else {},
        submitted=row[8],
        started=row[9],
        ended=row[10],
        exit_code=row[11],
        attempt=row[12],
        array_parent=row[13],
        array_index=row[14],
        array_size=row[15],
    )


def attempt_from_row(row: sqlite3.Row | tuple[Any, ...]) -> AttemptRecord:
    return AttemptRecord(
        job_id=row[0],
        attempt=row[1],
        node=row[2],
        host=row[3],
        cpus=row[4],
        memory_mb=row[5],
        gpus=tuple(json.loads(row[6])),
        state=AttemptState(row[7]),
        created=row[8],
        started=row[9],
        ended=row[10],
        exit_code=row[11],
        signal=row[12],
        reason=row[13],
        stdout=row[14],
        stderr=row[15],
    )


@dataclass(frozen=True, slots=True)
class AttemptUpdate:
    """Set fields of one attempt row (one node of one attempt)."""

    job_id: int
    attempt: int
    node: int
    state: AttemptState
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    stdout: str | None = None
    stderr: str | None = None

    def apply(self, db: sqlite3.Connection) -> None:
        sets = ["state = ?"]
        params: list[Any] = [str(self.state)]
        for column in ("started", "ended", "exit_code", "signal", "reason", "stdout", "stderr"):
            value = getattr(self, column)
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        params += [self.job_id, self.attempt, self.node]
        db.execute(
            f"UPDATE attempts SET {', '.join(sets)} WHERE job_id = ? AND attempt = ? AND node = ?",
            params,
        )
