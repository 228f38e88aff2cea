"""Integration fixtures: the real sshd sandbox, and a controller running in the test's loop."""

from __future__ import annotations

import asyncio
import shutil
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
    # Unix socket paths must stay under 108 bytes: pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix="hb-"))


def test_settings(inventory: Path, home: Path, **kw: Any) -> ControllerSettings:
    kw.setdefault("heartbeat_s", 1.0)
    kw.setdefault("reconnect_max_s", 0.5)
    kw.setdefault("kill_grace_s", 2.0)
    return ControllerSettings.build(inventory=inventory, home=home, **kw)


@pytest.fixture
async def controller_factory(sandbox: Sandbox) -> AsyncIterator[Callable[..., Any]]:
    started: list[Controller] = []
    homes: list[Path] = []

    async def make(
        inventory: Path | None = None, up: int | None = None, home: Path | None = None, **kw: Any
    ) -> tuple[Controller, Api]:
        if home is None:
            home = short_home()
            homes.append(home)
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


@pytest.fixture
async def cluster(controller_factory: Callable[..., Any]) -> tuple[Controller, Api]:
    result: tuple[Controller, Api] = await controller_factory()
    return result
