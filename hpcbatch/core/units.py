"""Slurm's time and memory formats, parsed and printed.

Job scripts written for Slurm say `--time=1-12:00:00` and `--mem=4G`; hpcbatch
stores plain seconds and megabytes. This module is the one place that converts
between the two, so that `#SBATCH` directives, command-line options and what
the CLI prints all agree. It is pure and standard-library only: the CLI imports
it on every start.

Formats accepted (as Slurm's `sbatch` does):

* time: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S` (fields are whole
  numbers, not range-checked: `90` is 90 minutes, `0-36:00:00` is 36 hours);
  `0`, `-1`, `INFINITE` and `UNLIMITED` mean no limit (`None`).
* memory: a number, optionally with a decimal part, and an optional unit `K`,
  `M` (the default), `G` or `T` (powers of 1024, any case, optionally followed
  by `B` or `iB`). Results are whole megabytes, rounded up: `1K` is 1 MB.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_MEMORY_MB",
    "MAX_SECONDS",
    "UnitError",
    "format_duration",
    "format_memory",
    "parse_memory_mb",
    "parse_time",
]

MAX_SECONDS = 2**31 - 1
"""The longest time limit accepted (about 68 years); anything longer is a typo."""

MAX_MEMORY_MB = 1024**4
"""The largest memory size accepted (an exabyte); anything larger is a typo."""

_MAX_FIELD_DIGITS = 12
_UNLIMITED = frozenset({"0", "-1", "INFINITE", "UNLIMITED"})
_TIME_HINT = "(e.g. 30, 1:30:00, 2-00:00:00)"
_MEMORY_HINT = "(e.g. 4G, 512M)"

_DIGITS = rf"[0-9]{{1,{_MAX_FIELD_DIGITS}}}"
_TIME_RE = re.compile(
    rf"(?:(?P<days>{_DIGITS})-(?P<dh>{_DIGITS})(?::(?P<dm>{_DIGITS})(?::(?P<ds>{_DIGITS}))?)?"
    rf"|(?P<a>{_DIGITS})(?::(?P<b>{_DIGITS})(?::(?P<c>{_DIGITS}))?)?)"
)
_MEMORY_RE = re.compile(
    r"(?P<whole>[0-9]{0,15})(?:\.(?P<frac>[0-9]{0,6}))?(?P<unit>[KMGT](?:I?B)?)?",
    re.IGNORECASE | re.ASCII,
)
_UNIT_MB = {"K": None, "M": 1, "G": 1024, "T": 1024 * 1024}


class UnitError(ValueError):
    """A time or memory text that is not in a format Slurm (and hpcbatch) accepts."""


def parse_time(text: str) -> int | None:
    """Seconds in a Slurm `--time` value, or None for no limit.

    >>> parse_time("90"), parse_time("1:30:00"), parse_time("2-12"), parse_time("UNLIMITED")
    (5400, 5400, 216000, None)
    """
    stripped = text.strip()
    if stripped.upper() in _UNLIMITED:
        return None
    match = _TIME_RE.fullmatch(stripped)
    if match is None:
        raise UnitError(f"{text!r} is not a time {_TIME_HINT}")
    groups = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "days" in groups:
        seconds = (
            groups["days"] * 86400
            + groups["dh"] * 3600
            + groups.get("dm", 0) * 60
            + groups.get("ds", 0)
        )
    elif "c" in groups:  # hours:minutes:seconds
        seconds = groups["a"] * 3600 + groups["b"] * 60 + groups["c"]
    elif "b" in groups:  # minutes:seconds
        seconds = groups["a"] * 60 + groups["b"]
    else:  # minutes
        seconds = groups["a"] * 60
    if seconds == 0:
        return None  # as in Slurm: a zero limit is no limit
    if seconds > MAX_SECONDS:
        raise UnitError(f"{text!r} is longer than the longest time limit ({MAX_SECONDS} s)")
    return seconds


def format_duration(seconds: int | None) -> str:
    """A duration as Slurm prints it: `1-02:03:04`, `02:03:04`, `3:04`; None is UNLIMITED.

    Every result parses back to the same number of seconds with `parse_time`
    (except 0, which `parse_time` reads as no limit).
    """
    if seconds is None:
        return "UNLIMITED"
    if seconds < 0:
        raise UnitError(f"a duration cannot be negative: {seconds}")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def parse_memory_mb(text: str) -> int:
    """Megabytes in a Slurm `--mem` value (default unit M), rounded up; at least 1.

    >>> parse_memory_mb("4G"), parse_memory_mb("512"), parse_memory_mb("1.5G")
    (4096, 512, 1536)
    """
    stripped = text.strip()
    match = _MEMORY_RE.fullmatch(stripped)
    if match is None or not (match["whole"] or match["frac"]):
        raise UnitError(f"{text!r} is not a memory size {_MEMORY_HINT}")
    whole: str = match["whole"] or "0"
    frac: str = match["frac"] or ""
    unit: str = (match["unit"] or "M")[0].upper()
    scaled = int(whole + frac)  # the value times 10**len(frac)
    places: int = 10 ** len(frac)
    per_unit = _UNIT_MB[unit]
    if per_unit is None:  # kilobytes: 1024 of them per MB
        numerator, denominator = scaled, 1024 * places
    else:
        numerator, denominator = scaled * per_unit, places
    mb = -(-numerator // denominator)  # round up
    if mb == 0:
        raise UnitError(
            f"{text!r} is no memory at all (give a size; --mem=0 asks for the whole host)"
        )
    if mb > MAX_MEMORY_MB:
        raise UnitError(f"{text!r} is more than the largest memory size accepted")
    return mb


def format_memory(mb: int) -> str:
    """Megabytes in the largest unit that shows them exactly: `4G`, `1.5G`, `512M`, `2T`.

    Every result parses back to the same number with `parse_memory_mb`.
    """
    if mb < 0:
        raise UnitError(f"a memory size cannot be negative: {mb}")
    for suffix, per_unit in (("T", 1024 * 1024), ("G", 1024)):
        if mb < per_unit:
            continue
        if mb % per_unit == 0:
            return f"{mb // per_unit}{suffix}"
        for places in (1, 2):
            scaled = mb * 10**places
            if scaled % per_unit == 0:
                value = scaled // per_unit
                return f"{value // 10**places}.{value % 10**places:0{places}d}{suffix}"
    return f"{mb}M"


def format_clock(epoch: float) -> str:
    """An epoch time as local `YYYY-MM-DDTHH:MM:SS` (as Slurm shows begin times)."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))
