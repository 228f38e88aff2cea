"""Hosts sharing one work_dir (NFS homes): each keeps its own attempts.

All four sandbox hosts get the same `work_dir`. Before the host was in the
agent's root, every agent listed every host's attempts in `hello`, so the
controller took them for the wrong host's: acknowledged, fenced, lost, run
twice. Jobs run across the hosts through two controller restarts and each
ends once, SUCCEEDED, on its first attempt.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import inventory_with, short_home

TAIL = """
[[compute_environments]]
name = "all"
hosts = ["node[1-4]"]

[[queues]]
name = "batch"
compute_environments = ["all"]
"""


async def test_two_restarts_with_a_shared_work_dir(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    shared = sandbox.host("node1").work_dir
    inventory = inventory_with(sandbox, tmp_path, TAIL)
    text = re.sub(r'(?m)^work_dir = ".*"$', f'work_dir = "{shared}"', inventory.read_text())
    inventory.write_text(text)
    gate = Path(tempfile.mkdtemp(prefix="hb-gate-"))
    os.chmod(gate, 0o777)  # the login user's jobs look for the release file here
    release = gate / "release"
    home = short_home()
    try:
        c, api = await controller_factory(inventory=inventory, home=home)
        script = f'#!/bin/sh\nwhile [ ! -e {release} ]; do sleep 0.1; done\necho "$(hostname)"\n'
        jobs = [await api.submit(script=script, cpus=1) for _ in range(8)]

        async def running_hosts(api: Any) -> dict[int, str]:
            shown = [await api("show", job_id=j) for j in jobs]
            if not all(s["state"] == "RUNNING" for s in shown):
                return {}
            return {s["id"]: s["attempts"][-1]["host"] for s in shown}

        where: dict[int, str] = {}

        async def all_running(api: Any) -> None:
            nonlocal where
            for _ in range(600):
                where = await running_hosts(api)
                if where:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("not all jobs RUNNING")

        await all_running(api)
        first = dict(where)
        assert len(set(first.values())) > 1, first  # spread over hosts sharing work_dir
        for _ in range(2):
            await c.stop()
            c, api = await controller_factory(inventory=inventory, home=home)
            await all_running(api)
            assert where == first  # no attempt taken for another host's, none lost
        release.touch()
        ends = await api.wait(*jobs)
        assert [e["state"] for e in ends] == ["SUCCEEDED"] * len(jobs), ends
        for j in jobs:
            shown = await api("show", job_id=j)
            assert len(shown["attempts"]) == 1, shown["attempts"]
        roots = sorted(p.name for p in shared.glob("c-*/*") if (p / "attempts").is_dir())
        assert set(first.values()) <= set(roots), roots  # one agent root per host
    finally:
        shutil.rmtree(gate, ignore_errors=True)
        await c.stop()
        shutil.rmtree(home, ignore_errors=True)


async def test_a_fifo_output_fails_its_job_and_the_host_stays_up(
    sandbox: Sandbox, cluster: Any
) -> None:
    c, api = cluster
    where = Path(tempfile.mkdtemp(prefix="hb-fifo-"))
    os.chmod(where, 0o777)
    fifo = where / "out.fifo"
    os.mkfifo(fifo)
    try:
        job = await api.submit(script="#!/bin/sh\necho hi\n", output=str(fifo))
        (end,) = await api.wait(job)
        assert end["state"] == "FAILED", end
        assert f"stdout path {fifo} is a FIFO, not a regular file" in end["reason"], end
        assert all(h.state == "UP" for h in c.cluster.hosts.values())
        ok = await api.submit(script="#!/bin/sh\necho fine\n")
        (end,) = await api.wait(ok)
        assert end["state"] == "SUCCEEDED" and await api.logs(ok) == "fine\n"
    finally:
        shutil.rmtree(where, ignore_errors=True)
