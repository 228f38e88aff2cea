"""Job and host states, and the only transitions allowed between them.

States are `str` enums so they serialise as themselves in SQL, JSON and logs.
The transition table is the single authority on what may follow what: the store
refuses any write that is not in it (compare-and-set on the old state), so a
race between, say, a cancel and an exit can never produce an impossible history.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life, as in AWS Batch."""

    SUBMITTED = "SUBMITTED"
    """Accepted and durable, not yet examined for dependencies."""

    PENDING = "PENDING"
    """Waiting on other jobs (dependencies); not yet eligible for resources."""

    RUNNABLE = "RUNNABLE"
    """Eligible to run, waiting for resources (or a throttle, or a disabled queue)."""

    STARTING = "STARTING"
    """Resources allocated and written down; the launch is on its way to the host(s)."""

    RUNNING = "RUNNING"
    """The host agent reported the attempt's process started."""

    SUCCEEDED = "SUCCEEDED"
    """Final: the (last) attempt exited with code 0 (until a `requeue` runs it again)."""

    FAILED = "FAILED"
    """Final: non-zero exit, signal, timeout, cancel, host failure or failed dependency."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """Holds resources on some host."""
        return self in (JobState.STARTING, JobState.RUNNING)


FINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SUBMITTED: frozenset({JobState.PENDING, JobState.RUNNABLE, JobState.FAILED}),
    JobState.PENDING: frozenset({JobState.RUNNABLE, JobState.FAILED}),
    # RUNNABLE -> PENDING is a hold (`hpcbatch hold`); dependencies are settled
    # before RUNNABLE.
    JobState.RUNNABLE: frozenset({JobState.STARTING, JobState.FAILED, JobState.PENDING}),
    # STARTING/RUNNING -> RUNNABLE is a retry (a new attempt) or a requeue; -> PENDING
    # is a requeue with a hold (`hpcbatch requeue --hold`, scontrol requeuehold).
    JobState.STARTING: frozenset(
        {JobState.RUNNING, JobState.RUNNABLE, JobState.PENDING, JobState.SUCCEEDED, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.RUNNABLE, JobState.PENDING, JobState.SUCCEEDED, JobState.FAILED}
    ),
    # Final, but for one way back: `hpcbatch requeue` of a finished job (Slurm requeues
    # completed batch jobs): to its queue again as a new attempt, held with --hold.
    JobState.SUCCEEDED: frozenset({JobState.RUNNABLE, JobState.PENDING}),
    JobState.FAILED: frozenset({JobState.RUNNABLE, JobState.PENDING}),
}


class IllegalTransition(ValueError):
    """A transition the table does not allow."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise IllegalTransition unless `old -> new` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"job state {old} cannot become {new}")


class HostState(StrEnum):
    """What the controller knows of a host, as `sinfo` would show it."""

    UNKNOWN = "UNKNOWN"
    """Listed in the inventory; no connection attempted yet."""

    CONNECTING = "CONNECTING"
    """Opening SSH, uploading or starting the agent, probing facts."""

    UP = "UP"
    """Agent connected and heartbeating; takes work unless drained."""

    UNREACHABLE = "UNREACHABLE"
    """Could not be reached (connect failure, refused key); retried with backoff.
    Jobs that were running there are kept and collected when it returns."""

    DOWN = "DOWN"
    """Given up on: silent past the heartbeat limit, or set down by an operator.
    Its attempts were failed; any still alive there are fenced when it returns."""

    POWERED_DOWN = "POWERED_DOWN"
    """An elastic host switched off on purpose (docs/elastic.md): no connection is
    tried; the scheduler counts it as capacity it may resume."""

    POWERING_UP = "POWERING_UP"
    """Its `resume_command` ran; connecting until it answers (then UP) or until
    `resume_timeout_s` (then DOWN, with the command's output as the reason)."""

    POWERING_DOWN = "POWERING_DOWN"
    """Idle past `idle_time_s`: its link is closed and `suspend_command` runs; then
    POWERED_DOWN. Takes no work."""


POWER_STATES = frozenset({HostState.POWERED_DOWN, HostState.POWERING_UP, HostState.POWERING_DOWN})
"""Host states of elastic hosts that are not (yet) connected on purpose."""


class AdminState(StrEnum):
    """The operator's wish for a host, orthogonal to reachability."""

    ACTIVE = "ACTIVE"
    """Takes new work."""

    DRAIN = "DRAIN"
    """Running work finishes; nothing new starts."""

    DOWN = "DOWN"
    """Taken out of service: its running attempts were ended as host failures
    (retried per their rules) and killed; nothing starts until `resume`."""
