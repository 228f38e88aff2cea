"""Scheduling policy through the real controller and sshd hosts (docs/scheduling.md).

Queue priority, compute-environment order, queue and compute-environment
limits, array throttles and backfill, each with the pending reason a user
reads (`QueueLimit:`, `ComputeEnvLimit:`, `Throttle:`, `Reservation:`). Every
host declares 2 CPUs so that the tests fill hosts the same way on any machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, inventory_with, job_where

pytestmark = pytest.mark.sshd

HOLD = "#!/bin/sh\nsleep 300\n"

POLICY = """
[[compute_environments]]
name = "first"
hosts = ["node2"]

[[compute_environments]]
name = "second"
hosts = ["node1"]

[[compute_environments]]
name = "three"
hosts = ["node3"]

[[compute_environments]]
name = "capped"
hosts = ["node3"]
max_vcpus = 1

[[compute_environments]]
name = "four"
hosts = ["node4"]

[[queues]]
name = "low"
priority = 1
compute_environments = ["second"]

[[queues]]
name = "ordered"
priority = 50
compute_environments = ["first", "second"]

[[queues]]
name = "high"
priority = 100
compute_environments = ["second"]

[[queues]]
name = "open"
compute_environments = ["three"]

[[queues]]
name = "cecap"
compute_environments = ["capped"]

[[queues]]
name = "qrun"
max_running = 1
compute_environments = ["four"]

[[queues]]
name = "qvcpu"
max_vcpus = 1
compute_environments = ["four"]
"""


@pytest.fixture
async def policy_cluster(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[Api]:
    inv = inventory_with(sandbox, tmp_path, POLICY, host_extra="cpus = 2", default_queue="open")
    _c, api = await controller_factory(inventory=inv)
    yield api
    await _cancel_everything(api)


async def _cancel_everything(api: Api) -> None:
    active = await api("jobs", states=["PENDING", "RUNNABLE", "STARTING", "RUNNING"])
    ids = [j["id"] for j in active]
    if ids:
        await api("cancel", job_ids=ids)
        await api.wait(*ids, timeout=30)


def running(job: dict[str, Any]) -> bool:
    return job["state"] == "RUNNING"


def waiting_with(code: str) -> Callable[[dict[str, Any]], bool]:
    return lambda job: job["state"] == "RUNNABLE" and (job["reason"] or "").startswith(code)


async def test_queue_priority_and_compute_environment_order(policy_cluster: Api) -> None:
    api = policy_cluster
    # Compute environments in the queue's order: "first" (node2) before "second"
    # (node1), although node1 comes first in the inventory.
    a = await api.submit(queue="ordered", cpus=2, script=HOLD)
    assert (await job_where(api, a, running))["hosts"] == ["node2"]
    b = await api.submit(queue="ordered", cpus=2, script=HOLD)
    assert (await job_where(api, b, running))["hosts"] == ["node1"]
    # Both node1 queues wait; the high-priority job was submitted last.
    low = await api.submit(queue="low", cpus=2, script=HOLD)
    high = await api.submit(queue="high", cpus=2, script=HOLD)
    await job_where(api, low, waiting_with("Resources:"))
    await job_where(api, high, waiting_with("Resources:"))
    await api("cancel", job_ids=[b])
    started = await job_where(api, high, running)
    assert started["hosts"] == ["node1"]
    still = await job_where(api, low, waiting_with("Resources:"))
    assert still["reason"].startswith("Resources: needs 2 CPUs on one host;"), still
    await api("cancel", job_ids=[high])
    assert (await job_where(api, low, running))["hosts"] == ["node1"]


async def test_limits_and_throttle_give_their_reasons(policy_cluster: Api) -> None:
    api = policy_cluster
    # Array throttle %1 on node3 (2 CPUs): one child runs, the others wait.
    result = await api("submit", request={"script": HOLD, "queue": "open", "array": "0-2%1"})
    parent = result["job_id"]
    children = await api("jobs", array_parent=parent, all=True)
    first, *rest = sorted(children, key=lambda j: j["array_index"])
    await job_where(api, first["id"], running)
    for child in rest:
        waited = await job_where(api, child["id"], waiting_with("Throttle:"))
        assert waited["reason"] == (
            f"Throttle: array job {parent} runs at most 1 children at once (1 running)"
        )
    # Compute environment "capped" (node3, max_vcpus 1): its first job takes node3's
    # other CPU; the second waits on the environment's cap (checked before placement).
    one = await api.submit(queue="cecap", script=HOLD)
    await job_where(api, one, running)
    two = await api.submit(queue="cecap", script=HOLD)
    capped = await job_where(api, two, waiting_with("ComputeEnvLimit:"))
    assert capped["reason"] == (
        "ComputeEnvLimit: compute environment capped is at its vCPU cap "
        "(1 of 1 in use, this job needs 1)"
    )
    # Queue limits on node4 (2 CPUs): max_running 1, then max_vcpus 1.
    r1 = await api.submit(queue="qrun", script=HOLD)
    await job_where(api, r1, running)
    r2 = await api.submit(queue="qrun", script=HOLD)
    limited = await job_where(api, r2, waiting_with("QueueLimit:"))
    assert limited["reason"] == "QueueLimit: queue qrun runs at most 1 jobs at once (1 running)"
    v1 = await api.submit(queue="qvcpu", script=HOLD)
    await job_where(api, v1, running)
    v2 = await api.submit(queue="qvcpu", script=HOLD)
    limited = await job_where(api, v2, waiting_with("QueueLimit:"))
    assert limited["reason"] == (
        "QueueLimit: queue qvcpu allows 1 vCPUs at once; 1 in use, this job needs 1"
    )
    # The limits release: the queue's running job ends, the waiting one starts.
    await api("cancel", job_ids=[r1])
    assert (await job_where(api, r2, running))["hosts"] == ["node4"]
    await api("cancel", job_ids=[first["id"]])
    await job_where(api, rest[0]["id"], running)
    await job_where(api, rest[1]["id"], waiting_with("Throttle:"))


BACKFILL = """
[[compute_environments]]
name = "pair"
hosts = ["node1", "node2"]

