"""What jobs used: the agent's usage record read into typed fields, and `acct`'s rows.

Pure. The agent's `exit` carries `usage` (elapsed, user and system CPU seconds,
peak memory, from the attempt's cgroup or else the kernel's accounting of the
process tree); `usage_fields` turns it into the attempt columns the store
keeps. `acct_rows` makes `hpcbatch acct`'s rows (one per job, and one per node
with `--nodes`) from job records, `efficiency` the seff-like summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from hpcbatch.core.records import AttemptRecord, JobRecord
from hpcbatch.core.units import format_duration, format_memory

MB = 1024 * 1024


def _num(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def usage_fields(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The attempt columns of an agent's `usage` record ({} when it sent none)."""
    if not raw:
        return {}
    peak = _num(raw, "mem_peak_bytes")
    gpu_peak = _num(raw, "gpu_mem_peak_bytes")
    return {
        "elapsed_s": _num(raw, "elapsed_s"),
        "cpu_user_s": _num(raw, "cpu_user_s"),
        "cpu_sys_s": _num(raw, "cpu_sys_s"),
        "mem_peak_bytes": int(peak) if peak is not None else None,
        "gpu_util": _num(raw, "gpu_util"),
        "gpu_mem_peak_bytes": int(gpu_peak) if gpu_peak is not None else None,
        "usage_source": str(raw.get("source") or "agent"),
    }


def format_bytes(n: float | None) -> str:
    """`1.1G`, `512M`, `3K`: sizes as sacct prints them; `` for unknown."""
    if n is None:
        return ""
    for suffix, unit in (("T", 1024**4), ("G", 1024**3), ("M", MB), ("K", 1024)):
        if n >= unit:
            value = n / unit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{int(n)}"


# --------------------------------------------------------------------------- acct rows

ACCT_COLUMNS: dict[str, str] = {
    "jobid": "JobID",
    "jobname": "JobName",
    "user": "User",
    "queue": "Queue",
    "state": "State",
    "submit": "Submit",
    "start": "Start",
    "end": "End",
    "elapsed": "Elapsed",
    "ncpus": "NCPUS",
    "reqmem": "ReqMem",
    "maxrss": "MaxRSS",
    "totalcpu": "TotalCPU",
    "usercpu": "UserCPU",
    "systemcpu": "SystemCPU",
    "cpueff": "CPUEff",
    "memeff": "MemEff",
    "nodelist": "NodeList",
    "exitcode": "ExitCode",
    "reason": "Reason",
    "gpuutil": "GPUUtil",
    "maxgpumem": "MaxGPUMem",
}
"""`--format` names (lower case, as sacct's are case-insensitive) -> column headers."""
DEFAULT_FORMAT = (
    "jobid", "jobname", "user", "queue", "state", "elapsed", "ncpus", "totalcpu",
    "maxrss", "reqmem", "exitcode",
)  # fmt: skip


def parse_format(text: str | None) -> tuple[str, ...]:
    """`--format=JobID,MaxRSS` -> its column keys; ValueError naming an unknown one."""
    if not text:
        return DEFAULT_FORMAT
    keys = tuple(k.strip().lower() for k in text.split(",") if k.strip())
    bad = [k for k in keys if k not in ACCT_COLUMNS]
    if bad or not keys:
        raise ValueError(
            f"--format: unknown column {bad[0] if bad else text!r} "
            f"(columns: {', '.join(ACCT_COLUMNS.values())})"
        )
    return keys


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def job_totals(job: JobRecord, attempts: Sequence[AttemptRecord]) -> dict[str, Any]:
    """A job's figures over the nodes of its attempt: sums of CPU, the largest peak."""
    user = _sum(a.cpu_user_s for a in attempts)
    system = _sum(a.cpu_sys_s for a in attempts)
    total = None if user is None and system is None else (user or 0.0) + (system or 0.0)
    elapsed = None
    if job.started is not None:
        elapsed = (job.ended or 0.0) - job.started if job.ended else None
    elapsed = elapsed if elapsed is not None else _max_f(a.elapsed_s for a in attempts)
    cpus = sum(a.cpus for a in attempts) or job.spec.cpus
    req_mb = sum(a.memory_mb for a in attempts) or (job.spec.memory_mb or 0)
    return {
        "user_s": user,
        "sys_s": system,
        "total_s": total,
        "elapsed_s": elapsed,
        "cpus": cpus,
        "mem_peak": _max(a.mem_peak_bytes for a in attempts),
        "mem_sum": _sum(float(a.mem_peak_bytes) for a in attempts if a.mem_peak_bytes),
        "req_mb": req_mb,
    }


