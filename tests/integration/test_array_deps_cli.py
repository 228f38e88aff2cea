"""Array dependencies (N_TO_N, SEQUENTIAL) and `singleton`, submitted with the CLI.

Each job is submitted as a user would (`hpcbatch submit --array ... --dependency ...`)
to a real controller on the sshd sandbox; the order in which jobs ran is read
back from their start and end times.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api, Cli, job_where

pytestmark = pytest.mark.sshd


async def children(api: Api, parent: int) -> list[dict[str, Any]]:
    jobs = await api("jobs", array_parent=parent, all=True)
    return sorted(jobs, key=lambda j: j["array_index"])


async def test_n_to_n_and_sequential_arrays(
    cluster: tuple[Controller, Api], tmp_path: Path
) -> None:
    c, api = cluster
    cli = Cli(c, tmp_path)
    # A: child 0 is slow, child 1 fails, child 2 is quick.
    by_index = "case $HPCBATCH_ARRAY_INDEX in 0) sleep 4 ;; 1) exit 1 ;; 2) sleep 0.3 ;; esac"
    a = await cli.submit(f"#!/bin/sh\n{by_index}\n", "--array=0-2")
    b = await cli.submit("#!/bin/sh\ntrue\n", "--array=0-2", f"--dependency=aftercorr:{a}")
    a0, a1, a2 = await children(api, a)
    b0, b1, b2 = await children(api, b)
    first = await job_where(api, b0["id"], lambda j: j["state"] == "PENDING" and j["reason"])
    assert first["reason"].startswith(f"Dependency: waits for job {a}_0 (n_to_n:{a}_0;"), first
    await api.wait(a)
    b0, b1, b2 = await api.wait(b0["id"], b1["id"], b2["id"])
    a0, a1, a2 = await api.wait(a0["id"], a1["id"], a2["id"])
    # Child i waited for child i of A only: B_2 ran while A_0 still ran.
    assert [j["state"] for j in (b0, b1, b2)] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert b0["started"] >= a0["ended"] and b2["started"] >= a2["ended"]
    assert b2["ended"] < a0["ended"], "B_2 waited for more than A_2"
    assert b1["reason"] == (
        f"DependencyNeverSatisfied: dependency n_to_n:{a}_1 can never be met: job {a}_1 FAILED"
    )
    # SEQUENTIAL: each child after the one before it, although CPUs are free.
    s = await cli.submit("#!/bin/sh\nsleep 0.5\n", "--array=0-2", "--dependency=sequential")
    _s0, s1, _s2 = await children(api, s)
    waiting = await job_where(api, s1["id"], lambda j: j["state"] == "PENDING" and j["reason"])
    assert waiting["reason"].startswith(
        f"Dependency: waits for job {s}_0 (sequential (after {s}_0);"
    ), waiting
    done = await api.wait(*[j["id"] for j in await children(api, s)])
    assert all(j["state"] == "SUCCEEDED" for j in done)
    for before, after in itertools.pairwise(done):
        assert after["started"] >= before["ended"], (before, after)


async def test_singleton_runs_one_job_of_a_name_at_a_time(
    cluster: tuple[Controller, Api], tmp_path: Path
) -> None:
    c, api = cluster
    cli = Cli(c, tmp_path)
    script = "#!/bin/sh\nsleep 3\n"
    one = await cli.submit(script, "-J", "solo", "--dependency=singleton")
    other = await cli.submit(script, "-J", "other", "--dependency=singleton")
    two = await cli.submit(script, "-J", "solo", "--dependency=singleton")
    waiting = await job_where(api, two, lambda j: j["state"] == "PENDING" and j["reason"])
    assert waiting["reason"] == (
        f"Dependency: singleton: job {one} with the same name and user has not ended"
    )
    j1, j2, j3 = await api.wait(one, two, other)
    assert all(j["state"] == "SUCCEEDED" for j in (j1, j2, j3))
    assert j2["started"] >= j1["ended"]
    assert j3["started"] < j1["ended"], "a job of another name waited for the singleton"
