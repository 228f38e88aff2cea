"""`hpcbatch show JOB`: the request, the state history with reasons, every attempt."""

from __future__ import annotations

from typing import Any

from hpcbatch.cli.format import duration, memory, stamp, table
from hpcbatch.core.text import printable
from hpcbatch.core.usage import format_bytes


def render_job(job: dict[str, Any]) -> str:
    """The job as text; every string from the store escaped (`printable`)."""
    return "\n".join(_lines(job))


def _lines(job: dict[str, Any]) -> list[str]:
    # A job of another user comes as its public row (`private`): what squeue shows.
    req = job.get("request") or job
    lines = [
        f"Job {job['id']} ({_one_line(job['name'])})  user {_one_line(job['user'])}"
        f"  queue {_one_line(job['queue'])}",
        f"  State:     {_one_line(job['state'])}"
        + (f"  ({_one_line(job['reason'])})" if job.get("reason") else ""),
    ]
    lines += [
        f"  Exit code: {job['exit_code'] if job.get('exit_code') is not None else '-'}",
        f"  Request:   {req.get('nodes', 1)} node(s), {req.get('cpus', 1)} CPUs, "
        f"{memory(req.get('memory_mb'))} memory, {req.get('gpus', 0)} GPUs, "
        f"time limit {duration(req.get('time_limit_s')) if req.get('time_limit_s') else 'none'}",
        f"  Submitted: {stamp(job.get('submitted'))}  Started: {stamp(job.get('started'))}  "
        f"Ended: {stamp(job.get('ended'))}",
    ]
    if job.get("private"):
        lines.append(
            f"  (the job of {_one_line(job['user'])}: its script, environment, output and"
            " errors are shown to them and to administrators only)"
        )
        return lines
    if req.get("script_path"):
        lines.append(f"  Script:    {_one_line(req['script_path'])}")
    if req.get("workdir"):
        lines.append(f"  Workdir:   {_one_line(req['workdir'])}")
    if req.get("tags"):
        tags = ", ".join(f"{k}={v}" for k, v in sorted(req["tags"].items()))
        lines.append(f"  Tags:      {_one_line(tags)}")
    if req.get("secrets"):  # names only: a value never leaves the controller but to the host
        refs = ", ".join(f"{k}=<secret {v}>" for k, v in sorted(req["secrets"].items()))
        lines.append(f"  Secrets:   {_one_line(refs)}")
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
    usage = [a for a in attempts if a.get("usage") or a.get("live")]
    if usage:
        lines.append("")
        lines.append("Usage:")
        heads = ["ATTEMPT", "NODE", "HOST", "CPU", "MEMORY", "ELAPSED", "SOURCE"]
        rows = [_usage_row(a) for a in usage]
        gpu = [_gpu_use(a) for a in usage]
        if any(gpu):  # GPU hosts only (nvidia-smi's figures)
            heads.insert(5, "GPU")
            rows = [[*r[:5], g or "-", *r[5:]] for r, g in zip(rows, gpu, strict=True)]
        lines.append(table(heads, rows))
    steps = job.get("steps") or []
    if steps:
        lines.append("")
        lines.append("Steps:")
        rows = [
            [
                s["id"], s["ntasks"], s["nodes"], s["node_list"],
                s["exit_code"] if s.get("exit_code") is not None else "-",
                stamp(s.get("started")), stamp(s.get("ended")), _one_line(s["command"]),
            ]
            for s in steps
        ]  # fmt: skip
        heads = ["STEP", "TASKS", "NODES", "NODELIST", "EXIT", "STARTED", "ENDED", "COMMAND"]
        lines.append(table(heads, rows))
    return lines


def _usage_row(a: dict[str, Any]) -> list[Any]:
    """Live (while it runs: cores in use, memory now) or recorded (CPU time, peak)."""
    live, used = a.get("live"), a.get("usage")
    if live and not used:
        cores = f"{live['cpus']:.2f} cores now" if "cpus" in live else "-"
        mem = format_bytes(live["mem_bytes"]) + " now" if "mem_bytes" in live else "-"
        return [a["attempt"], a["node"], a["host"], cores, mem, "-", "live"]
    assert used is not None
    cpu = (used.get("cpu_user_s") or 0) + (used.get("cpu_sys_s") or 0)
    peak = format_bytes(used.get("mem_peak_bytes")) + " peak"
    elapsed = duration(used.get("elapsed_s"))
    where = [a["attempt"], a["node"], a["host"]]
    return [*where, f"{duration(cpu)} CPU", peak, elapsed, used.get("source") or ""]


def _gpu_use(a: dict[str, Any]) -> str:
    """The attempt's GPUs: utilisation and memory now while it runs, else its mean
    utilisation and peak memory; "" where nothing was sampled (no GPUs, no nvidia-smi)."""
    live, used = a.get("live") or {}, a.get("usage")
    if not used:
        util, mem, when = live.get("gpu_util"), live.get("gpu_mem_bytes"), "now"
    else:
        util, mem, when = used.get("gpu_util"), used.get("gpu_mem_peak_bytes"), "peak"
    parts = [] if util is None else [f"{util:.0f}%" + (" avg" if used else "")]
    if mem is not None:
        parts.append(f"{format_bytes(mem)} {when}")
    return " ".join(parts)


def _one_line(value: object) -> str:
    """A stored string on one line: its newlines escaped too."""
    return printable(value)
