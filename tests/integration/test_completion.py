"""Completion's dynamic words from a real controller: your jobs' ids, hosts, queues.

The bash script is sourced into a real bash and driven through COMP_WORDS and
COMP_LINE (tests/unit/test_completion.py drives the static words).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.unit.test_completion import bash_complete, shim

pytestmark = pytest.mark.sshd


async def test_job_ids_hosts_and_queues(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    c, api = await controller_factory()
    bin_dir = shim(tmp_path / "bin")
    sock = str(c.settings.socket)

    async def tab(line: str) -> list[str]:
        return await asyncio.to_thread(bash_complete, bin_dir, f"hpcbatch --socket {sock} {line}")

    job_id = await api.submit(script="#!/bin/sh\nsleep 60\n", name="completion-test")
    try:
        assert str(job_id) in await tab("show ")
        assert str(job_id) in await tab("cancel ")
        assert await tab(f"logs {job_id}") == [str(job_id)]
        assert f"{job_id}" in await tab("submit -d afterok:")
        hosts = [h.name for h in sandbox.hosts]
        assert sorted(await tab("hosts drain ")) == sorted(hosts)
        queues = [q["name"] for q in await api("queues")]
        assert queues and sorted(await tab("submit -p ")) == sorted(queues)
        assert sorted(await tab("submit --partition=")) == sorted(queues)
        assert sorted(await tab("jobs --queue ")) == sorted(queues)
    finally:
        await api("cancel", job_ids=[job_id])
    await api.wait(job_id)
    assert str(job_id) not in await tab("show ")  # only jobs still alive are offered
