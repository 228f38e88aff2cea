"""Job control decisions: begin times, holds, per-job priority, and what may be updated.

Pure functions the controller's JobService intents call before writing
anything (`hold`, `release`, `update`) and the scheduler's ordering key
(`order_key`). Standard-library only: `hpcbatch submit` parses `--begin` with
`parse_time_spec` on every run.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpcbatch.core.states import JobState
from hpcbatch.core.units import format_clock, format_duration

__all__ = [
    "HELD_ADMIN",
    "HELD_USER",
    "ControlError",
    "deadline_due",
    "deadline_reason",
    "decide_release",
    "decide_update",
    "held_reason",
    "order_key",
    "parse_time_spec",
]

HELD_USER = "JobHeldUser"
HELD_ADMIN = "JobHeldAdmin"
BEGIN = "BeginTime"
DEADLINE = "DeadLine"
MAX_NICE = 2_147_483_645  # as Slurm
MAX_PRIORITY = 1_000_000


class ControlError(ValueError):
    """A control request that is refused; the message says why."""


@dataclass(frozen=True, slots=True)
class Control:
    """A decided job-control change: the job's state, reason and hold after it, and
    (for an update) its new request, name and queue. JobService.control writes it."""

    state: JobState
    reason: str | None
    hold: str | None
    request: dict[str, Any] | None = None
    name: str | None = None
    queue: str | None = None


_UNITS = {
    "second": 1, "seconds": 1, "sec": 1, "s": 1,
    "minute": 60, "minutes": 60, "min": 60, "m": 60,
    "hour": 3600, "hours": 3600, "h": 3600,
    "day": 86400, "days": 86400, "d": 86400,
    "week": 604800, "weeks": 604800, "w": 604800,
}  # fmt: skip
_NAMED = {"midnight": (0, 0), "noon": (12, 0), "teatime": (16, 0)}


def parse_time_spec(text: str, now: float) -> float:
    """A Slurm `--begin`/`--deadline` time as epoch seconds, read in local time.

    `now`, `now+1hour`, `now+30` (seconds), `+2days`; `16:00` or `16:00:30`
    (today, tomorrow if already past); `midnight`, `noon`, `teatime`, `today`,
    `tomorrow`; `2026-12-24`, `2026-12-24T16:00[:SS]`; `MM/DD[/YY]`.
    """
    raw = text.strip()
    t = raw.lower()
    if not t:
        raise ControlError("time is empty (e.g. now+1hour, 16:00, 2026-12-24T08:00)")
    m = re.fullmatch(r"(?:now)?\s*\+\s*([0-9]{1,9})\s*([a-z]*)", t)
    if m is not None or t == "now":
        if m is None:
            return now
        unit = m.group(2) or "seconds"
        if unit not in _UNITS:
            raise ControlError(f"time {raw!r}: unknown unit {m.group(2)!r} (seconds ... weeks)")
        return now + int(m.group(1)) * _UNITS[unit]
    local = dt.datetime.fromtimestamp(now).astimezone()
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if t in ("today", "tomorrow"):
        return (midnight + dt.timedelta(days=1 if t == "tomorrow" else 0)).timestamp()
    if t in _NAMED:
        return _next_clock(local, midnight, *_NAMED[t], 0)
    m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?", t)
    if m is not None:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        _check_clock(raw, h, mi, s)
        return _next_clock(local, midnight, h, mi, s)
    m = re.fullmatch(r"([0-9]{1,2})/([0-9]{1,2})(?:/([0-9]{2}))?", t)
    if m is not None:
        year = 2000 + int(m.group(3)) if m.group(3) else local.year
        return _date(raw, year, int(m.group(1)), int(m.group(2)), local)
    m = re.fullmatch(
        r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:t([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?", t
    )
    if m is not None:
        day = _date(raw, int(m.group(1)), int(m.group(2)), int(m.group(3)), local)
        h, mi, s = int(m.group(4) or 0), int(m.group(5) or 0), int(m.group(6) or 0)
        _check_clock(raw, h, mi, s)
        return day + h * 3600 + mi * 60 + s
    raise ControlError(
        f"time {raw!r} is not understood (e.g. now+1hour, 16:00, tomorrow, 2026-12-24T08:00)"
    )


def _check_clock(raw: str, h: int, mi: int, s: int) -> None:
    if h > 23 or mi > 59 or s > 59:
        raise ControlError(f"time {raw!r} is not a time of day")


def _next_clock(local: dt.datetime, midnight: dt.datetime, h: int, mi: int, s: int) -> float:
    when = midnight.replace(hour=h, minute=mi, second=s)
    if when <= local:
        when += dt.timedelta(days=1)
    return when.timestamp()


def _date(raw: str, year: int, month: int, day: int, local: dt.datetime) -> float:
    try:
        return dt.datetime(year, month, day, tzinfo=local.tzinfo).timestamp()
    except ValueError:
        raise ControlError(f"time {raw!r} is not a date") from None


def held_reason(hold: str | None) -> str | None:
    """The pending reason of a hold (`user` or `admin`), or None."""
    if hold == "admin":
        return f"{HELD_ADMIN}: held by an administrator (hpcbatch release JOB, as an admin)"
    if hold == "user":
        return f"{HELD_USER}: held by its owner (hpcbatch release JOB)"
    return None


def decide_hold(hold: str | None, admin: bool) -> str:
    """The hold a `hold` request sets: `admin` from an administrator, else `user`."""
    if hold == "admin" and not admin:
        raise ControlError("the job is already held by an administrator")
    return "admin" if admin else "user"


def decide_release(hold: str | None, admin: bool) -> None:
    """Refuse a release that may not happen: not held, or an admin hold by a user."""
    if hold is None:
        raise ControlError("the job is not held")
    if hold == "admin" and not admin:
        raise ControlError("the job is held by an administrator; only an administrator releases it")


UPDATABLE = ("time_limit_s", "queue", "name", "array_throttle", "dependency", "priority", "nice")
WHILE_RUNNING = ("time_limit_s",)


def decide_update(
    request: Mapping[str, Any], changes: Mapping[str, Any], *, waiting: bool, admin: bool
) -> dict[str, Any]:
    """The request after `changes`, or ControlError naming the field refused.

    A waiting job may change any field of UPDATABLE; a running one only its time
    limit. Users may only lower a running job's limit (as Slurm); a negative nice
    and `priority` above the default of 0 are for administrators... except that
    an owner may lower them again.
    """
    out = dict(request)
    for key, value in changes.items():
        if key not in UPDATABLE:
            raise ControlError(f"{key} cannot be updated (only {', '.join(UPDATABLE)})")
        if not waiting and key not in WHILE_RUNNING:
            raise ControlError(f"{key} can only be updated while the job waits")
        if key == "time_limit_s" and not waiting and not admin:
            old = request.get("time_limit_s")
            if value is None or (old is not None and value > old):
                raise ControlError(
                    "a running job's time limit can only be lowered (an administrator may raise it)"
                )
        if key == "array_throttle" and request.get("array_count") is None:
            raise ControlError("array_throttle is for an array (give the array's id)")
        if key == "nice" and value is not None and value < 0 and not admin:
            raise ControlError("a negative nice is for administrators")
        out[key] = value
    return out


def order_key(priority: int, nice: int) -> tuple[int, int]:
    """A job's place within its queue: higher priority first, then lower nice, then the
    queue's own order (FIFO or fair share) among equals. Smaller sorts first."""
    return (-priority, nice)


def deadline_due(state: JobState, deadline: float, limit_s: float | None) -> float:
    """When a job with a `--deadline` is looked at again: a waiting job when it could
    no longer end by it (started then, its time limit would run past it), a started
    one at the deadline itself."""
    if state in (JobState.STARTING, JobState.RUNNING):
        return deadline
    return deadline - (limit_s or 0)


def deadline_reason(
    state: JobState, deadline: float, limit_s: float | None, now: float
) -> str | None:
    """Why a job fails on its `--deadline` now (as Slurm's DEADLINE state), or None.

    A waiting job that, started now, could not end by it fails before it starts
    (`DeadLine: it could not end by ...`, the scheduler's words too); a started
    one still running at it is ended (`DeadLine: still running at its deadline ...`).
    """
    if state.is_final:
        return None
    if state in (JobState.STARTING, JobState.RUNNING):
        if now < deadline:
            return None
        return f"DeadLine: still running at its deadline {format_clock(deadline)}"
    most = limit_s or 0
    if now + most < deadline:
        return None
    return (
        f"DeadLine: it could not end by {format_clock(deadline)} "
        f"(time limit {format_duration(int(most))})"
    )