[[queues]]
name = "bf"
compute_environments = ["pair"]
"""


async def test_backfill_runs_a_short_job_ahead_of_a_reservation_not_a_long_one(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, BACKFILL, host_extra="cpus = 2", default_queue="bf")
    _c, api = await controller_factory(inventory=inv)
    try:
        # node1 full and node2 half full until their time limits (8 s) end them.
        r1 = await api.submit(cpus=2, time_limit_s=8, script=HOLD)
        assert (await job_where(api, r1, running))["hosts"] == ["node1"]
        r2 = await api.submit(cpus=1, time_limit_s=8, script=HOLD)
        assert (await job_where(api, r2, running))["hosts"] == ["node2"]
        # A wide job needs both hosts whole: it waits, holding the reservation.
        wide = await api.submit(nodes=2, time_limit_s=5, script="#!/bin/sh\nsleep 1\n")
        held = await job_where(api, wide, waiting_with("Resources:"))
        assert "; reserved: expected to start in " in held["reason"], held
        assert held["reason"].endswith(" on node1,node2"), held
        # A long job would fit on node2's free CPU but would delay the wide job.
        long = await api.submit(cpus=1, time_limit_s=600, script="#!/bin/sh\nsleep 1\n")
        behind = await job_where(api, long, waiting_with("Reservation:"))
        assert behind["reason"].startswith(
            f"Reservation: waiting behind the reservation for job {wide}, which starts in "
        ), behind
        assert "on node1,node2; this job would delay it" in behind["reason"], behind
        # A short one ends before the reserved start: it runs now, on node2.
        short = await api.submit(cpus=1, time_limit_s=1, script="#!/bin/sh\nsleep 0.2\n")
        (s,) = await api.wait(short, timeout=30)
        assert (s["state"], s["hosts"]) == ("SUCCEEDED", ["node2"]), s
        (w,) = await api.wait(wide, timeout=60)
        r1_done, r2_done = await api.wait(r1, r2)
        assert w["state"] == "SUCCEEDED" and w["hosts"] == ["node1", "node2"], w
        # The short job came and went before the reservation's hosts were free; the
        # wide job started as soon as they were (not delayed by the short one).
        assert s["started"] < s["ended"] <= w["started"]
        freed = max(r1_done["ended"], r2_done["ended"])
        assert freed <= w["started"] < freed + 5, (freed, w["started"])
        (lj,) = await api.wait(long, timeout=30)
        assert lj["state"] == "SUCCEEDED" and lj["started"] >= w["started"]
    finally:
        await _cancel_everything(api)
