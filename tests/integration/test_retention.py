"""Collected logs and retention on real sshd hosts.

A queue with `log_collection = "on_exit"`: a job's output is copied to the
controller's store when it ends, so `hpcbatch logs` answers after the host's
sshd is killed and the attempt directory is gone, and a job over
`log_cap_mb` keeps its start with a note. `hpcbatch purge --before` (root is
an administrator) removes the finished jobs' records, history and collected
logs, and with `--hosts` their attempt directories on the hosts, while a
running job is left alone.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcbatch.sandbox import Sandbox, start_host, stop_host
from tests.integration.conftest import inventory_with, until

TAIL = """
[[compute_environments]]
name = "all"
hosts = ["node[1-4]"]

[[queues]]
name = "batch"
compute_environments = ["all"]
log_collection = "on_exit"

[[queues]]
name = "plain"
compute_environments = ["all"]

[retention]
log_cap_mb = 0.01
"""

JOB = "#!/bin/sh\necho out-line-1\necho err-line >&2\necho out-line-2\n"
BIG = "#!/bin/sh\nhead -c 30000 /dev/zero | tr '\\0' x\n"


def attempt_dirs(sb: Sandbox, job: int, cluster: str) -> list[Path]:
    """The job's attempt directories on every host, of this test's controller (its cluster
    id: other tests' controllers number their jobs from 1 too)."""
    return [
        p for h in sb.hosts for p in Path(h.work_dir).glob(f"c-{cluster}/{h.name}/attempts/{job}.*")
    ]


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpcbatch.cli.main", *argv],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


async def cli(socket: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The command in a thread: the controller under test runs on this loop."""
    return await asyncio.to_thread(run_cli, "--socket", str(socket), *argv)


async def test_logs_outlive_the_host_and_purge_removes_jobs_and_attempt_dirs(
    sandbox: Sandbox, controller_factory: Callable[..., Any]
) -> None:
    where = Path(tempfile.mkdtemp(prefix="hb-ret-"))
    try:
        inv = inventory_with(sandbox, where, TAIL)
        c, api = await controller_factory(inventory=inv)
        job = await api.submit(script=JOB, nodelist="node2")
        big = await api.submit(script=BIG, nodelist="node3")
        plain = await api.submit(script=JOB, queue="plain", nodelist="node3")
        ends = await api.wait(job, big, plain)
        assert [e["state"] for e in ends] == ["SUCCEEDED"] * 3, ends
        await until(lambda: c.logs.collected >= 2, what="logs collected")
        assert await c.store.logs.collected(job) and await c.store.logs.collected(big)
        assert not await c.store.logs.collected(plain)  # its queue does not collect

        # node2 crashes (its sshd and every session killed) and its attempt is gone.
        (adir,) = attempt_dirs(sandbox, job, c.store.cluster_id)
        stop_host(sandbox, "node2", kill_sessions=True)
        try:
            shutil.rmtree(adir)
            await until(lambda: c.cluster.hosts["node2"].state != "UP", what="node2 cut off")
            assert await api.logs(job) == "out-line-1\nout-line-2\n"
            assert await api.logs(job, "stderr") == "err-line\n"
            out = await cli(c.settings.socket, "logs", str(job))
            assert out.returncode == 0 and out.stdout == "out-line-1\nout-line-2\n", out
        finally:
            start_host(sandbox, "node2")
        kept = await api.logs(big)
        assert kept.startswith("x" * 10485) and "reached log_cap_mb" in kept, kept[-200:]
        assert len(kept) < 10600
        await until(lambda: c.cluster.hosts["node2"].state == "UP", timeout=30, what="node2 up")

        # Purge: every job that ended before now, and their attempt directories (acked).
        running = await api.submit(script="#!/bin/sh\nsleep 30\n", queue="plain")
        await until(lambda: (j := c.jobs.live(running)) and j.state == "RUNNING", what="running")
        await until(
            lambda: all(
                (p / "collected").exists() for p in attempt_dirs(sandbox, big, c.store.cluster_id)
            ),
            what="exits acknowledged",
        )
        assert attempt_dirs(sandbox, big, c.store.cluster_id) and attempt_dirs(
            sandbox, plain, c.store.cluster_id
        )
        refused = await cli(c.settings.socket, "purge", "--before", "nonsense")
        assert refused.returncode == 2 and "--before 'nonsense'" in refused.stderr
        done = await cli(
            c.settings.socket, "purge", "--before", str(time.time()), "--hosts", "--json"
        )
        assert done.returncode == 0, done.stderr
        assert '"jobs": 3' in done.stdout, done.stdout
        for gone in (job, big, plain):
            missing = await cli(c.settings.socket, "show", str(gone))
            assert missing.returncode != 0 and "not found" in missing.stderr
            assert not await c.store.logs.collected(gone)
        assert (
            attempt_dirs(sandbox, big, c.store.cluster_id) == []
            and attempt_dirs(sandbox, plain, c.store.cluster_id) == []
        )
        assert (await api("show", job_id=running))["state"] == "RUNNING"
        assert len(attempt_dirs(sandbox, running, c.store.cluster_id)) == 1
        await api("cancel", job_ids=[running])
    finally:
        shutil.rmtree(where, ignore_errors=True)
