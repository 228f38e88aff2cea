"""Real faults on the sandbox: hosts down at start, sshd killed mid-job, controller SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import Client, ClientError
from hpcbatch.controller.app import Controller
from hpcbatch.sandbox import Sandbox, start_host, stop_host
from tests.integration.conftest import short_home, until
from tests.integration.faults import signal_sshd

pytestmark = pytest.mark.sshd


def kill_sshd(sb: Sandbox, name: str) -> None:
    """SIGKILL the host's sshd: the listener and every per-connection sshd under it.

    Only processes whose command is sshd die; what ran in the sessions gets the
    hang-up a real sshd crash gives it. Detached jobs must survive this.
    """
    signal_sshd(sb, name, signal.SIGKILL)


async def test_unreachable_host_at_start_joins_later(
    sandbox: Sandbox, controller_factory: Any
) -> None:
    stop_host(sandbox, "node3")
    try:
        c, api = await controller_factory(up=3)
        node3 = c.cluster.hosts["node3"]
        await until(lambda: node3.reason, what="node3 reason")
        assert node3.state == "UNREACHABLE" and "cannot reach" in (node3.reason or "")
        jobs = [await api.submit() for _ in range(4)]
        assert all(j["state"] == "SUCCEEDED" for j in await api.wait(*jobs))
        hosts = {h["name"]: h for h in await api("hosts")}
        assert hosts["node3"]["state"] == "UNREACHABLE"
    finally:
        start_host(sandbox, "node3")
    await until(lambda: node3.state == "UP", timeout=30, what="node3 back")


async def test_sshd_killed_while_job_runs(sandbox: Sandbox, controller_factory: Any) -> None:
    c, api = await controller_factory()
    job_id = await api.submit(script="#!/bin/sh\necho begin\nsleep 3\necho end\n", cpus=2)
    job = c.jobs.live(job_id)
    await until(lambda: job.state == "RUNNING", what="running")
    host = job.attempts[0].host
    kill_sshd(sandbox, host)
    try:
        await until(lambda: c.cluster.hosts[host].state == "UNREACHABLE", what="host cut off")
        assert c.jobs.live(job_id).state == "RUNNING"  # not lost, not failed
        await asyncio.sleep(3.5)  # the job finishes while its host is unreachable
    finally:
        start_host(sandbox, host)
    (final,) = await api.wait(job_id, timeout=60)
    assert final["state"] == "SUCCEEDED", final
    assert await api.logs(job_id) == "begin\nend\n"


def _run_controller(inventory: Path, home: Path) -> subprocess.Popen[bytes]:
    with open(home / "controller.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hpcbatch.cli.main",
                "--home",
                str(home),
                "controller",
                "--inventory",
                str(inventory),
                "--heartbeat",
                "1",
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _client(home: Path, timeout: float = 30.0) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = Client(home / "controller.sock", timeout=60)
            client.call("ping")
            return client
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_controller_sigkill_loses_nothing_runs_nothing_twice(sandbox: Sandbox) -> None:
    home = short_home()
    ledger = Path(tempfile.mkdtemp(prefix="hb-ledger-"))
    os.chmod(ledger, 0o777)
    proc = _run_controller(sandbox.inventory, home)
    try:
        with _client(home) as client:
            deadline = time.monotonic() + 30
            while sum(h["state"] == "UP" for h in client.call("hosts")) < 4:
                assert time.monotonic() < deadline, "hosts did not come up"
                time.sleep(0.05)
            ids = []
            for i in range(12):
                # short ones finish while the controller is dead, long ones outlive the restart
                pause = 0 if i % 3 == 0 else (1.5 if i % 3 == 1 else 4)
                script = (
                    f"#!/bin/sh\necho $HPCBATCH_JOB_ID >> {ledger}/ran\nsleep {pause}\n"
                    f"exit {i % 2}\n"
                )
                ids.append(
                    client.call("submit", request={"script": script, "name": f"j{i}"})["job_id"]
                )
            deadline = time.monotonic() + 30
            while True:
                states = [j["state"] for j in client.call("jobs", ids=ids)]
                if (
                    all(s in ("RUNNING", "SUCCEEDED", "FAILED") for s in states)
                    and "RUNNING" in states
                ):
                    break
                assert time.monotonic() < deadline, states
                time.sleep(0.02)
        proc.kill()  # SIGKILL: no clean shutdown at all
        proc.wait()
        time.sleep(2.0)
        proc = _run_controller(sandbox.inventory, home)
        with _client(home) as client:
            finals = client.call("wait", job_ids=ids, timeout_s=90)
        for i, job in enumerate(finals):
            expected = "SUCCEEDED" if i % 2 == 0 else "FAILED"
            assert job["state"] == expected, job
            if expected == "FAILED":
                assert job["reason"] == "exit code 1", job
        ran = (ledger / "ran").read_text().split()
        assert sorted(map(int, ran)) == sorted(ids), "a job ran twice or never"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


async def test_store_survives_restart_in_process(sandbox: Sandbox, controller_factory: Any) -> None:
    home = short_home()
    c, api = await controller_factory(home=home)
    job = await api.submit(script="#!/bin/sh\necho persisted\n")
    await api.wait(job)
    await c.stop()
    _c2, api2 = await controller_factory(home=home)
    shown = await api2("show", job_id=job)
    assert shown["state"] == "SUCCEEDED"
    assert await api2.logs(job) == "persisted\n"
    again = await api2.submit()
    assert again > job
    _ = Controller
