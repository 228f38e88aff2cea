"""Usage and accounting: the OutOfMemory reason, usage kept per attempt and node,
`acct`'s rows, columns and filters, and the efficiency summary (issue 15)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.cli.acct import acct_table
from hpcbatch.core.exits import decide_exit
from hpcbatch.core.records import AttemptState, JobRecord, Placement, new_attempts
from hpcbatch.core.states import JobState
from hpcbatch.core.usage import (
    acct_rows,
    efficiency,
    parse_format,
    parse_when,
    start_of_day,
    usage_fields,
)
from hpcbatch.store.db import AttemptUpdate, NewJob, StartOrder, Store
from hpcbatch.store.url import StoreUrl

GB = 1024**3


def running_job(memory_mb: int = 1024, **request: Any) -> JobRecord:
    request = {"script": "#!/bin/sh\n", "memory_mb": memory_mb, **request}
    job = JobRecord(1, "j", "alice", 1000, "q", JobState.RUNNING, None, request, 0.0)
    job.attempt = 1
    job.attempts = new_attempts(1, 1, [Placement("node2", 8, memory_mb)], 10.0)
    job.attempts[0].state = AttemptState.RUNNING
    return job


def test_out_of_memory_reason_names_the_limit_and_the_host() -> None:
    job = running_job()
    used = {"elapsed_s": 3.0, "mem_peak_bytes": GB, "mem_limit_bytes": GB, "source": "cgroup"}
    ev = {"attempt": "1.1.0", "code": None, "signal": 9, "oom": True, "usage": used}
    d = decide_exit(job, job.attempts[0], ev, 5.0)
    assert d.job_state == JobState.FAILED
    assert d.job_reason == "OutOfMemory: used more than 1G on node2"
    assert d.usage == usage_fields(used) and d.usage["mem_peak_bytes"] == GB
    # A kill the controller asked for is not an OOM, whatever the counters said.
    killed = decide_exit(job, job.attempts[0], {**ev, "killed": True, "reason": "cancelled"}, 5)
    assert killed.job_reason == "cancelled"


def test_out_of_memory_is_matched_by_a_retry_rule() -> None:
    rule = {"attempts": 2, "evaluate_on_exit": [{"on_reason": "OutOfMemory*", "action": "RETRY"}]}
    job = running_job(retry=rule)
    ev = {"attempt": "1.1.0", "code": 137, "oom": True}
    d = decide_exit(job, job.attempts[0], ev, 5.0)
    assert d.retried and "OutOfMemory: used more than 1G on node2" in d.job_reason


def test_usage_fields_take_numbers_only() -> None:
    assert usage_fields(None) == {}
    got = usage_fields(
        {"elapsed_s": 2, "cpu_user_s": 1.5, "mem_peak_bytes": "x", "source": "rusage"}
    )
    assert got["elapsed_s"] == 2.0 and got["cpu_user_s"] == 1.5
    assert got["mem_peak_bytes"] is None and got["usage_source"] == "rusage"


def finished(job_id: int = 7, **used: Any) -> JobRecord:
    job = running_job(memory_mb=8192)
    job.id, job.state, job.started, job.ended, job.exit_code = (
        job_id,
        JobState.SUCCEEDED,
        100.0,
        200.0,
        0,
    )
    a = job.attempts[0]
    a.job_id = job_id
    a.elapsed_s, a.cpu_user_s, a.cpu_sys_s = 100.0, 170.0, 14.0
    a.mem_peak_bytes, a.usage_source = int(1.1 * GB), "cgroup"
    for k, v in used.items():
        setattr(a, k, v)
    return job


def test_acct_rows_and_efficiency_as_seff_says_it() -> None:
    (row,) = acct_rows([finished()])
    assert row["jobid"] == "7" and row["ncpus"] == 8 and row["totalcpu_s"] == 184.0
    assert row["cpueff_pct"] == 23.0 and row["memeff_pct"] == 13.7
    assert efficiency(row) == "CPU efficiency 23% of 8 cores; memory 1.1G of 8G requested (14%)"
    rows = acct_rows([finished()], per_node=True)
    assert [r["jobid"] for r in rows] == ["7", "7.node0"] and rows[1]["nodelist"] == "node2"


def test_acct_format_columns_and_table() -> None:
    cols = parse_format("JobID,State,Elapsed,TotalCPU,MaxRSS,ReqMem,CPUEff")
    out = acct_table(acct_rows([finished()]), cols, parsable=True).splitlines()
    assert out == ["JobID|State|Elapsed|TotalCPU|MaxRSS|ReqMem|CPUEff",
                   "7|SUCCEEDED|1:40|3:04|1.1G|8G|23%"]  # fmt: skip
    with pytest.raises(ValueError, match="unknown column 'bogus'"):
        parse_format("JobID,Bogus")


def test_acct_times() -> None:
    now = time.mktime((2026, 12, 7, 15, 30, 0, 0, 0, -1))
    assert parse_when("now-2days", now) == now - 2 * 86400
    assert parse_when("now-3hours", now) == now - 3 * 3600
    assert parse_when("2026-12-07", now) == start_of_day(now)
    assert parse_when("2026-12-07T15:30", now) == now
    with pytest.raises(ValueError, match="'yesterday' is not a time"):
        parse_when("yesterday", now)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A new store on each engine (the PostgreSQL server starts on first use)."""
    if request.param == "sqlite":
        url = StoreUrl.sqlite(tmp_path / "hpcbatch.db")
    else:
        url = StoreUrl.parse(request.getfixturevalue("pg_url"))
    s = await Store.open(url)
    try:
        yield s
    finally:
        await s.close()


