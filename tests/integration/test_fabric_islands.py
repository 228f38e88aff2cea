"""Fabric islands on the sshd sandbox, with jobs submitted through the CLI.

The inventory puts node1 alone in island `ib-a` and node2..node4 in `ib-b`.
A multi-host job that asks for a fabric (`--fabric KIND`, or its queue's
`fabric`) gets all its hosts from one island of that kind (`ib` matches `ib-a`
and `ib-b`; `any` matches every island), the smallest that fits; without a
fabric it may span islands. A kind no island has is refused at submit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Cli, inventory_with, job_where

pytestmark = pytest.mark.sshd

ISLANDS = """
[[compute_environments]]
name = "all"
hosts = ["node[1-4]"]

[[compute_environments]]
name = "n3"
hosts = ["node3"]

[[queues]]
name = "pin3"
compute_environments = ["n3"]

[[queues]]
name = "batch"
compute_environments = ["all"]

[[queues]]
name = "mpi"
fabric = "ib"
compute_environments = ["all"]
"""

B = {"node2", "node3", "node4"}


async def test_jobs_that_ask_for_a_fabric_stay_in_one_island(
    sandbox: Sandbox, controller_factory: Callable[..., Any], tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, ISLANDS)
    text = re.sub(r'fabric = "island-[ab]"', 'fabric = "ib-b"', inv.read_text())
    inv.write_text(text.replace('fabric = "ib-b"', 'fabric = "ib-a"', 1))
    c, api = await controller_factory(inventory=inv)
    hosts = await api("hosts")
    assert {h["name"]: h["fabric"] for h in hosts} == {
        "node1": "ib-a",
        "node2": "ib-b",
        "node3": "ib-b",
        "node4": "ib-b",
    }
    cli = Cli(c, tmp_path)
    quick = "#!/bin/sh\ntrue\n"
    # One whole host with a fabric: the smallest island that fits, ib-a.
    alone = await cli.submit(quick, "--exclusive", "--fabric=any")
    # Two hosts: only ib-b has two; the queue's fabric counts as asking for one.
    pair = await cli.submit(quick, "-N", "2", "--fabric=ib")
    queued = await cli.submit(quick, "-p", "mpi", "-N", "2")
    done = await api.wait(alone, pair, queued)
    assert all(j["state"] == "SUCCEEDED" for j in done), done
    assert done[0]["hosts"] == ["node1"]
    assert set(done[1]["hosts"]) < B and len(done[1]["hosts"]) == 2
    assert set(done[2]["hosts"]) < B and len(done[2]["hosts"]) == 2
    shown = await api("show", job_id=queued)
    assert shown["request"]["fabric"] == "ib"
    # node3 busy: three hosts of one island are not free, so a fabric job waits and
    # says which island came closest; the same job without a fabric spans islands.
    hold = await cli.submit("#!/bin/sh\nsleep 300\n", "-p", "pin3")
    await job_where(api, hold, lambda j: j["state"] == "RUNNING")
    try:
        wide = await cli.submit(quick, "-N", "3", "--fabric=ib")
        waiting = await job_where(
            api, wide, lambda j: j["state"] == "RUNNABLE" and "island" in (j["reason"] or "")
        )
        assert waiting["reason"] == (
            "Resources: needs 3 whole hosts with 1 CPU each in one fabric island of kind ib; "
            "best island ib-b has 2 free, lacks 1"
        )
        spread = await cli.submit(quick, "-N", "3")
        (s,) = await api.wait(spread)
        assert s["state"] == "SUCCEEDED" and s["hosts"] == ["node1", "node2", "node4"]
        # A fabric named after an island matches that island only: ib-b has node2
        # and node4 free; ib-a (node1 alone) cannot take two, so that is refused.
        named = await cli.submit(quick, "-N", "2", "--fabric=ib-b")
        (n,) = await api.wait(named)
        assert n["state"] == "SUCCEEDED" and set(n["hosts"]) == {"node2", "node4"}
        err = await cli.refused(quick, "-N", "2", "--fabric=ib-a")
        assert "the largest island in" in err and "has 1 such hosts" in err, err
        err = await cli.refused(quick, "-N", "2", "--fabric=efa")
        assert "no host in queue batch is on a fabric island of kind efa" in err, err
    finally:
        await api("cancel", job_ids=[hold])
    (w,) = await api.wait(wide, timeout=30)
    assert w["state"] == "SUCCEEDED" and set(w["hosts"]) == B
