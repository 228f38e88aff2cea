"""Allocation strategies and host weights through the real controller and sshd hosts.

Four sandbox hosts of 2 CPUs each; node1 and node2 are dear (weight 10), node3
and node4 cheap (weight 1). One compute environment per strategy over the four.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, inventory_with, job_where

pytestmark = pytest.mark.sshd

HOLD = "#!/bin/sh\nsleep 300\n"

TAIL = """
[[compute_environments]]
name = "packed"
hosts = ["node[1-4]"]
allocation_strategy = "BEST_FIT"

[[compute_environments]]
name = "spread"
hosts = ["node[1-4]"]
allocation_strategy = "SPREAD"

[[queues]]
name = "pack"
compute_environments = ["packed"]

[[queues]]
name = "spreadq"
compute_environments = ["spread"]
"""


def weighted(text: str, weights: dict[str, int]) -> str:
    for name, w in weights.items():
        text, n = re.subn(rf'(name = "{name}"\n)', rf"\1weight = {w}\n", text)
        assert n == 1, name
    return text


@pytest.fixture
async def weighted_cluster(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[Api]:
    inv = inventory_with(sandbox, tmp_path, TAIL, host_extra="cpus = 2", default_queue="pack")
    inv.write_text(weighted(inv.read_text(), {"node1": 10, "node2": 10, "node3": 1, "node4": 1}))
    _c, api = await controller_factory(inventory=inv)
    yield api
    active = await api("jobs", states=["PENDING", "RUNNABLE", "STARTING", "RUNNING"])
    if active:
        await api("cancel", job_ids=[j["id"] for j in active])
        await api.wait(*[j["id"] for j in active], timeout=30)


def running(job: dict[str, Any]) -> bool:
    return job["state"] == "RUNNING"


async def hosts_of(api: Api, ids: list[int]) -> list[str]:
    return [(await job_where(api, i, running))["hosts"][0] for i in ids]


async def test_best_fit_fills_cheap_hosts_first_and_packs(weighted_cluster: Api) -> None:
    api = weighted_cluster
    ids = [await api.submit(queue="pack", cpus=1, script=HOLD) for _ in range(4)]
    got = await hosts_of(api, ids)
    # Packed: two per cheap host before any dear host is used.
    assert sorted(got) == ["node3", "node3", "node4", "node4"], got
    dear = await api.submit(queue="pack", cpus=1, script=HOLD)
    assert (await hosts_of(api, [dear]))[0] in {"node1", "node2"}


async def test_spread_puts_one_job_per_cheap_host_first(weighted_cluster: Api) -> None:
    api = weighted_cluster
    ids = [await api.submit(queue="spreadq", cpus=1, script=HOLD) for _ in range(2)]
    got = await hosts_of(api, ids)
    assert sorted(got) == ["node3", "node4"], got
