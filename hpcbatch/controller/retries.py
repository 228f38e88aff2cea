"""Retries in the controller: does a failed attempt get another?

The job's request carries its retry strategy (from a definition, or
`--retry-attempts`); `core.retry.decide` applies AWS Batch's rules. A retried
job goes back to RUNNABLE with its attempt number kept, so the next start is
attempt N+1 and the job sees it in `HPCBATCH_ATTEMPT`/`AWS_BATCH_JOB_ATTEMPT`.
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
        # A kill the controller asked for (cancel, fence); not a failure that happened to
        # the attempt on its own (`retryable`: a failed image pull, see controller/containers).
        cancelled=bool(ev.get("reason")) and not ev.get("retryable"),
    )
    if not decision.retry:
        return None
    return f"Retry: attempt {job.attempt} failed ({reason}); {decision.why}"
