"""`hpcbatch run` launches tasks as srun does outside a job, through the real CLI and sandbox.

One line per task with -N/-n/--ntasks-per-node, --label, the highest task exit
code, stderr forwarded, and Ctrl-C (SIGINT) cancelling the job it started.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api, until

pytestmark = [pytest.mark.sshd]


def cli_runner(c: Controller) -> Any:
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcbatch.cli.main", *argv],
            capture_output=True, text=True, env=env, timeout=90,
        )  # fmt: skip

    return cli


async def test_run_starts_one_task_per_slot(cluster: tuple[Controller, Api]) -> None:
    c, _ = cluster
    cli = cli_runner(c)
    per_node = await asyncio.to_thread(
        cli, "run", "-N4", "sh", "-c", 'echo "$SLURM_PROCID $SLURM_NODEID $HPCBATCH_NODE_INDEX"'
    )
    assert per_node.returncode == 0, per_node.stderr
    assert sorted(per_node.stdout.splitlines()) == ["0 0 0", "1 1 1", "2 2 2", "3 3 3"]
    labelled = await asyncio.to_thread(
        cli, "run", "-N2", "-n4", "--label", "sh", "-c", 'echo "$SLURM_LOCALID/$SLURM_NTASKS"'
    )
    assert labelled.returncode == 0, labelled.stderr
    assert sorted(labelled.stdout.splitlines()) == ["0: 0/4", "1: 1/4", "2: 0/4", "3: 1/4"]
    per = await asyncio.to_thread(
        cli, "run", "-N2", "--ntasks-per-node=2", "-c", "1", "sh", "-c",
        'echo "$SLURM_NODEID $SLURM_CPUS_PER_TASK"',
    )  # fmt: skip
    assert sorted(per.stdout.splitlines()) == ["0 1"] * 2 + ["1 1"] * 2, per.stderr


async def test_run_exit_code_is_the_highest_and_stderr_comes_back(
    cluster: tuple[Controller, Api],
) -> None:
    c, _ = cluster
    cli = cli_runner(c)
    worst = await asyncio.to_thread(
        cli, "run", "-N2", "-n3", "sh", "-c", 'echo "oops $SLURM_PROCID" >&2; exit $SLURM_PROCID'
    )
    assert worst.returncode == 2
    assert sorted(x for x in worst.stderr.splitlines() if x.startswith("oops")) == [
        "oops 0", "oops 1", "oops 2"
    ]  # fmt: skip
    plain = await asyncio.to_thread(cli, "run", "sh", "-c", "echo to-err >&2; echo out")
    assert (plain.returncode, plain.stdout) == (0, "out\n")
    assert "to-err" in plain.stderr


async def test_run_forwards_its_stdin_as_srun_does(cluster: tuple[Controller, Api]) -> None:
    c, _ = cluster
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}

    def run(*argv: str, given: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "hpcbatch.cli.main", "run", *argv],
            input=given, capture_output=True, env=env, timeout=90,
        )  # fmt: skip

    # `echo hi | hpcbatch run cat`: task 0 reads it, and EOF ends cat.
    hi = await asyncio.to_thread(run, "cat", given=b"hi\n")
    assert (hi.returncode, hi.stdout) == (0, b"hi\n"), hi.stderr
    # More than the pipes and the high-water mark hold, byte for byte.
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB
    out = await asyncio.to_thread(run, "sh", "-c", "cat | sha256sum", given=big)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0].decode() == hashlib.sha256(big).hexdigest()
    # -i: task 0 (default), all, none, a task number (task 1 runs on the second node).
    lines = b"a\nb\nc\n"
    count = 'echo "$SLURM_PROCID $(wc -l)"'
    for mode, want in ((None, ["0 3", "1 0"]), ("all", ["0 3", "1 3"]),
                       ("none", ["0 0", "1 0"]), ("1", ["0 0", "1 3"])):  # fmt: skip
        opts = ["-N2", "-n2"] + (["-i", mode] if mode else [])
        got = await asyncio.to_thread(run, *opts, "sh", "-c", count, given=lines)
        assert got.returncode == 0, (mode, got.stderr)
        assert sorted(got.stdout.decode().splitlines()) == want, (mode, got.stdout)
    bad = await asyncio.to_thread(run, "-N2", "-n2", "--input=5", "cat", given=b"")
    assert bad.returncode != 0 and b"--input 5: the step has tasks 0 to 1" in bad.stderr
    bad = await asyncio.to_thread(run, "-i", "some", "cat", given=b"")
    assert bad.returncode != 0 and b"--input 'some'" in bad.stderr, bad.stderr


async def test_ctrl_c_ends_the_job_run_started(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "hpcbatch.cli.main", "run", "-N2", "sh", "-c",
         "echo started; sleep 120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip

    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    assert line == "started\n"
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(proc.communicate, None, 30)
    code = proc.returncode
    assert code == 130, err
    assert "cancelling job" in err
    jobs = await api("jobs", all=True)
    assert jobs[-1]["state"] == "FAILED", (jobs, err)
    await until(lambda: all(not h.holders for h in c.cluster.hosts.values()), what="released")


async def test_attach_streams_every_node_of_a_running_job(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    cli = cli_runner(c)
    script = (
        '#!/bin/sh\necho "start $HPCBATCH_NODE_INDEX"; sleep 2\n'
        'echo "late $HPCBATCH_NODE_INDEX"; echo "err $HPCBATCH_NODE_INDEX" >&2\n'
    )
    job_id = await api.submit(script=script, nodes=2, launch_mode="all", time_limit_s=60)
    while (shown := await api("show", job_id=job_id))["state"] != "RUNNING":
        assert shown["state"] in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING"), shown
        await asyncio.sleep(0.05)
    hosts = {a["node"]: a["host"] for a in shown["attempts"]}
    got = await asyncio.to_thread(cli, "attach", str(job_id))
    assert got.returncode == 0, got.stderr
    assert sorted(got.stdout.splitlines()) == sorted(
        f"{n} ({hosts[n]}): {word} {n}" for n in (0, 1) for word in ("start", "late")
    )
    assert sorted(x for x in got.stderr.splitlines() if " err " in x) == [
        f"{n} ({hosts[n]}): err {n}" for n in (0, 1)
    ]
