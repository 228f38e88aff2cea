"""What an attempt's end means: its job state, the reason shown, and what comes next.

Pure: the agent's exit record (code, signal, timed out, a reason it gave)
becomes SUCCEEDED only for exit code 0 with nothing else said; everything
else is FAILED with the words `show` and `jobs` print (`exit code 3`,
`killed by SIGKILL`, `timeout: exceeded its time limit of 1:00`, ...).
`decide_exit` adds the multi-node rules (core.gang) and the retry strategy
(core.retry): the controller's `JobService.on_exit` writes what it decides.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.core.gang import NodeExit, node_exit
from hpcbatch.core.records import AttemptRecord, JobRecord
from hpcbatch.core.retry import decide
from hpcbatch.core.states import JobState
from hpcbatch.core.units import format_duration, format_memory
from hpcbatch.core.usage import usage_fields


def oom_reason(ev: Mapping[str, Any], host: str | None, memory_mb: int | None) -> str:
    """`OutOfMemory: used more than 1G on node2` (retry rules match `OutOfMemory*`)."""
    used = ev.get("usage")
    limit = used.get("mem_limit_bytes") if isinstance(used, Mapping) else None
    mb = int(limit) // (1024 * 1024) if isinstance(limit, int) and limit > 0 else memory_mb
    size = format_memory(mb) if mb else "its memory limit"
    return f"OutOfMemory: used more than {size}" + (f" on {host}" if host else "")


def exit_reason(
    ev: Mapping[str, Any],
    time_limit_s: int | None,
    host: str | None = None,
    memory_mb: int | None = None,
) -> tuple[JobState, str]:
    code = ev.get("code")
    sig = ev.get("signal")
    given = ev.get("reason")
    if ev.get("oom") and not ev.get("killed"):
        return JobState.FAILED, oom_reason(ev, host, memory_mb)
    if ev.get("timed_out"):
        limit = format_duration(time_limit_s) if time_limit_s else "?"
        return JobState.FAILED, f"timeout: exceeded its time limit of {limit}"
    if given:
        return JobState.FAILED, str(given)
    if code == 0:
        return JobState.SUCCEEDED, "exit code 0"
    if sig:
        try:
            name = signal.Signals(int(sig)).name
        except ValueError:
            name = f"signal {sig}"
        return JobState.FAILED, f"killed by {name}"
    if code is None:
        return JobState.FAILED, "lost: no exit status"
    return JobState.FAILED, f"exit code {code}"


# --------------------------------------------------------------------------- retries
# The job's retry strategy (from a definition, or `--retry-attempts`; parsed in
# core.jobspec) goes through `core.retry.decide`, AWS Batch's rules. A retried job
# goes back to RUNNABLE with its attempt number kept, so the next start is attempt
# N+1 and the job sees it in `HPCBATCH_ATTEMPT`/`AWS_BATCH_JOB_ATTEMPT` (and
# `SLURM_RESTART_COUNT` = N-1). Host failures (a host DOWN, an attempt lost with its
# host, a multi-node job's node lost) go through the same rules, with the
# host-failure reason as the attempt's reason.


def killed_on_request(ev: Mapping[str, Any]) -> bool:
    """Whether the attempt ended because the controller asked (cancel, fence, a gang stop).

    The agent says so (`killed`: a kill request was on file). Exit files written by
    an older agent lack it: then any given reason meant a kill, except a lost
    shepherd (the host lost the process: a host failure, which is retried).
    """
    if "killed" in ev:
        return bool(ev["killed"])
    given = ev.get("reason")
    return bool(given) and not str(given).startswith("lost")


def retry_reason(job: JobRecord, ev: Mapping[str, Any], reason: str) -> str | None:
    """The pending reason for another attempt after this failed one, or None to fail."""
    strategy = job.spec.retry
    if strategy is None:
        return None
    code = ev.get("code")
    decision = decide(
        strategy,
        job.attempt,
        exit_code=int(code) if isinstance(code, int) else None,
        reason=reason,
        status_reason=reason,
        timed_out=bool(ev.get("timed_out")),
        # A kill the controller asked for (cancel, fence) is not retried; a failed
        # image pull (`retryable`, see the launcher) is a failure like any other.
        cancelled=killed_on_request(ev) and not ev.get("retryable"),
    )
    if not decision.retry:
        return None
    return f"Retry: attempt {job.attempt} failed ({reason}); {decision.why}"


MAX_REQUEUES = 5  # attempts a --requeue job gets after host failures (Slurm's MaxBatchRequeue)


def host_failure_retry(job: JobRecord, reason: str) -> str | None:
    """After a host failure (`host node3 lost: ...`): the pending reason for another
    attempt, or None to fail. As in AWS Batch, an attempt lost with its host is
    retried while attempts remain, unless a rule (e.g. `onReason: "host*"`,
    action EXIT) says otherwise. The next attempt may land on another host."""
    if job.spec.requeue is False:
        return None  # --no-requeue
    if job.spec.requeue and job.attempt < MAX_REQUEUES:
        return f"Requeue: attempt {job.attempt} failed ({reason}); --requeue gives another"
    strategy = job.spec.retry
    if strategy is None:
        return None
    decision = decide(strategy, job.attempt, reason=reason, status_reason=reason)
    if not decision.retry:
        return None
    return f"Retry: attempt {job.attempt} failed ({reason}); {decision.why}"


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """What one node's exit does to its job, decided before anything is written.

    `job_state` None: this node's part is done and the job goes on (launch mode
    `all`); RUNNABLE: the whole job gets another attempt (its other nodes are
    stopped); SUCCEEDED/FAILED: the job ends (its other nodes are stopped).
    """

    attempt_reason: str
    job_state: JobState | None
    job_reason: str
    others_reason: str
    started: float | None
    ended: float
    exit_code: int | None
    signal: int | None
    # What the node used: the attempt's usage columns (core.usage.usage_fields).
    usage: Mapping[str, Any] = field(default_factory=dict)

    @property
    def retried(self) -> bool:
        return self.job_state == JobState.RUNNABLE


def decide_exit(
    job: JobRecord, a: AttemptRecord, ev: Mapping[str, Any], now: float
) -> ExitDecision:
    """Decide what the exit event `ev` of live attempt `a` of `job` means (pure)."""
    spec = job.spec
    state, reason = exit_reason(ev, spec.time_limit_s, a.host, a.memory_mb or None)
    if a.node != spec.main_node and killed_on_request(ev) and not ev.get("retryable"):
        # A stop the controller asked for (a cancel kills every node): whichever node's
        # end comes first, the job ends for that stop's reason, not as a node failure.
        outcome = NodeExit(str(JobState.FAILED), reason)
    else:
        outcome = node_exit(spec.raw, a.node, a.host, state, reason)
    if a.node == spec.main_node:
        others = f"stopped: the main node ({a.host}) ended: {outcome.reason}"
    else:
        others = f"stopped: {outcome.reason}"
    again = retry_reason(job, ev, outcome.reason) if outcome.final == str(JobState.FAILED) else None
    if outcome.final is None:
        job_state: JobState | None = None
        job_reason = outcome.reason
    elif again is not None:
        job_state, job_reason = JobState.RUNNABLE, again
    else:
        job_state, job_reason = JobState(outcome.final), outcome.reason
    started = ev.get("started")
    return ExitDecision(
        attempt_reason=reason,
        job_state=job_state,
        job_reason=job_reason,
        others_reason=others,
        started=float(started) if started else None,
        ended=float(ev.get("ended") or now),
        exit_code=ev.get("code"),
        signal=ev.get("signal"),
        usage=usage_fields(ev["usage"] if isinstance(ev.get("usage"), Mapping) else None),
    )
