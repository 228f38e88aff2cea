"""Steps: each srun inside a job is a step JOB.N in the store, on both store engines.

The real controller on the sandbox hosts; the job's srun reports each step to
its agent over the relay socket; `show` (the read model) lists them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api

pytestmark = [pytest.mark.sshd]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_each_srun_is_a_step_with_its_exit_code(cluster: tuple[Controller, Api]) -> None:
    """Steps JOB.0, JOB.1, JOB.2 in the store: command, tasks, nodes, times, exit codes."""
    _, api = cluster
    script = """#!/bin/sh
srun true
srun -n 3 sh -c 'exit $SLURM_PROCID'
srun -N 1 --mpi=none hostname > /dev/null
"""
    job_id = await api.submit(script=script, nodes=2, ntasks_per_node=2, time_limit_s=60)
    (summary,) = await api.wait(job_id, timeout=90)
    assert summary["state"] == "SUCCEEDED", await api.logs(job_id, "stderr")

    async def ended_steps() -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = (await api("show", job_id=job_id))["steps"]
        return steps if len(steps) == 3 and all(s["ended"] for s in steps) else []

    deadline = asyncio.get_running_loop().time() + 10
    while not (steps := await ended_steps()):
        assert asyncio.get_running_loop().time() < deadline, await api("show", job_id=job_id)
        await asyncio.sleep(0.1)
    got = [(s["id"], s["command"], s["ntasks"], s["nodes"], s["exit_code"]) for s in steps]
    assert got == [
        (f"{job_id}.0", "true", 4, 2, 0),
        (f"{job_id}.1", "sh -c 'exit $SLURM_PROCID'", 3, 2, 2),
        (f"{job_id}.2", "hostname", 4, 1, 0),  # -N 1: the job's 4 tasks on one node
    ]
    assert steps[1]["node_list"] == ",".join(summary["hosts"])
    assert all(s["started"] <= s["ended"] for s in steps)


async def test_acct_lists_each_step_with_what_it_used(cluster: tuple[Controller, Api]) -> None:
    """`acct` rows JOB.0, JOB.1 after the job's own: a step that burns 1 s of CPU (it
    prints its own count, the truth) is recorded within 20% of it."""
    _, api = cluster
    script = """#!/bin/sh
srun -n 1 python3 -c '
import os, time
while time.process_time() < 1.0:
    pass
t = os.times()
print(t.user + t.system)
'
srun -n 1 false
exit 0
"""
    job_id = await api.submit(script=script, time_limit_s=60, name="stepped")
    (summary,) = await api.wait(job_id, timeout=90)
    assert summary["state"] == "SUCCEEDED", await api.logs(job_id, "stderr")
    truth = float((await api.logs(job_id)).split()[0])

    async def rows() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = await api("acct", ids=[job_id])
        return got if len(got) == 3 and all(r["end"] for r in got[1:]) else []

    deadline = asyncio.get_running_loop().time() + 10
    while not (found := await rows()):
        assert asyncio.get_running_loop().time() < deadline, await api("acct", ids=[job_id])
        await asyncio.sleep(0.1)
    job, burn, fail = found
    assert [r["jobid"] for r in found] == [str(job_id), f"{job_id}.0", f"{job_id}.1"]
    assert (burn["jobname"], burn["state"], burn["exitcode"]) == ("python3", "SUCCEEDED", 0)
    assert truth * 0.8 <= burn["totalcpu_s"] <= truth * 1.2, (truth, burn)
    assert burn["maxrss_bytes"] > 1 << 20 and burn["nodelist"] == summary["hosts"][0]
    assert (fail["jobname"], fail["state"], fail["exitcode"]) == ("false", "FAILED", 1)
    assert job["jobname"] == "stepped"


async def test_a_steps_usage_adds_up_its_tasks_on_every_node(
    cluster: tuple[Controller, Api],
) -> None:
    """A step with a task on each of 2 nodes, each burning 1 s of CPU and printing its own
    count: the step's TotalCPU is their sum within 20% (the other node's task's figure
    comes back through the relay with its exit status)."""
    _, api = cluster
    script = """#!/bin/sh
srun -N 2 -n 2 python3 -c '
import os, time
while time.process_time() < 1.0:
    pass
t = os.times()
print(os.environ["SLURM_NODEID"], t.user + t.system)
'
"""
    job_id = await api.submit(script=script, nodes=2, time_limit_s=60)
    (summary,) = await api.wait(job_id, timeout=90)
    out = await api.logs(job_id)
    assert summary["state"] == "SUCCEEDED", (out, await api.logs(job_id, "stderr"))
    burnt = dict(line.split() for line in out.splitlines())
    assert sorted(burnt) == ["0", "1"], out
    truth = sum(float(v) for v in burnt.values())

    async def step_row() -> dict[str, Any] | None:
        got: list[dict[str, Any]] = await api("acct", ids=[job_id])
        return got[1] if len(got) == 2 and got[1]["end"] else None

    deadline = asyncio.get_running_loop().time() + 10
    while not (step := await step_row()):
        assert asyncio.get_running_loop().time() < deadline, await api("acct", ids=[job_id])
        await asyncio.sleep(0.1)
    assert step["jobid"] == f"{job_id}.0"
    assert truth * 0.8 <= step["totalcpu_s"] <= truth * 1.2, (truth, step)
    assert step["maxrss_bytes"] > 1 << 20
