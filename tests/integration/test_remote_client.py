"""A client on another machine: the controller's socket forwarded over the sandbox's sshd.

The controller runs here (as root); the client reaches it through `ssh -L`
to sandbox host node1, logged in as the sandbox's login user, exactly as a
user on a login node reaches a controller on another machine. The controller
sees the forwarding sshd's peer credentials: the login user, not root. The
client submits, follows a job's log, and the dashboard runs over the same
forwarded socket; a clusters.toml with a dead controller first finds the
live one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.cli import remote
from hpcbatch.controller.app import Controller
from hpcbatch.dashboard import create_app
from hpcbatch.dashboard.jobs_view import JobsView
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import Api, short_home, until

pytestmark = pytest.mark.sshd


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime dir for the forwards (short: Unix socket paths)."""
    where = Path(tempfile.mkdtemp(prefix="hbrt-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(where))
    monkeypatch.delenv("HPCBATCH_SOCKET", raising=False)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
async def remote_cluster(
    controller_factory: Any, sandbox: Sandbox, tmp_path: Path, runtime: Path, monkeypatch: Any
) -> Any:
    """A controller whose socket the sandbox's login user can reach, and clusters.toml."""
    home = short_home()
    os.chmod(home, 0o755)  # the login user (the far side of the forward) must reach the socket
    c, api = await controller_factory(home=home)
    clusters = tmp_path / "clusters.toml"
    dead = str(home / "no-such.sock")
    clusters.write_text(
        f'[clusters.sb]\nhost = "node1"\nssh_config = "{sandbox.ssh_config}"\n'
        f'socket = "{c.settings.socket}"\n\n'
        f'[clusters.pair]\nhost = "node1"\nssh_config = "{sandbox.ssh_config}"\n'
        f'[[clusters.pair.controllers]]\nsocket = "{dead}"\n'
        f'[[clusters.pair.controllers]]\nsocket = "{c.settings.socket}"\n'
    )
    monkeypatch.setenv("HPCBATCH_CLUSTERS", str(clusters))
    yield c, api
    for name in ("sb", "pair"):
        remote.disconnect(name)
    shutil.rmtree(home, ignore_errors=True)


async def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcbatch.cli.main", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return await asyncio.to_thread(run)


async def test_submit_follow_and_identity_through_a_forwarded_socket(
    remote_cluster: tuple[Controller, Api], sandbox: Sandbox, tmp_path: Path
) -> None:
    _, api = remote_cluster
    out = await cli("--cluster", "sb", "ping", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["user"] == sandbox.user != "root"  # the login on the controller's machine
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH -J remote\necho one\nsleep 1\necho two\n")
    out = await cli("--cluster", "sb", "submit", "--parsable", str(script))
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout)
    followed = await cli("--cluster", "sb", "logs", "--follow", str(job_id))
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "one\ntwo\n"
    (job,) = await api.wait(job_id)
    assert (job["state"], job["user"]) == ("SUCCEEDED", sandbox.user)
    listing = json.loads((await cli("--cluster", "sb", "jobs", "-a", "--json")).stdout)
    assert [j["id"] for j in listing if j["id"] == job_id] == [job_id]
    # The forward is kept: a second command reuses it (its control socket stays).
    assert len([n for n in os.listdir(remote.runtime_dir()) if n.endswith(".ctl")]) == 1


async def test_several_controllers_find_the_live_one_and_bad_names_are_clear(
    remote_cluster: tuple[Controller, Api],
) -> None:
    out = await cli("--cluster", "pair", "ping", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pid"] == os.getpid()  # the controller runs in this test
    out = await cli("--cluster", "nosuchhost.invalid:/x.sock", "ping", timeout=90)
    assert out.returncode == 1
    assert "cannot forward the controller socket /x.sock on nosuchhost.invalid" in out.stderr
    assert "Traceback" not in out.stderr
    out = await cli("--cluster", "host:relative.sock", "ping")
    assert out.returncode == 1 and "expected a name from" in out.stderr


async def test_dashboard_through_a_forwarded_socket(remote_cluster: tuple[Controller, Api]) -> None:
    c, api = remote_cluster
    local = await asyncio.to_thread(remote.forwarded_socket, "sb")
    assert local != str(c.settings.socket)
    app = create_app(Path(local))
    async with app.run_test(size=(120, 36)):
        await until(lambda: app.connected and app.model.hosts, what="the dashboard connected")
        job = await api.submit(name="dash-remote", script="#!/bin/sh\nsleep 1\n")
        view = app.query_one(JobsView)
        await until(
            lambda: any(r.key == str(job) for r in view.rows), what="the job shown remotely"
        )
        await api.wait(job)
