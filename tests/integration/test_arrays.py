"""Arrays, dependencies, fair share and cancel filters on the real sandbox; each test
on both stores (the bulk array writes and the usage reads are spelled per engine)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, until

pytestmark = pytest.mark.sshd


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


INDEX_SCRIPT = "#!/bin/sh\necho $HPCBATCH_ARRAY_INDEX $SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_COUNT\n"


async def test_throttled_array_never_runs_more_than_its_limit(
    cluster: tuple[Controller, Api],
) -> None:
    c, api = cluster
    peak = 0
    running: set[int] = set()
    queue = c.bus.subscribe()

    async def watch() -> None:
        nonlocal peak
        while True:
            event = await queue.get()
            if event is None or event.get("event") != "job":
                continue
            job = event["job"]
            if job.get("array_parent") is None:
                continue
            if job["state"] in ("STARTING", "RUNNING"):
                running.add(job["id"])
            else:
                running.discard(job["id"])
            peak = max(peak, len(running))

    watcher = asyncio.create_task(watch())
    try:
        result = await api("submit", request={"script": INDEX_SCRIPT, "array": "0-199%4"})
        parent = result["job_id"]
        assert result["array_size"] == 200
        (done,) = await api.wait(parent, timeout=240)
    finally:
        watcher.cancel()
        c.bus.unsubscribe(queue)
    assert done["state"] == "SUCCEEDED" and done["array_size"] == 200
    assert "200 SUCCEEDED" in done["reason"]
    assert 1 <= peak <= 4
    children = await api("jobs", all=True, array_parent=parent)
    assert sorted(j["array_index"] for j in children) == list(range(200))
    seventh = next(j for j in children if j["array_index"] == 7)
    assert seventh["display_id"] == f"{parent}_7"
    assert (await api.logs(seventh["id"])).split() == ["7", str(parent), "200"]


async def test_afternotok_chain_and_never_satisfied(cluster: tuple[Controller, Api]) -> None:
    _c, api = cluster
    bad = await api.submit(script="#!/bin/sh\nexit 3\n")
    rescue = await api.submit(script="#!/bin/sh\necho rescue\n", dependency=f"afternotok:{bad}")
    after_rescue = await api.submit(script="#!/bin/sh\necho next\n", dependency=f"afterok:{rescue}")
    never = await api.submit(script="#!/bin/sh\necho never\n", dependency=f"afterok:{bad}")
    jobs = {j["id"]: j for j in await api.wait(bad, rescue, after_rescue, never)}
    assert jobs[bad]["state"] == "FAILED"
    assert jobs[rescue]["state"] == "SUCCEEDED"
    assert jobs[after_rescue]["state"] == "SUCCEEDED"
    assert jobs[never]["state"] == "FAILED"
    assert str(bad) in jobs[never]["reason"] and jobs[never]["exit_code"] is None
    shown = await api("show", job_id=rescue)
    assert [t["new"] for t in shown["transitions"]][:3] == ["SUBMITTED", "PENDING", "RUNNABLE"]
    with pytest.raises(ClientError) as err:
        await api.submit(dependency="afterok:999999")
    assert "999999" in err.value.message


async def test_pending_dependency_reason_names_the_job(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    slow = await api.submit(script="#!/bin/sh\nsleep 2\n")
    waiter = await api.submit(dependency=f"afterany:{slow}")
    await until(lambda: c.jobs.live(waiter).state == "PENDING", what="pending")
    (listed,) = await api("jobs", ids=[waiter])
    assert listed["reason"].startswith("Dependency:") and str(slow) in listed["reason"]
    jobs = await api.wait(slow, waiter)
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "SUCCEEDED"]


async def test_cancel_a_whole_array_and_one_child(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    parent = (await api("submit", request={"script": "#!/bin/sh\nsleep 30\n", "array": "1-50%2"}))[
        "job_id"
    ]
    await until(
        lambda: (
            sum(j.array_parent == parent and j.state == "RUNNING" for j in c.jobs.live_jobs()) == 2
        ),
        what="two children running",
    )
    one = await api("cancel", job_ids=[f"{parent}_50"])
    assert [(r["display_id"], r["result"]) for r in one] == [(f"{parent}_50", "cancelled")]
    results = await api("cancel", job_ids=[str(parent)])
    assert len(results) == 49
    (done,) = await api.wait(parent, timeout=60)
    assert done["state"] == "FAILED" and "50 FAILED" in done["reason"]
    assert not any(j.array_parent == parent for j in c.jobs.live_jobs())


async def test_fair_share_runs_the_light_user_first(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    inventory = tmp_path / "fair.toml"
    inventory.write_text(
        sandbox.inventory.read_text()
        + '\n[[compute_environments]]\nname = "one"\nhosts = ["node1"]\n'
        + '\n[[queues]]\nname = "fair"\npriority = 5\npolicy = "FAIRSHARE"\n'
        + 'compute_environments = ["one"]\n'
    )
    c, api = await controller_factory(inventory=inventory)
    cpus = c.cluster.hosts["node1"].cpus
    assert cpus is not None
    # alice has used the cluster; bob has not.
    warm = await api(
        "submit", as_user="alice", request={"script": "#!/bin/sh\nsleep 1\n", "queue": "fair"}
    )
    await api.wait(warm["job_id"])
    blocker = await api(
        "submit",
        as_user="alice",
        request={"script": "#!/bin/sh\nsleep 2\n", "queue": "fair", "cpus": cpus},
    )
    await until(lambda: c.jobs.live(blocker["job_id"]).state == "RUNNING", what="blocker")
    order: list[str] = []
    ids = []
    for user in ("alice", "alice", "bob", "bob"):
        r = await api(
            "submit",
            as_user=user,
            request={"script": "#!/bin/sh\nsleep 0.2\n", "queue": "fair", "cpus": cpus},
        )
        ids.append(r["job_id"])
    jobs = await api.wait(*ids, timeout=60)
    order = [j["user"] for j in sorted(jobs, key=lambda j: j["started"])]
    assert order == ["bob", "bob", "alice", "alice"]