async def test_usage_is_kept_per_attempt_and_node_and_acct_filters(store: Store) -> None:
    jobs = [NewJob(n, u, 1000, q, {"cpus": 2}, 100.0) for n, u, q in
            [("a", "alice", "q"), ("b", "bob", "q"), ("c", "alice", "r")]]  # fmt: skip
    ids = await store.jobs.insert_jobs(jobs, JobState.RUNNABLE, None)
    place = (Placement("h1", 2, 512),)
    await store.jobs.start_jobs([StartOrder(i, 1, place, "go") for i in ids], 110.0)
    for n, job_id in enumerate(ids):
        used = usage_fields({"elapsed_s": 10, "cpu_user_s": 4, "cpu_sys_s": 1,
                             "mem_peak_bytes": 100 << 20, "source": "cgroup"})  # fmt: skip
        upd = AttemptUpdate(job_id, 1, 0, AttemptState.EXITED, ended=200.0 + n, exit_code=0, **used)
        assert await store.jobs.transition(
            job_id, JobState.STARTING, JobState.SUCCEEDED, "exit code 0", 200.0 + n,
            ended=200.0 + n, exit_code=0, attempt_updates=[upd],
        )  # fmt: skip
    mine = await store.jobs.acct_jobs(user="alice", start=150.0, end=300.0)
    assert [j.name for j in mine] == ["a", "c"]
    a = mine[0].attempts[0]
    assert (a.cpu_user_s, a.cpu_sys_s, a.mem_peak_bytes, a.usage_source) == (
        4.0, 1.0, 100 << 20, "cgroup",
    )  # fmt: skip
    assert [j.name for j in await store.jobs.acct_jobs(user="alice", queue="r")] == ["c"]
    assert await store.jobs.acct_jobs(start=250.0) == []  # all ended before the window
    assert await store.jobs.acct_jobs(end=50.0) == []  # none submitted by its end
    assert len(await store.jobs.acct_jobs(states=["SUCCEEDED"])) == 3


def test_acct_rows_carry_gpu_figures_and_steps() -> None:
    from hpcbatch.store.steps import StepRow

    job = running_job(gpus=2)
    job.started, job.ended, job.state = 10.0, 20.0, JobState.SUCCEEDED
    job.attempts[0].take_usage(
        usage_fields({"elapsed_s": 10.0, "cpu_user_s": 4.0, "cpu_sys_s": 1.0, "gpu_util": 63.5,
                      "gpu_mem_peak_bytes": 3 * GB, "source": "cgroup"})
    )  # fmt: skip
    step = StepRow(1, 1, 0, "/usr/bin/python3 train.py", 2, 1, "node2", 11.0, 15.0, 0,
                   cpu_user_s=3.0, cpu_sys_s=0.5, mem_peak_bytes=GB)  # fmt: skip
    other = StepRow(1, 0, 0, "old attempt", 1, 1, "node1", 1.0, 2.0, 1)  # not this attempt's
    rows = acct_rows([job], steps={1: [step, other]})
    assert [r["jobid"] for r in rows] == ["1", "1.0"]
    assert rows[0]["gpuutil_pct"] == 63.5 and rows[0]["maxgpumem_bytes"] == 3 * GB
    s = rows[1]
    assert (s["jobname"], s["state"], s["ncpus"], s["elapsed_s"]) == (
        "python3",
        "SUCCEEDED",
        2,
        4.0,
    )
    assert s["totalcpu_s"] == 3.5 and s["maxrss_bytes"] == GB and s["nodelist"] == "node2"
    table = acct_table(rows, parse_format("JobID,GPUUtil,MaxGPUMem,TotalCPU"), parsable=True)
    assert table.splitlines()[1:] == ["1|64%|3.0G|0:05", "1.0|||0:04"]
