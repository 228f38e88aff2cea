"""Plain-text tables and durations for the CLI, squeue/sinfo style. Stdlib only."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hpcbatch.core.arrays import format_spec
from hpcbatch.core.text import printable


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers, each cell escaped: cells come from other users' input."""
    cells = [[str(h) for h in headers]]
    cells += [["" if c is None else printable(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{s:02d}"
    return f"{minutes}:{s:02d}"


def elapsed(job: dict[str, Any], now: float | None = None) -> str:
    start = job.get("started")
    if not start:
        return "0:00"
    end = job.get("ended") or (now or time.time())
    return duration(end - start)


def stamp(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def memory(mb: int | None) -> str:
    if not mb:
        return "-"
    if mb >= 1024 and mb % 1024 == 0:
        return f"{mb // 1024}G"
    if mb >= 1024:
        return f"{mb / 1024:.1f}G"
    return f"{mb}M"


def collapse_arrays(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fold waiting children of one array with one reason into one row, as squeue does."""
    out: list[dict[str, Any]] = []
    for j in jobs:
        prev = out[-1] if out else None
        if (
            prev is not None
            and j.get("array_parent") is not None
            and j["state"] in ("PENDING", "RUNNABLE")
            and prev.get("array_parent") == j["array_parent"]
            and prev["state"] == j["state"]
            and prev.get("reason") == j.get("reason")
        ):
            prev.setdefault("_indices", [prev["array_index"]]).append(j["array_index"])
            continue
        out.append(dict(j))
    for row in out:
        if "_indices" in row:
            row["display_id"] = f"{row['array_parent']}_[{format_spec(row.pop('_indices'))}]"
    return out


def jobs_table(jobs: Sequence[dict[str, Any]], long: bool = False) -> str:
    """squeue's table; `long`: with the priority the scheduler sees (sprio): the
    queue's priority, the job's priority and nice, and in a fair-share queue its
    share identifier's factor (1.0 unused, 0.5 on its share, lower over it)."""
    now = time.time()
    rows = []
    for j in collapse_arrays(jobs):
        where = ",".join(j.get("hosts") or [])
        state = j["state"]
        detail = where if state in ("STARTING", "RUNNING") else (j.get("reason") or "")
        if state in ("SUCCEEDED", "FAILED"):
            detail = j.get("reason") or ""
        row = [
            j.get("display_id") or j["id"],
            j["name"][:24],
            j["user"],
            j["queue"],
            state,
            j.get("nodes", 1),
            elapsed(j, now),
            duration(j.get("time_limit_s")) if j.get("time_limit_s") else "-",
        ]
        if long:
            factor = j.get("share_factor")
            row += [
                _dash(j.get("queue_priority")),
                _dash(j.get("priority")),
                _dash(j.get("nice")),
                "-" if factor is None else f"{factor:.3f}",
            ]
        rows.append([*row, detail])
    head = ["JOBID", "NAME", "USER", "QUEUE", "STATE", "NODES", "TIME", "LIMIT"]
    if long:
        head += ["QPRIO", "PRIO", "NICE", "FAIRSHARE"]
    return table([*head, "NODELIST(REASON)"], rows)


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _host_reason(h: dict[str, Any]) -> str:
    """The host's reason, and `limits: not enforced` where jobs run unconfined."""
    reason = h.get("admin_reason") or h.get("reason") or ""
    limits = (h.get("facts") or {}).get("limits")
    if limits and not limits.get("enforced"):
        reason = f"{reason}; limits: not enforced" if reason else "limits: not enforced"
    return str(reason)


def hosts_table(hosts: Sequence[dict[str, Any]]) -> str:
    rows = []
    for h in hosts:
        state = h["state"].lower()
        if h.get("admin") == "DOWN":
            state = "down"
        elif h.get("admin") == "DRAIN":
            state = "drain" if not h.get("jobs") else "draining"
        elif h["state"] == "UP":
            state = (
                "alloc"
                if h.get("alloc_cpus") and h["alloc_cpus"] >= (h.get("cpus") or 0)
                else ("mix" if h.get("alloc_cpus") else "idle")
            )
        gpus = h.get("gpus") or []
        labels = ",".join(f"{k}={v}" for k, v in sorted((h.get("labels") or {}).items()))
        rows.append(
            [
                h["name"],
                state,
                f"{h.get('alloc_cpus', 0)}/{h['cpus'] if h.get('cpus') is not None else '?'}",
                f"{memory(h.get('alloc_memory_mb'))}/{memory(h.get('memory_mb'))}",
                f"{len(h.get('alloc_gpus') or [])}/{len(gpus)}",
                h.get("fabric") or "-",
                # Whose account jobs run under: one login for all (single-tenant), or each
                # job's submitter (multi-user); docs/security.md.
                "multi-user" if h.get("run_as") == "submitter" else "single",
                labels or "-",
                _host_reason(h),
            ]
        )
    return table(
        ["HOST", "STATE", "CPUS(A/T)", "MEM(A/T)", "GPUS(A/T)", "FABRIC", "TENANCY", "LABELS",
         "REASON"],
        rows,
    )  # fmt: skip


def queues_table(queues: list[dict[str, Any]]) -> str:
    """`hpcbatch queues`: priority, state, compute environments, hosts, jobs by state."""
    rows = [
        [
            q["name"] + ("*" if q["default"] else ""),
            q["priority"],
            q["state"],
            ",".join(q["compute_environments"]),
            len(q["hosts"]),
            " ".join(f"{k}={v}" for k, v in sorted(q["counts"].items())) or "-",
        ]
        for q in queues
    ]
    return table(["QUEUE", "PRIORITY", "STATE", "COMPUTE_ENVS", "HOSTS", "JOBS"], rows)


def shares_table(shares: list[dict[str, Any]]) -> str:
    """`hpcbatch shares` (sshare-like): each share identifier's weight, usage, factor."""
    rows = [
        [
            s["queue"],
            s["share_id"],
            f"{s['weight']:g}",
            f"{s['norm_shares']:.3f}",
            f"{s['usage'] / 3600:.2f}",
            f"{s['norm_usage']:.3f}",
            f"{s['factor']:.3f}",
            " ".join(f"{k}={v}" for k, v in sorted(s["jobs"].items())) or "-",
        ]
        for s in shares
    ]
    heads = ["QUEUE", "SHARE_ID", "WEIGHT", "NORM_SHARES", "CPU_HOURS", "NORM_USAGE", "FACTOR"]
    return table([*heads, "JOBS"], rows)
