"""Fair share by share identifier with weights, on the sandbox (docs/scheduling.md).

One host with 2 CPUs declared, a FAIRSHARE queue with weights 3:1 for two share
identifiers. Many short jobs from both, submitted interleaved: over the jobs
that ran while both had work waiting, the CPU time splits about 3:1.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import inventory_with, job_where

pytestmark = pytest.mark.sshd

TAIL = """
[[compute_environments]]
name = "one"
hosts = ["node1"]

[[queues]]
name = "fair"
policy = "FAIRSHARE"
compute_environments = ["one"]
shares = { big = 3, small = 1 }
share_decay_half_life_s = 3600
"""

SHORT = "#!/bin/sh\nsleep 0.3\n"


async def run_cli(env: dict[str, str], *argv: str) -> str:
    """`hpcbatch ARGV` in a thread (the controller runs on this loop); its stdout."""
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hpcbatch.cli.main", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_weights_three_to_one_give_three_to_one_of_the_cpu_time(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, TAIL, host_extra="cpus = 2", default_queue="fair")
    c, api = await controller_factory(inventory=inv, up=1)
    ids: dict[str, list[int]] = {"big": [], "small": []}
    for _ in range(40):
        for share in ("big", "small"):
            job = await api.submit(queue="fair", share_id=share, script=SHORT, time_limit_s=5)
            ids[share].append(job)
    # Measure while both still have work waiting: stop at 40 finished jobs.
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        done = await api("jobs", states=["SUCCEEDED"], all=True)
        if len(done) >= 40:
            break
        assert asyncio.get_running_loop().time() < deadline, f"only {len(done)} finished"
        await asyncio.sleep(0.2)
    cpu = {"big": 0.0, "small": 0.0}
    for job in done:
        assert job["share_id"] in cpu, job
        cpu[job["share_id"]] += (job["ended"] - job["started"]) * job["cpus"]
    ratio = cpu["big"] / cpu["small"]
    assert 2.0 <= ratio <= 4.5, (ratio, cpu)
    # `hpcbatch shares` shows the weights and puts the one further below its share first.
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    out = await run_cli(env, "shares", "--json")
    rows = {r["share_id"]: r for r in json.loads(out)}
    assert rows["big"]["weight"] == 3 and rows["small"]["weight"] == 1
    assert rows["big"]["usage"] > rows["small"]["usage"] > 0
    assert 0 < rows["big"]["factor"] <= 1
    text = await run_cli(env, "shares")
    assert text.splitlines()[0].split()[:3] == ["QUEUE", "SHARE_ID", "WEIGHT"]
    remaining = [j for js in ids.values() for j in js]
    await api("cancel", job_ids=remaining)
    await api.wait(*remaining, timeout=60)


async def test_share_id_from_the_command_line_defaults_to_the_user(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, TAIL, host_extra="cpus = 2", default_queue="fair")
    c, api = await controller_factory(inventory=inv, up=1)
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    script = tmp_path / "j.sh"
    script.write_text("#!/bin/sh\n#SBATCH --share-id=proj-x\ntrue\n")
    with_id = int(await run_cli(env, "submit", "--parsable", str(script)))
    plain = await api.submit(queue="fair")
    jobs = {j["id"]: j for j in await api.wait(with_id, plain)}
    assert jobs[with_id]["share_id"] == "proj-x"
    assert jobs[plain]["share_id"] == jobs[plain]["user"]


LIMITED = """
[[compute_environments]]
name = "one"
hosts = ["node1"]

[[queues]]
name = "limited"
compute_environments = ["one"]
limits_per = "share"
max_running_per_user = 1
"""


async def test_limits_per_share_identifier_hold(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, LIMITED, host_extra="cpus = 2", default_queue="limited")
    _c, api = await controller_factory(inventory=inv, up=1)
    hold = "#!/bin/sh\nsleep 300\n"
    a1 = await api.submit(queue="limited", share_id="a", script=hold)
    a2 = await api.submit(queue="limited", share_id="a", script=hold)
    b1 = await api.submit(queue="limited", share_id="b", script=hold)
    await job_where(api, a1, lambda j: j["state"] == "RUNNING")
    await job_where(api, b1, lambda j: j["state"] == "RUNNING")
    waiting = await job_where(api, a2, lambda j: (j["reason"] or "").startswith("UserLimit:"))
    assert waiting["reason"] == (
        "UserLimit: share a may hold at most 1 jobs at once in queue limited "
        "(1 held, this job needs 1)"
    )
    await api("cancel", job_ids=[a1])
    await job_where(api, a2, lambda j: j["state"] == "RUNNING")
    await api("cancel", job_ids=[a2, b1])
    await api.wait(a1, a2, b1, timeout=30)