def _max_f(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else ""


def _dur(s: float | None) -> str:
    return format_duration(round(s)) if s is not None else ""


def acct_row(job: JobRecord, attempts: Sequence[AttemptRecord], jobid: str) -> dict[str, Any]:
    """One `acct` row (JSON values) for a job, or for one node of it."""
    t = job_totals(job, attempts)
    cpu_eff = _pct(t["total_s"], (t["elapsed_s"] or 0) * t["cpus"])
    mem_eff = _pct(t["mem_sum"], t["req_mb"] * MB)
    return {
        "jobid": jobid,
        "jobname": job.name,
        "user": job.user,
        "queue": job.queue,
        "state": str(job.state),
        "submit": job.submitted,
        "start": job.started,
        "end": job.ended,
        "elapsed_s": t["elapsed_s"],
        "ncpus": t["cpus"],
        "reqmem_mb": t["req_mb"] or None,
        "maxrss_bytes": t["mem_peak"],
        "totalcpu_s": t["total_s"],
        "usercpu_s": t["user_s"],
        "systemcpu_s": t["sys_s"],
        "cpueff_pct": None if cpu_eff is None else round(cpu_eff, 1),
        "memeff_pct": None if mem_eff is None else round(mem_eff, 1),
        "nodelist": ",".join(a.host for a in attempts),
        "exitcode": job.exit_code,
        "reason": job.reason,
        # nvidia-smi's figures (GPU hosts): the nodes' mean utilisation, the largest peak.
        "gpuutil_pct": _mean(a.gpu_util for a in attempts),
        "maxgpumem_bytes": _max(a.gpu_mem_peak_bytes for a in attempts),
    }


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 1) if known else None


class StepFigures(Protocol):
    """A job step as acct reads it (the store's StepRow)."""

    @property
    def attempt(self) -> int: ...

    @property
    def step(self) -> int: ...

    @property
    def command(self) -> str: ...

    @property
    def ntasks(self) -> int: ...

    @property
    def node_list(self) -> str: ...

    @property
    def started(self) -> float: ...

    @property
    def ended(self) -> float | None: ...

    @property
    def exit_code(self) -> int | None: ...

    @property
    def cpu_user_s(self) -> float | None: ...

    @property
    def cpu_sys_s(self) -> float | None: ...

    @property
    def mem_peak_bytes(self) -> int | None: ...


def step_row(job: JobRecord, step: StepFigures) -> dict[str, Any]:
    """One `acct` row for a step, `JOB.STEP` as sacct numbers them: its program's name,
    its tasks, and what its tasks on srun's node used."""
    user, system = step.cpu_user_s, step.cpu_sys_s
    total = None if user is None and system is None else (user or 0.0) + (system or 0.0)
    state = "RUNNING" if step.ended is None else "SUCCEEDED" if step.exit_code == 0 else "FAILED"
    words = step.command.split()
    return {
        "jobid": f"{job.id}.{step.step}",
        "jobname": words[0].rsplit("/", 1)[-1] if words else "",
        "user": job.user,
        "queue": job.queue,
        "state": state,
        "submit": step.started,
        "start": step.started,
        "end": step.ended,
        "elapsed_s": None if step.ended is None else step.ended - step.started,
        "ncpus": step.ntasks,
        "reqmem_mb": None,
        "maxrss_bytes": step.mem_peak_bytes,
        "totalcpu_s": total,
        "usercpu_s": user,
        "systemcpu_s": system,
        "cpueff_pct": None,
        "memeff_pct": None,
        "nodelist": step.node_list,
        "exitcode": step.exit_code,
        "reason": None,
        "gpuutil_pct": None,
        "maxgpumem_bytes": None,
    }


def acct_rows(
    jobs: Iterable[JobRecord],
    per_node: bool = False,
    steps: Mapping[int, Sequence[StepFigures]] | None = None,
) -> list[dict[str, Any]]:
    """`acct`'s rows: one per job, with `per_node` one more per node (`ID.node`), and
    one per step of the job's current attempt in `steps` (`ID.STEP`)."""
    rows: list[dict[str, Any]] = []
    for job in jobs:
        attempts = [a for a in job.attempts if a.attempt == job.attempt]
        rows.append(acct_row(job, attempts, str(job.id)))
        if per_node and len(attempts) > 0:
            for a in sorted(attempts, key=lambda x: x.node):
                row = acct_row(job, [a], f"{job.id}.node{a.node}")
                row["elapsed_s"] = a.elapsed_s
                row["start"], row["end"] = a.started, a.ended
                rows.append(row)
        for step in (steps or {}).get(job.id, ()):
            if step.attempt == job.attempt:
                rows.append(step_row(job, step))
    return rows


def render_cell(row: Mapping[str, Any], key: str) -> str:
    """One cell of `acct`'s table, as sacct prints it."""
    value: Any
    if key in ("submit", "start", "end"):
        return _ts(row[key])
    if key == "elapsed":
        return _dur(row["elapsed_s"])
    if key in ("totalcpu", "usercpu", "systemcpu"):
        return _dur(row[f"{key}_s"])
    if key in ("maxrss", "maxgpumem"):
        return format_bytes(row[f"{key}_bytes"])
    if key == "reqmem":
        return format_memory(row["reqmem_mb"]) if row["reqmem_mb"] else ""
    if key in ("cpueff", "memeff", "gpuutil"):
        value = row[f"{key}_pct"]
        return "" if value is None else f"{value:.0f}%"
    if key == "exitcode":
        return "" if row["exitcode"] is None else str(row["exitcode"])
    value = row[key]
    return "" if value is None else str(value)


