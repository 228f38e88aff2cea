"""A docker daemon for tests that need one: the running one, or one started here as root.

CI runs as root on Debian 12 with docker.io installed (scripts/install-prereqs.sh)
and no daemon running; `running_dockerd` starts Debian's `dockerd` on the usual
socket, waits until `docker info` answers, and stops it afterwards. A daemon
already running (another test module's, or the machine's) is used as it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DOCKER_SOCKET = Path("/var/run/docker.sock")


def docker(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_started(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until `ready()` is true; fails with the log's tail if the process ends or 60 s pass."""
    deadline = time.monotonic() + 60
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"{what} did not start:\n{tail}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_dockerd(where: Path) -> Iterator[None]:
    """A docker daemon answering on DOCKER_SOCKET for the duration (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test starts dockerd")
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.fail("docker.io is missing: scripts/install-prereqs.sh installs it")
    started = None
    if docker("info", timeout=30).returncode != 0:
        log = where / "dockerd.log"
        with open(log, "wb") as out:
            started = subprocess.Popen(
                ["dockerd", f"--host=unix://{DOCKER_SOCKET}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        wait_started("dockerd", lambda: docker("info", timeout=30).returncode == 0, started, log)
    try:
        yield
    finally:
        if started is not None:
            started.terminate()
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait()
