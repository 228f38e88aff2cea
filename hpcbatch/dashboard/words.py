"""What the dashboard writes: durations, sizes, bars, and pending reasons in plain words.

Pure functions of their arguments (the clock is passed in), so the views stay
thin and the snapshot tests are deterministic.
"""

from __future__ import annotations

import time

from hpcbatch.cli.format import duration, memory

__all__ = ["bar", "duration", "elapsed", "explain", "memory", "stamp"]

# squeue's short state codes, for narrow columns and the array counts.
SHORT = {
    "SUBMITTED": "SB",
    "PENDING": "PD",
    "RUNNABLE": "Q",
    "STARTING": "ST",
    "RUNNING": "R",
    "SUCCEEDED": "OK",
    "FAILED": "F",
}
STATE_ORDER = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"]

# The stable code before the first colon of a pending reason (see core.scheduler),
# as a sentence a person reads, and what they can do about it.
REASONS: dict[str, tuple[str, str]] = {
    "Resources": (
        "Waiting for resources: not enough is free right now.",
        "It starts when running jobs end; asking for less may start it sooner.",
    ),
    "Reservation": (
        "Held back so that it does not delay a higher-priority job that is next in line.",
        "A shorter time limit (--time) lets it backfill before that job starts.",
    ),
    "QueueDisabled": (
        "Its queue is disabled: nothing in it starts.",
        "An administrator must enable the queue (Queues view, key e).",
    ),
    "QueueUnknown": ("Its queue is not in the configuration.", "Resubmit to an existing queue."),
    "QueueLimit": (
        "Its queue already runs as many jobs or vCPUs as it may.",
        "It starts when the queue's own jobs end.",
    ),
    "ComputeEnvDisabled": (
        "Every compute environment of its queue is disabled.",
        "An administrator must enable one.",
    ),
    "ComputeEnvLimit": (
        "Every enabled compute environment of its queue is at its vCPU cap.",
        "It starts when jobs there end.",
    ),
    "Throttle": (
        "Its array already runs as many children as its %N throttle allows.",
        "The next child starts when a running one ends.",
    ),
    "Dependency": (
        "Waiting for another job (a dependency) to finish.",
        "It becomes runnable when that job ends as its dependency asks.",
    ),
}


def explain(state: str, reason: str | None) -> tuple[str, str]:
    """A waiting job's reason as (what it waits for, what can be done), in plain words."""
    if state == "SUBMITTED":
        return ("Accepted; the controller is checking its dependencies.", "")
    if state not in ("PENDING", "RUNNABLE"):
        return ("", "")
    if not reason:
        return ("Waiting for the scheduler's next pass.", "")
    code = reason.split(":", 1)[0].strip()
    if code in REASONS:
        return REASONS[code]
    return (reason, "")


def elapsed(job: dict[str, object], now: float) -> str:
    start = job.get("started")
    if not isinstance(start, int | float) or not start:
        return "0:00"
    end = job.get("ended")
    return duration((end if isinstance(end, int | float) and end else now) - start)


def limit(job: dict[str, object]) -> str:
    value = job.get("time_limit_s")
    return duration(value) if isinstance(value, int | float) and value else "-"


def stamp(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def bar(used: float, total: float, width: int) -> tuple[str, str]:
    """A usage bar `width` cells wide as (filled part, empty part)."""
    if width <= 0:
        return ("", "")
    if total <= 0:
        return ("", "·" * width)
    filled = round(width * min(max(used / total, 0.0), 1.0))
    if used > 0 and filled == 0:
        filled = 1  # something is allocated: never draw it as empty
    return ("█" * filled, "░" * (width - filled))


def counts_text(counts: dict[str, int]) -> str:
    """`R 3 · Q 90 · OK 5` in the lifecycle's order."""
    return " · ".join(f"{SHORT[s]} {counts[s]}" for s in STATE_ORDER if counts.get(s))