def efficiency(row: Mapping[str, Any]) -> str:
    """seff's summary of an `acct` row: `CPU efficiency 23% of 8 cores; memory 1.1G of
    8G requested (14%)`."""
    cpus = row["ncpus"]
    cpu = row["cpueff_pct"]
    cpu_text = (
        f"CPU efficiency {cpu:.0f}% of {cpus} core{'s' if cpus != 1 else ''}"
        if cpu is not None
        else "CPU efficiency unknown (no usage recorded)"
    )
    peak = format_bytes(row["maxrss_bytes"]) or "?"
    if row["reqmem_mb"]:
        mem = row["memeff_pct"]
        pct = f" ({mem:.0f}%)" if mem is not None else ""
        mem_text = f"memory {peak} of {format_memory(row['reqmem_mb'])} requested{pct}"
    else:
        mem_text = f"memory {peak} (no memory requested)"
    return f"{cpu_text}; {mem_text}"


# --------------------------------------------------------------------------- -S / -E

_UNITS_S = {"days": 86400, "day": 86400, "d": 86400, "hours": 3600, "hour": 3600, "h": 3600,
            "minutes": 60, "minute": 60, "min": 60, "m": 60, "seconds": 1, "s": 1}  # fmt: skip


def parse_when(text: str, now: float) -> float:
    """sacct's `-S`/`-E` times: `2026-12-01`, `2026-12-01T08:30[:00]`, `now`,
    `now-2days`, `now-3hours`, or a Unix time. ValueError names the value."""
    value = text.strip()
    if value == "now":
        return now
    if value.startswith("now-") or value.startswith("now+"):
        sign = -1 if value[3] == "-" else 1
        rest = value[4:]
        digits = rest.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = rest[len(digits) :] or "s"
        if digits.isdigit() and unit in _UNITS_S:
            return now + sign * int(digits) * _UNITS_S[unit]
    else:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return time.mktime(time.strptime(value, _iso_format(value)))
        except ValueError:
            pass
    raise ValueError(
        f"{text!r} is not a time: use YYYY-MM-DD[THH:MM[:SS]], now, now-2days, now-3hours"
    )


def _iso_format(value: str) -> str:
    if "T" not in value:
        return "%Y-%m-%d"
    return "%Y-%m-%dT%H:%M:%S" if value.count(":") == 2 else "%Y-%m-%dT%H:%M"


def start_of_day(now: float) -> float:
    """sacct's default `-S`: midnight, local time, of today."""
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


# --------------------------------------------------------------------------- live usage


class LiveUsage:
    """One host's running attempts as its agent's heartbeats sample them (from each
    attempt's cgroup): CPU in use (cores, from two successive samples) and memory now;
    on GPU hosts (nvidia-smi) the attempt's GPUs' mean utilisation (%) and memory in use.
    Kept in memory only; an attempt's entry goes when a heartbeat no longer lists it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}  # attempt -> (t, cpu seconds)
        self.now: dict[str, dict[str, float]] = {}  # attempt -> {cpus, mem_bytes, gpu_*, t}

    def note(self, t: float, usage: Mapping[str, Mapping[str, float]]) -> None:
        current: dict[str, dict[str, float]] = {}
        for attempt, seen in usage.items():
            entry: dict[str, float] = {"t": t}
            if "cpu_s" in seen:  # from a cgroup (a job without one has GPU figures only)
                cpu = float(seen.get("cpu_s") or 0.0)
                prev = self._last.get(attempt)
                rate = (cpu - prev[1]) / (t - prev[0]) if prev and t > prev[0] else None
                was = self.now.get(attempt, {})
                cpus = max(0.0, rate) if rate is not None else was.get("cpus", 0.0)
                entry.update(cpus=round(cpus, 3), mem_bytes=float(seen.get("mem_bytes") or 0))
                self._last[attempt] = (t, cpu)
            for key in ("gpu_util", "gpu_mem_bytes"):
                if isinstance(seen.get(key), int | float):
                    entry[key] = float(seen[key])
            current[attempt] = entry
        for gone in set(self._last) - set(usage):
            del self._last[gone]
        self.now = current

    def of(self, attempt: str) -> dict[str, float] | None:
        return self.now.get(attempt)

    def totals(self) -> dict[str, float]:
        """What the host's jobs use now: cores and memory (MB), beside the allocation; and
        where GPUs were sampled, their mean utilisation (%) and memory in use (MB)."""
        out = {
            "cpus": round(sum(v.get("cpus", 0.0) for v in self.now.values()), 2),
            "memory_mb": round(sum(v.get("mem_bytes", 0.0) for v in self.now.values()) / MB, 1),
        }
        utils = [v["gpu_util"] for v in self.now.values() if "gpu_util" in v]
        if utils:
            out["gpu_util"] = round(sum(utils) / len(utils), 1)
        mems = [v["gpu_mem_bytes"] for v in self.now.values() if "gpu_mem_bytes" in v]
        if mems:
            out["gpu_memory_mb"] = round(sum(mems) / MB, 1)
        return out
