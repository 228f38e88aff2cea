"""Integration fixtures: the real sshd sandbox, and a controller running in the test's loop."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import Client
from hpcbatch.controller.app import Controller
from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.sandbox import Sandbox

# The session's `sandbox` fixture comes from tests/conftest.py (shared with tests/dashboard).


class Api:
    """The real Unix-socket API, called from a thread so the controller's loop keeps running."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def __call__(self, op: str, **args: Any) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=120) as client:
                return client.call(op, **args)

        return await asyncio.to_thread(call)

    async def submit(self, **request: Any) -> int:
        if "definition" not in request:
            request.setdefault("script", "#!/bin/sh\ntrue\n")
        return int((await self("submit", request=request))["job_id"])

    async def wait(self, *job_ids: int, timeout: float = 60) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self("wait", job_ids=list(job_ids), timeout_s=timeout)
        return result

    async def logs(self, job_id: int, stream: str = "stdout") -> str:
        return str((await self("logs", job_id=job_id, stream=stream))["data"])


class Cli:
    """`hpcbatch submit` as a user runs it, against a test's controller: the installed
    entry point (`cli.quick`, whose submit the controller parses; the rest the full CLI)."""

    def __init__(self, c: Controller, where: Path) -> None:
        self.env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
        self.where = where

    async def submit(self, script: str, *options: str) -> int:
        path = self.where / f"job{len(list(self.where.iterdir()))}.sh"
        path.write_text(script)
        argv = [sys.executable, "-m", "hpcbatch.cli.quick", "submit", "--parsable", *options]
        out = await asyncio.to_thread(
            subprocess.run, [*argv, str(path)], capture_output=True, text=True, env=self.env
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())

    async def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Any `hpcbatch` command (hold, update, ...), as a user types it."""
        cmd = [sys.executable, "-m", "hpcbatch.cli.quick", *argv]
        return await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, env=self.env
        )

    async def refused(self, script: str, *options: str) -> str:
        """`hpcbatch submit` that must fail: its error output."""
        path = self.where / f"job{len(list(self.where.iterdir()))}.sh"
        path.write_text(script)
        out = await self.run("submit", *options, str(path))
        assert out.returncode != 0, out.stdout
        return out.stderr


async def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Wait for a condition the controller reaches through events (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def short_home() -> Path:
    """A controller's home under /tmp, removed when the test run ends (Unix socket paths
    must stay under 108 bytes: pytest's tmp_path can be longer)."""
    home = Path(tempfile.mkdtemp(prefix="hb-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


def test_settings(inventory: Path, home: Path, **kw: Any) -> ControllerSettings:
    kw.setdefault("heartbeat_s", 1.0)
    kw.setdefault("reconnect_max_s", 0.5)
    kw.setdefault("kill_grace_s", 2.0)
    return ControllerSettings.build(inventory=inventory, home=home, **kw)


@pytest.fixture
async def controller_factory(
    sandbox: Sandbox, store_engine: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Controller] = []
    homes: list[Path] = []
    postgres = request.getfixturevalue("postgres") if store_engine == "postgresql" else None
    databases: dict[Path, str] = {}  # a controller's home -> its PostgreSQL database

    async def make(
        inventory: Path | None = None, up: int | None = None, home: Path | None = None, **kw: Any
    ) -> tuple[Controller, Api]:
        if home is None:
            home = short_home()
            homes.append(home)
        if postgres is not None and "store" not in kw:
            if home not in databases:
                databases[home] = postgres.create_database()
            kw["store"] = postgres.url(databases[home])
        c = await Controller.create(test_settings(inventory or sandbox.inventory, home, **kw))
        await c.start()
        started.append(c)
        want = len(sandbox.hosts) if up is None else up
        await until(
            lambda: sum(h.state == "UP" for h in c.cluster.hosts.values()) >= want,
            what=f"{want} hosts UP",
        )
        return c, Api(c.settings.socket)

    yield make
    for c in reversed(started):
        await c.stop()
    for home in homes:
        shutil.rmtree(home, ignore_errors=True)
    for name in databases.values():
        postgres.drop_database(name)


@pytest.fixture
async def cluster(controller_factory: Callable[..., Any]) -> tuple[Controller, Api]:
    result: tuple[Controller, Api] = await controller_factory()
    return result


def inventory_with(
    sandbox: Sandbox, where: Path, tail: str, host_extra: str = "", default_queue: str = "batch"
) -> Path:
    """The sandbox's hosts (each with `host_extra` lines added) and the queues and
    compute environments of `tail` instead of the sandbox's own."""
    text = sandbox.inventory.read_text()
    hosts = text[: text.index("[[compute_environments]]")]
    if host_extra:
        hosts = hosts.replace("[[hosts]]\n", "[[hosts]]\n" + host_extra.strip() + "\n")
    path = Path(tempfile.mkdtemp(prefix="inv-", dir=where)) / "inventory.toml"
    hosts = hosts.replace('default_queue = "batch"', f'default_queue = "{default_queue}"')
    path.write_text(hosts + tail)
    return path


async def job_where(
    api: Api, job_id: int, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30.0
) -> dict[str, Any]:
    """The job's summary once `predicate` holds for it (read through the API)."""
    deadline = time.monotonic() + timeout
    while True:
        (job,) = await api("jobs", ids=[job_id], all=True)
        if predicate(job):
            return dict(job)
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never reached the condition; last: {job}")
        await asyncio.sleep(0.05)
