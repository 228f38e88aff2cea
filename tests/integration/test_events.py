"""`hpcbatch events`, the command a user runs, following and replaying the state changes
of jobs run on the sandbox's sshd hosts (and of a host an operator drains)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
from typing import Any

import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api, until

pytestmark = pytest.mark.sshd


def cli_env(c: Controller) -> dict[str, str]:
    return {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}


async def events_cli(c: Controller, *options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hpcbatch.cli.main", "events", *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(c),
    )  # fmt: skip


async def read_until(
    proc: asyncio.subprocess.Process, done: Any, timeout: float = 60
) -> list[dict[str, Any]]:
    """Events from the follower's stdout until `done(events)` holds."""
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not done(events):
            line = await proc.stdout.readline()
            assert line, f"events ended early; got {events}"
            events.append(json.loads(line))
    return events


def states_of(events: list[dict[str, Any]], job: int) -> list[tuple[str | None, str]]:
    return [(e["old"], e["new"]) for e in events if e["kind"] == "job" and e["job"] == job]


async def test_follow_while_jobs_run_then_replay(cluster: tuple[Controller, Api]) -> None:
    c, api = cluster
    follower = await events_cli(c, "--follow")
    failed_only = await events_cli(c, "--follow", "--state", "FAILED")
    try:
        await until(lambda: c.changes.bus.watched and len(c.changes.bus._subscribers) == 2)
        ok = await api.submit(script="#!/bin/sh\nsleep 0.3\n", name="fine")
        bad = await api.submit(script="#!/bin/sh\nexit 4\n", name="broken")
        host = sorted(c.cluster.hosts)[0]
        await api("drain", host=host, reason="maintenance")
        await api("resume", host=host)
        await api.wait(ok, bad)

        def finished(events: list[dict[str, Any]]) -> bool:
            finals = {e.get("job") for e in events if e["new"] in ("SUCCEEDED", "FAILED")}
            resumed = any(e["kind"] == "host" and e["old"] == "DRAIN" for e in events)
            return {ok, bad} <= finals and resumed

        events = await read_until(follower, finished)
        assert states_of(events, ok) == [
            (None, "RUNNABLE"),
            ("RUNNABLE", "STARTING"),
            ("STARTING", "RUNNING"),
            ("RUNNING", "SUCCEEDED"),
        ]
        # A quick exit may be collected before the launch's reply: STARTING -> FAILED.
        chain = states_of(events, bad)
        assert chain[0] == (None, "RUNNABLE") and chain[-1][1] == "FAILED"
        assert all(a[1] == b[0] for a, b in itertools.pairwise(chain))
        (last,) = [e for e in events if e.get("job") == bad and e["new"] == "FAILED"]
        assert last["reason"] == "exit code 4" and last["name"] == "broken"
        assert last["queue"] == "batch" and last["time"].endswith("Z")
        hosts = [
            (e["host"], e["old"], e["new"], e["reason"]) for e in events if e["kind"] == "host"
        ]
        assert hosts == [(host, "UP", "DRAIN", "maintenance"), (host, "DRAIN", "UP", None)]
        # The filtered follower saw the failure alone.
        (only,) = await read_until(failed_only, lambda ev: len(ev) == 1)
        assert (only["job"], only["new"]) == (bad, "FAILED")
    finally:
        for proc in (follower, failed_only):
            proc.terminate()
            await proc.wait()

    # Replayed from the store: the whole history, SUBMITTED included, and filters apply.
    replay = await events_cli(c, "--since", "5m", "--job", str(ok))
    out, err = await replay.communicate()
    assert replay.returncode == 0, err.decode()
    stored = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["old"], e["new"]) for e in stored] == [
        (None, "SUBMITTED"),
        ("SUBMITTED", "RUNNABLE"),
        ("RUNNABLE", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "SUCCEEDED"),
    ]
    assert {e["name"] for e in stored} == {"fine"}
    replay = await events_cli(c, "--since", "5m", "--state", "FAILED")
    out, _ = await replay.communicate()
    assert [json.loads(line)["job"] for line in out.decode().splitlines()] == [bad]


async def test_bad_since_is_a_clear_error(cluster: tuple[Controller, Api]) -> None:
    c, _api = cluster
    proc = await events_cli(c, "--since", "yesterday")
    _out, err = await proc.communicate()
    assert proc.returncode != 0
    assert "--since 'yesterday': expected an age" in err.decode()
    assert "Traceback" not in err.decode()
