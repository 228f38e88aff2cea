"""Row shapes of the job tables: what goes in (new jobs, start orders, attempt
updates) and how rows come back out as records, each table's columns named once.

Kept apart from the tables so that the queries read without the plumbing, and
so that a second database engine reads rows into the same records.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from hpcbatch.core.exits import ExitDecision
from hpcbatch.core.jobspec import JobSpec
from hpcbatch.core.records import AttemptRecord, AttemptState, JobRecord, Placement
from hpcbatch.core.states import JobState
from hpcbatch.store.engine import column_list


@dataclass(frozen=True, slots=True)
class NewJob:
    name: str
    user: str
    uid: int
    queue: str
    request: dict[str, Any]
    submitted: float
    hold: str | None = None  # submitted held (`--hold`): `user`


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


JOB_FIELDS = (
    "id", "name", "user", "uid", "queue", "state", "reason", "request", "submitted", "started",
    "ended", "exit_code", "attempt", "array_parent", "array_index", "array_size", "hold",
)  # fmt: skip
"""The `jobs` columns a record is read from, in `SELECT` order; named as JobRecord's fields."""
JOB_COLUMNS = column_list(JOB_FIELDS)

ATTEMPT_FIELDS = (
    "job_id", "attempt", "node", "host", "cpus", "memory_mb", "gpus", "cores", "state", "created",
    "started", "ended", "exit_code", "signal", "reason", "stdout", "stderr",
    "elapsed_s", "cpu_user_s", "cpu_sys_s", "mem_peak_bytes", "gpu_util", "gpu_mem_peak_bytes",
    "usage_source",
)  # fmt: skip
"""The `attempts` columns, in `SELECT` and `INSERT` order; named as AttemptRecord's fields."""
ATTEMPT_COLUMNS = column_list(ATTEMPT_FIELDS)
ATTEMPT_OUTCOME = ATTEMPT_FIELDS[ATTEMPT_FIELDS.index("started") :]
"""What an attempt learns after it is made (NULL at insert): what an AttemptUpdate sets
besides the state."""

TRANSITION_FIELDS = ("job_id", "ts", "old", "new", "reason")
"""The `transitions` columns, in `SELECT` and `INSERT` order; named as Transition's fields."""
TRANSITION_COLUMNS = column_list(TRANSITION_FIELDS)


def request_to_json(request: dict[str, Any]) -> str:
    """A job's request as stored in `jobs.request`."""
    return json.dumps(request, separators=(",", ":"))


def request_from_json(text: str) -> dict[str, Any]:
    """A stored `jobs.request` as the record holds it."""
    return cast("dict[str, Any]", json.loads(text))


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A `jobs` row selected as JOB_COLUMNS, as a record."""
    values = dict(zip(JOB_FIELDS, row, strict=False))  # same list as the SELECT
    values["state"] = JobState(values["state"])
    # An array child stores no request of its own: it shares its parent's
    # (see JobsTable._inherit), so a 10,000-child array is not 10,000 copies.
    values["request"] = request_from_json(values["request"]) if values["request"] else {}
    return JobRecord(**values)


def attempt_from_row(row: Sequence[Any]) -> AttemptRecord:
    """An `attempts` row selected as ATTEMPT_COLUMNS, as a record."""
    values = dict(zip(ATTEMPT_FIELDS, row, strict=False))  # same list as the SELECT
    values["gpus"] = tuple(json.loads(values["gpus"]))
    values["cores"] = tuple(json.loads(values["cores"])) if values["cores"] else ()
    values["state"] = AttemptState(values["state"])
    return AttemptRecord(**values)


def new_attempt_row(
    job_id: int, attempt: int, node: int, p: Placement, ts: float
) -> tuple[Any, ...]:
    """The `attempts` row, in ATTEMPT_FIELDS order, of one node of a new attempt."""
    cores = json.dumps(list(p.cores)) if p.cores else None  # NULL: not pinned
    made = (job_id, attempt, node, p.host, p.cpus, p.memory_mb, json.dumps(list(p.gpus)), cores)
    return (*made, str(AttemptState.STARTING), ts, *(None for _ in ATTEMPT_OUTCOME))


def transition_from_row(row: Sequence[Any]) -> Transition:
    return Transition(**dict(zip(TRANSITION_FIELDS, row, strict=True)))


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
    elapsed_s: float | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    mem_peak_bytes: int | None = None
    gpu_util: float | None = None
    gpu_mem_peak_bytes: int | None = None
    usage_source: str | None = None


@dataclass(frozen=True, slots=True)
class JobWrite:
    """One job's change in a group commit (`JobsTable.write_group`): a compare-and-set of
    its state from `old` to `new` with its history row and attempt updates, or, with
    `new` None, its attempt updates alone."""

    job_id: int
    old: JobState | None = None
    new: JobState | None = None
    reason: str | None = None
    ts: float = 0.0
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    attempts: tuple[AttemptUpdate, ...] = ()


def new_record(
    job_id: int, new: NewJob, spec: JobSpec | None, state: JobState, reason: str
) -> JobRecord:
    """A new job's record; an array's children share their parent's request and spec."""
    return JobRecord(job_id, new.name, new.user, new.uid, new.queue, state, reason,
                     new.request, new.submitted, hold=new.hold, _spec=spec)  # fmt: skip


def lost_updates(attempts: Iterable[AttemptRecord], ended: float, why: str) -> list[AttemptUpdate]:
    return [
        AttemptUpdate(a.job_id, a.attempt, a.node, AttemptState.LOST, ended=ended, reason=why)
        for a in attempts
    ]


def running_write(
    a: AttemptRecord, started: float, out: str | None, err: str | None, why: str | None
) -> JobWrite:
    """A node's launch reply: its attempt RUNNING, and with `why` (all its job's nodes
    are running) the job STARTING -> RUNNING."""
    upd = AttemptUpdate(a.job_id, a.attempt, a.node, AttemptState.RUNNING, started=started,
                        stdout=out, stderr=err)  # fmt: skip
    if why is None:
        return JobWrite(a.job_id, attempts=(upd,))
    return JobWrite(a.job_id, JobState.STARTING, JobState.RUNNING, why, started,
                    started=started, attempts=(upd,))  # fmt: skip


def exit_writes(
    job: JobRecord, a: AttemptRecord, host: str, d: ExitDecision, others: list[AttemptRecord]
) -> list[JobWrite]:
    """What one node's exit writes, as `core.exits.decide_exit` decided it: STARTING ->
    RUNNING first if the exit overtook the launch reply, then its attempt row EXITED,
    with the job's new state (and its other live nodes, `others`, LOST) if it moves."""
    writes: list[JobWrite] = []
    old = job.state
    if old == JobState.STARTING and d.started:
        writes.append(JobWrite(job.id, old, JobState.RUNNING, f"running on {host}", d.started,
                               started=d.started))  # fmt: skip
        old = JobState.RUNNING
    upd = AttemptUpdate(
        job.id, a.attempt, a.node, AttemptState.EXITED, started=d.started, ended=d.ended,
        exit_code=d.exit_code, signal=d.signal, reason=d.attempt_reason, **d.usage,
    )  # fmt: skip
    if d.job_state is None:  # one node's part is done; the job goes on
        return [*writes, JobWrite(job.id, attempts=(upd,))]
    final = not d.retried
    return [*writes, JobWrite(
        job.id, old, d.job_state, d.job_reason, d.ended,
        ended=d.ended if final else None, exit_code=d.exit_code if final else None,
        attempts=(upd, *lost_updates(others, d.ended, d.others_reason)),
    )]  # fmt: skip
