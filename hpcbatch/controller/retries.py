"""Retries in the controller: does a failed attempt get another?

The job's request carries its retry strategy (from a definition, or
`--retry-attempts`); `core.retry.decide` applies AWS Batch's rules. A retried
job goes back to RUNNABLE with its attempt number kept, so the next start is
attempt N+1 and the job sees it in `HPCBATCH_ATTEMPT`/`AWS_BATCH_JOB_ATTEMPT`
(and `SLURM_RESTART_COUNT` = N-1).
Host failures (a host DOWN, an attempt lost with its host, a multi-node job's
node lost) go through the same rules, with the host-failure reason as the
attempt's reason.
"""

from __future__ import annotations

from typing import Any

from hpcbatch.core.records import JobRecord
from hpcbatch.core.retry import ExitRule, RetryStrategy, decide, rule_from_fields


def strategy_of(request: dict[str, Any]) -> RetryStrategy | None:
    """The retry strategy of a stored request (snake_case fields), if it has one."""
    raw = request.get("retry")
    if not raw:
        return None
    rules: list[ExitRule] = []
    for i, r in enumerate(raw.get("evaluate_on_exit") or []):
        rules.append(rule_from_fields(r, f"retry.evaluate_on_exit[{i}]"))
    return RetryStrategy(int(raw.get("attempts") or 1), tuple(rules))


def killed_on_request(ev: dict[str, Any]) -> bool:
    """Whether the attempt ended because the controller asked (cancel, fence, a gang stop).

    The agent says so (`killed`: a kill request was on file). Exit files written by
    an older agent lack it: then any given reason meant a kill, except a lost
    shepherd (the host lost the process: a host failure, which is retried).
    """
    if "killed" in ev:
        return bool(ev["killed"])
    given = ev.get("reason")
    return bool(given) and not str(given).startswith("lost")


def retry_reason(job: JobRecord, ev: dict[str, Any], reason: str) -> str | None:
    """The pending reason for another attempt after this failed one, or None to fail."""
    strategy = strategy_of(job.request)
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
        # image pull (`retryable`, see controller/containers) is a failure like any other.
        cancelled=killed_on_request(ev) and not ev.get("retryable"),
    )
    if not decision.retry:
        return None
    return f"Retry: attempt {job.attempt} failed ({reason}); {decision.why}"


def host_failure_retry(job: JobRecord, reason: str) -> str | None:
    """After a host failure (`host node3 lost: ...`): the pending reason for another
    attempt, or None to fail. As in AWS Batch, an attempt lost with its host is
    retried while attempts remain, unless a rule (e.g. `onReason: "host*"`,
    action EXIT) says otherwise. The next attempt may land on another host."""
    strategy = strategy_of(job.request)
    if strategy is None:
        return None
    decision = decide(strategy, job.attempt, reason=reason, status_reason=reason)
    if not decision.retry:
        return None
    return f"Retry: attempt {job.attempt} failed ({reason}); {decision.why}"
