"""`hpcbatch show JOB`: the request, the state history with reasons, every attempt."""

from __future__ import annotations

from typing import Any

from hpcbatch.cli.format import duration, memory, stamp, table


def render_job(job: dict[str, Any]) -> str:
    req = job.get("request") or {}
    lines = [
        f"Job {job['id']} ({job['name']})  user {job['user']}  queue {job['queue']}",
        f"  State:     {job['state']}" + (f"  ({job['reason']})" if job.get("reason") else ""),
        f"  Exit code: {job['exit_code'] if job.get('exit_code') is not None else '-'}",
        f"  Request:   {req.get('nodes', 1)} node(s), {req.get('cpus', 1)} CPUs, "
        f"{memory(req.get('memory_mb'))} memory, {req.get('gpus', 0)} GPUs, "
        f"time limit {duration(req.get('time_limit_s')) if req.get('time_limit_s') else 'none'}",
        f"  Submitted: {stamp(job.get('submitted'))}  Started: {stamp(job.get('started'))}  "
        f"Ended: {stamp(job.get('ended'))}",
    ]
    if req.get("script_path"):
        lines.append(f"  Script:    {req['script_path']}")
    if req.get("workdir"):
        lines.append(f"  Workdir:   {req['workdir']}")
    lines.append("")
    lines.append("History:")
    rows = [[stamp(t["ts"]), t["new"], t.get("reason") or ""] for t in job.get("transitions", [])]
    lines.append(table(["TIME", "STATE", "REASON"], rows))
    attempts = job.get("attempts") or []
    if attempts:
        lines.append("")
        lines.append("Attempts:")
        rows = [
            [
                a["attempt"],
                a["node"],
                a["host"],
                a["state"],
                ",".join(str(g) for g in a.get("gpus") or []) or "-",
                a["exit_code"] if a.get("exit_code") is not None else "-",
                stamp(a.get("started")),
                stamp(a.get("ended")),
                a.get("reason") or "",
            ]
            for a in attempts
        ]
        lines.append(
            table(
                ["ATTEMPT", "NODE", "HOST", "STATE", "GPUS", "EXIT", "STARTED", "ENDED", "REASON"],
                rows,
            )
        )
    return "\n".join(lines)
