"""Per-job limits and usage on the real sandbox, through real cgroups (issue 15).

The sandbox, brought up as root, delegates a cgroup subtree to its login user
(docs/accounting.md) and the agents put each attempt in a cgroup of its own.
Where the kernel gives no delegated cgroup (an ordinary user on a cgroup v1
machine, a container without cgroup access) these tests are skipped, saying
why: the hosts report `limits: not enforced` and nothing can be held.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, inventory_with, job_where

pytestmark = pytest.mark.sshd

ONE_HOST = """
[[compute_environments]]
name = "one"
hosts = ["node1"]

[[queues]]
name = "one"
compute_environments = ["one"]
"""
MB = 1024 * 1024

# Touches N MiB (a page at a time, so it is really used), then holds it a moment.
EAT = (
    "#!/usr/bin/env python3\n"
    "import sys, time\n"
    "n = int(sys.argv[1])\n"
    "x = bytearray(n << 20)\n"
    "for i in range(0, len(x), 4096):\n"
    "    x[i] = 1\n"
    "print('held', n, flush=True)\n"
    "time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)\n"
)
# Four CPU spinners for 3 s of wall time.
SPIN4 = "#!/bin/sh\nfor i in 1 2 3 4; do timeout 3 sh -c 'while :; do :; done' & done\nwait\n"
# Burns 2 s of CPU time in one process and holds 300 MiB; prints the CPU time it
# used (user + system, its own count: the truth the recorded figure is held to).
BURN = (
    "#!/usr/bin/env python3\n"
    "import os, time\n"
    "x = bytearray(300 << 20)\n"
    "for i in range(0, len(x), 4096):\n"
    "    x[i] = 1\n"
    "while time.process_time() < 2.0:\n"
    "    pass\n"
    "t = os.times()\n"
    "print(t.user + t.system)\n"
)


async def _limited_api(sandbox: Sandbox, tmp_path: Path, controller_factory: Any) -> Api:
    inv = inventory_with(sandbox, tmp_path, ONE_HOST, default_queue="one")
    _c, api = await controller_factory(inventory=inv)
    hosts = {h["name"]: h for h in await api("hosts")}
    limits = hosts["node1"]["facts"]["limits"]
    if not limits["enforced"]:
        pytest.skip(f"cgroups cannot be delegated here: {limits['why']}")
    return api


def _node_usage(shown: dict[str, Any]) -> dict[str, Any]:
    (attempt,) = shown["attempts"]
    usage = attempt["usage"]
    assert usage is not None and usage["source"] == "cgroup", attempt
    return dict(usage)


async def test_over_its_memory_ends_out_of_memory_neighbour_runs_on(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    neighbour = await api.submit(memory_mb=64, script=EAT, args=["32", "300"])
    await job_where(api, neighbour, lambda j: j["state"] == "RUNNING")
    hog = await api.submit(memory_mb=64, script=EAT, args=["400"])
    (done,) = await api.wait(hog, timeout=60)
    assert done["state"] == "FAILED", done
    assert done["reason"] == "OutOfMemory: used more than 64M on node1", done
    (still,) = await api("jobs", ids=[neighbour], all=True)
    assert still["state"] == "RUNNING", still
    await api("cancel", job_ids=[neighbour])
    (ok,) = await api.wait(neighbour, timeout=60)
    assert ok["state"] == "FAILED" and not ok["reason"].startswith("OutOfMemory"), ok
    usage = _node_usage(await api("show", job_id=hog))
    assert usage["mem_peak_bytes"] <= 64 * MB + 4 * MB


async def test_out_of_memory_is_retried_by_its_reason(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    rule = {"attempts": 2, "evaluate_on_exit": [{"on_reason": "OutOfMemory*", "action": "RETRY"}]}
    hog = await api.submit(memory_mb=64, script=EAT, args=["400"], retry=rule)
    (done,) = await api.wait(hog, timeout=60)
    assert done["state"] == "FAILED" and done["reason"].startswith("OutOfMemory"), done
    assert [a["attempt"] for a in (await api("show", job_id=hog))["attempts"]] == [1, 2]


async def test_one_cpu_spinning_four_uses_about_one_core(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    job = await api.submit(cpus=1, script=SPIN4)
    (done,) = await api.wait(job, timeout=60)
    assert done["state"] == "SUCCEEDED", done
    usage = _node_usage(await api("show", job_id=job))
    cores = (usage["cpu_user_s"] + usage["cpu_sys_s"]) / usage["elapsed_s"]
    # Unconfined, four spinners take every core of this (2+ core) machine.
    assert cores < 1.2, usage


async def test_usage_within_20_percent_of_the_truth(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    job = await api.submit(cpus=1, memory_mb=1024, script=BURN)
    (done,) = await api.wait(job, timeout=120)
    assert done["state"] == "SUCCEEDED", done
    usage = _node_usage(await api("show", job_id=job))
    cpu = usage["cpu_user_s"] + usage["cpu_sys_s"]
    truth = float(await api.logs(job))
    assert truth >= 1.9 and truth * 0.8 <= cpu <= truth * 1.2, (truth, usage)
    assert 300 * MB * 0.8 <= usage["mem_peak_bytes"] <= 300 * MB * 1.2, usage
    assert usage["elapsed_s"] >= 2.0


async def test_acct_lists_usage_and_efficiency(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    job = await api.submit(cpus=1, memory_mb=1024, script=BURN, name="burner")
    await api.wait(job, timeout=120)
    rows = await api("acct", name="burner", per_node=True)
    ids = [r["jobid"] for r in rows]
    assert ids == [str(job), f"{job}.node0"], rows
    row = rows[0]
    assert row["state"] == "SUCCEEDED" and row["nodelist"] == "node1"
    truth = float(await api.logs(job))
    assert truth * 0.8 <= row["totalcpu_s"] <= truth * 1.2 and row["reqmem_mb"] == 1024
    # efficiency is CPU time over elapsed x CPUs (its level depends on the machine's load)
    expected = 100 * row["totalcpu_s"] / (row["elapsed_s"] * row["ncpus"])
    assert row["cpueff_pct"] is not None and 0 < row["cpueff_pct"] <= 100, row
    assert abs(row["cpueff_pct"] - expected) <= 0.1, (expected, row)
    await asyncio.sleep(0)


async def test_live_usage_reaches_show_and_the_host_view(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    hold = await api.submit(cpus=1, memory_mb=512, script=EAT, args=["100", "60"])
    spin = await api.submit(cpus=1, script="#!/bin/sh\nexec sh -c 'while :; do :; done'\n")

    async def live_of(job_id: int) -> dict[str, Any]:
        for _ in range(200):
            attempts = (await api("show", job_id=job_id))["attempts"]
            live = attempts[0]["live"] if attempts else None  # not started yet: no attempt
            if live and (live["mem_bytes"] > 90 * MB if job_id == hold else live["cpus"] > 0):
                return dict(live)
            await asyncio.sleep(0.1)
        raise AssertionError(f"no live usage for job {job_id}")

    spinning = await live_of(spin)
    assert 0 < spinning["cpus"] <= 1.2, spinning  # a share of one core (busy host)
    holding = await live_of(hold)
    assert holding["mem_bytes"] >= 90 * MB, holding
    (node1,) = [h for h in await api("hosts") if h["name"] == "node1"]
    assert node1["actual"]["cpus"] > 0 and node1["actual"]["memory_mb"] >= 90, node1
    await api("cancel", job_ids=[hold, spin])
    await api.wait(hold, spin, timeout=60)


async def test_live_gpu_use_reaches_show_the_host_view_and_the_record(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    """A GPU job's GPUs as the host's nvidia-smi reports them (the sandbox's stand-in,
    told what its GPU is doing through its gpu-load file): live in `show` and in the
    host's actual use while the job runs, then the mean and peak in its usage record."""
    c, api = await controller_factory()
    job = await api.submit(queue="gpu", gpus=1, script="#!/bin/sh\nsleep 60\n")
    running = await job_where(api, job, lambda j: j["state"] == "RUNNING", timeout=60)
    host = running["hosts"][0]
    (gpu,) = (await api("show", job_id=job))["attempts"][0]["gpus"]
    loads = sandbox.host(host).bin_dir / "gpu-load"
    loads.mkdir(mode=0o755, exist_ok=True)
    (loads / str(gpu)).write_text("73 2048\n")
    try:
        for _ in range(300):
            live = (await api("show", job_id=job))["attempts"][0].get("live") or {}
            if live.get("gpu_util") == 73.0:
                break
            await asyncio.sleep(0.1)
        assert live.get("gpu_util") == 73.0 and live["gpu_mem_bytes"] == 2048 * MB, live
        (row,) = [h for h in await api("hosts") if h["name"] == host]
        assert row["actual"]["gpu_util"] == 73.0, row["actual"]
        assert row["actual"]["gpu_memory_mb"] == 2048.0, row["actual"]
        shown = await hpcbatch_show(c, job)
        assert "GPU" in shown and "73% 2.0G now" in shown, shown
    finally:
        (loads / str(gpu)).unlink()
    await api("cancel", job_ids=[job])
    await api.wait(job, timeout=60)
    used = (await api("show", job_id=job))["attempts"][0]["usage"]
    # the mean over the job's samples: 73% while loaded, 0% before it was (if sampled)
    assert 0 < used["gpu_util"] <= 73.0 and used["gpu_mem_peak_bytes"] == 2048 * MB, used


