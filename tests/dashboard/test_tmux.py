"""Smoke test in a real terminal: `hpcbatch dash` in tmux against a real controller.

Keys go in with `send-keys`, and the test reads what a person would see with
`capture-pane`. It runs on its own tmux server (`-L`), never the user's.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from hpcbatch.controller.app import Controller
from tests.integration.conftest import Api

WIDTH, HEIGHT = 100, 30
ROOT = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self) -> None:
        self.server = f"hb-dash-{uuid.uuid4().hex[:8]}"

    async def __call__(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-L", self.server, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {err.decode().strip()}")
        return out.decode()

    async def alive(self) -> bool:
        """Whether the session still runs (the server exits with its last session)."""
        try:
            return "dash" in await self("list-sessions", "-F", "#S")
        except RuntimeError:
            return False

    async def screen(self) -> str:
        return await self("capture-pane", "-p", "-t", "dash")

    async def keys(self, *keys: str) -> None:
        await self("send-keys", "-t", "dash", *keys)

    async def wait_for(self, *texts: str, gone: str = "", timeout: float = 30.0) -> str:
        """Until every text is on the screen (and `gone` is not); the screen is in the
        failure message."""
        screen = ""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            screen = await self.screen()
            if all(t in screen for t in texts) and not (gone and gone in screen):
                return screen
            await asyncio.sleep(0.1)
        raise AssertionError(f"not on screen: {texts} (or still there: {gone!r})\n{screen}")


async def test_dash_in_a_real_terminal(cluster: tuple[Controller, Api]) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("the smoke test needs tmux (make prereqs installs it)")
    c, api = cluster
    job = await api.submit(name="smoke-job", script="#!/bin/sh\nsleep 60\n")
    tmux = Tmux()
    command = f"{sys.executable} -m hpcbatch.cli.main --socket {c.settings.socket} dash"
    size = ["-x", str(WIDTH), "-y", str(HEIGHT)]
    await tmux("new-session", "-d", "-s", "dash", *size, "-e", f"PYTHONPATH={ROOT}", command)
    try:
        screen = await tmux.wait_for("smoke-job", "RUNNING", "JOBID", "Cancel job")
        assert "Jobs [2]" in screen and "? Help" in screen
        await tmux.keys("1")
        screen = await tmux.wait_for("fabric island", "node1", "node4", "Drain")
        assert "Hosts 4" in screen
        await tmux.keys("3")
        await tmux.wait_for("QUEUE", "PRIO", "batch")
        await tmux.keys("2")
        await tmux.wait_for("JOBID", "Cancel job")
        await asyncio.sleep(0.3)  # a person's pace: the view has focus again
        await tmux.keys("x")
        await tmux.wait_for(f"Cancel job {job} (smoke-job, RUNNING)?", "No (n)")
        await tmux.keys("Escape")
        await tmux.wait_for("JOBID", gone=f"Cancel job {job}")
        assert (await api("show", job_id=job))["state"] == "RUNNING"
        await tmux.keys("x")
        await tmux.wait_for("Cancel job " + str(job))
        await tmux.keys("y")
        screen = await tmux.wait_for("smoke-job", gone="RUNNING")
        line = next(x for x in screen.splitlines() if "smoke-job" in x)
        assert "FAILED" in line, screen
        assert (await api("show", job_id=job))["state"] == "FAILED"
        await tmux.keys("q")
        for _ in range(100):
            if not await tmux.alive():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("q did not quit the dashboard")
    finally:
        if await tmux.alive():
            await tmux("kill-server")
