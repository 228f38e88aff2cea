"""The PostgreSQL store as an operator uses it, on the sandbox's real sshd hosts:
`hpcbatch controller --store postgresql://... --detach`, jobs through the CLI,
then `hpcbatch store copy` to a SQLite file (refused while the controller
runs) and a controller on the copy that finds the same jobs and goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import short_home
from tests.postgres_server import TemporaryPostgres

pytestmark = pytest.mark.sshd


class Operator:
    """The `hpcbatch` command with one home (socket, logs) and its controller's pid file."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **os.environ,
            "HPCBATCH_HOME": str(home),
            "HPCBATCH_SOCKET": str(home / "controller.sock"),
        }

    def __call__(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpcbatch.cli.main", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def start(self, inventory: Path, store: str) -> None:
        argv = ["controller", "-i", str(inventory), "--heartbeat", "1", "--store", store]
        out = self(*argv, "--detach")
        assert out.returncode == 0, out.stderr + self.log()

    def stop(self) -> None:
        pid = int((self.home / "controller.pid").read_text())
        assert self("stop").returncode == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"the controller {pid} did not stop:\n{self.log()}")

    def log(self) -> str:
        path = self.home / "controller.log"
        return path.read_text(errors="replace") if path.exists() else ""


def test_a_controller_on_postgresql_and_its_copy_on_sqlite(
    sandbox: Sandbox, postgres: TemporaryPostgres
) -> None:
    home = short_home()
    op = Operator(home)
    script = home / "job.sh"
    script.write_text("#!/bin/sh\n#SBATCH --job-name=on-pg\necho hello from $HPCBATCH_JOB_ID\n")
    pg = postgres.url(postgres.create_database())
    copy = f"sqlite://{home / 'copy' / 'hpcbatch.db'}"
    try:
        op.start(sandbox.inventory, pg)
        ping = op("ping")
        assert ping.returncode == 0, ping.stderr
        out = op("submit", "--parsable", "--wait", str(script))
        assert out.returncode == 0, out.stderr + op.log()
        first = int(out.stdout.split()[0])
        assert op("logs", str(first)).stdout == f"hello from {first}\n"
        # Not while the controller holds the store: it would go on writing.
        refused = op("store", "copy", pg, copy)
        assert refused.returncode == 1 and "another controller" in refused.stderr
        op.stop()

        copied = op("store", "copy", pg, copy)
        assert copied.returncode == 0, copied.stderr
        counts = {line.split()[0]: line.split()[1:] for line in copied.stdout.splitlines()[2:]}
        assert counts["jobs"] == ["1", "1"] and counts["transitions"] == ["5", "5"]
        assert counts["meta"][0] == counts["meta"][1] != "0"

        op.start(sandbox.inventory, copy)
        listed = op("jobs", "-a")
        assert listed.returncode == 0 and "on-pg" in listed.stdout and "SUCCEEDED" in listed.stdout
        out = op("submit", "--parsable", "--wait", str(script))
        assert out.returncode == 0, out.stderr + op.log()
        assert int(out.stdout.split()[0]) == first + 1
        op.stop()
    finally:
        if (home / "controller.pid").exists():
            subprocess.run(
                [sys.executable, "-m", "hpcbatch.cli.main", "stop"],
                env=op.env,
                capture_output=True,
                check=False,
            )
        shutil.rmtree(home, ignore_errors=True)