async def hpcbatch_show(c: Any, job: int) -> str:
    """`hpcbatch show JOB` as its user types it (the CLI against the test's controller)."""
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hpcbatch.cli.main", "show", str(job), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out.decode()


async def test_srun_ranks_on_other_nodes_are_in_their_nodes_cgroup(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    _c, api = await controller_factory()
    hosts = await api("hosts")
    limits = hosts[0]["facts"]["limits"]
    if not limits["enforced"]:
        pytest.skip(f"cgroups cannot be delegated here: {limits['why']}")
    script = (
        "#!/bin/sh\n"
        "srun --ntasks-per-node=1 sh -c 'echo \"$SLURM_NODEID $(grep :memory: /proc/self/cgroup)\"'"
        " | sort\n"
    )
    job = await api.submit(script=script, nodes=2, memory_mb=256, time_limit_s=60)
    (done,) = await api.wait(job, timeout=90)
    out = await api.logs(job)
    assert done["state"] == "SUCCEEDED", out
    lines = out.splitlines()
    assert len(lines) == 2, out
    for node, line in enumerate(lines):  # each rank in its own node's attempt group
        assert line.startswith(f"{node} ") and line.endswith(f"/{job}.1.{node}"), out


# Says what CPUs it was given and may use, then stays a moment so both jobs run at once.
WHERE = (
    "#!/bin/sh\n"
    'echo "$HPCBATCH_CPUS"\n'
    "grep Cpus_allowed_list /proc/self/status | cut -f2\n"
    "taskset -p $$ | sed 's/.*: //'\n"
    "grep :cpuset: /proc/self/cgroup || grep ^0:: /proc/self/cgroup\n"  # v1 cpuset, or v2
    "sleep 1\n"
)


async def test_two_one_cpu_jobs_on_one_host_get_disjoint_cpus(
    sandbox: Sandbox, tmp_path: Path, controller_factory: Any
) -> None:
    api = await _limited_api(sandbox, tmp_path, controller_factory)
    (node1,) = [h for h in await api("hosts") if h["name"] == "node1"]
    if node1["cpus"] < 2:
        pytest.skip("one CPU on this machine: nothing to split")
    jobs = [await api.submit(cpus=1, script=WHERE) for _ in range(2)]
    done = await api.wait(*jobs, timeout=60)
    assert [d["state"] for d in done] == ["SUCCEEDED", "SUCCEEDED"], done
    seen: list[set[int]] = []
    for job in jobs:
        (attempt,) = (await api("show", job_id=job))["attempts"]
        listed, allowed, mask, group = (await api.logs(job)).split()
        assert group.endswith(f"/{job}.1.0"), group  # in the attempt's cpuset
        cpus = {int(c) for c in listed.split(",")}
        assert len(attempt["cores"]) == 1 and len(cpus) == 1, (attempt, listed)
        assert allowed == listed, (allowed, listed)  # the cpuset the kernel holds it to
        assert int(mask, 16) == sum(1 << c for c in cpus), mask  # what taskset shows
        seen.append(cpus)
    assert not seen[0] & seen[1], seen
