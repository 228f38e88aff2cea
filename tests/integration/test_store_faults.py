"""The store under faults, and a clean controller stop with jobs running.

A full disk is made with RLIMIT_FSIZE on the running controller (prlimit: no
root, no special file system; SQLite sees EFBIG as "database or disk is full").
A read-only store is a directory and file the controller's user cannot write
(as root: the controller runs as nobody, since root ignores permissions).
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import short_home
from tests.integration.faults import pid_alive
from tests.integration.soak import ControllerProcess

pytestmark = pytest.mark.sshd


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def started(sandbox: Sandbox) -> ControllerProcess:
    ctl = ControllerProcess(sandbox.inventory, short_home())
    ctl.start()
    wait_for(lambda: sum(h["state"] == "UP" for h in ctl.call("hosts")) == 4, 60, "4 hosts UP")
    return ctl


def test_full_disk_refuses_new_work_and_keeps_what_was_accepted(sandbox: Sandbox) -> None:
    ctl = started(sandbox)
    assert ctl.proc is not None
    try:
        jobs = [
            ctl.call("submit", request={"name": f"kept{i}", "script": "#!/bin/sh\nsleep 2\n"})[
                "job_id"
            ]
            for i in range(4)
        ]
        wait_for(
            lambda: all(j["state"] == "RUNNING" for j in ctl.call("jobs", ids=jobs)), 30, "running"
        )
        _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(ctl.proc.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full
        try:
            with pytest.raises(ClientError) as info, Client(ctl.home / "controller.sock") as c:
                c.call("submit", request={"name": "refused", "script": "true"})
            assert info.value.kind == "unavailable"
            assert "nothing was changed" in info.value.message
            # EFBIG reads as an I/O error to SQLite; a real full disk says "full"
            assert "full" in info.value.message or "I/O error" in info.value.message
            time.sleep(3)  # the jobs end meanwhile: their exits cannot be written yet
            assert {j["state"] for j in ctl.call("jobs", ids=jobs)} == {"RUNNING"}
            assert ctl.call("ping")["pid"] == ctl.proc.pid  # still serving
        finally:
            resource.prlimit(ctl.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
        finals = ctl.call("wait", job_ids=jobs, timeout_s=60)
        assert [j["state"] for j in finals] == ["SUCCEEDED"] * 4
        assert ctl.call("jobs", name="refused", all=True) == []
        again = ctl.call("submit", request={"name": "after", "script": "true"})["job_id"]
        assert ctl.call("wait", job_ids=[again], timeout_s=30)[0]["state"] == "SUCCEEDED"
    finally:
        ctl.stop()


# As root: the store's directory bind-mounted read-only onto itself, in a mount
# namespace of the command's own (nothing outside it sees the change).
READ_ONLY_MOUNT = (
    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
)


def _read_only(
    home: Path, files: list[Path], argv: list[str]
) -> tuple[list[str], Callable[[], None]]:
    """`argv` run with the store directory and files unwritable; returns it and the undo.

    Root ignores permissions: then the directory is a read-only mount for the
    command (a private mount namespace), as on a file system remounted read-only."""
    if os.getuid() != 0:
        for f in files:
            f.chmod(0o444)
        home.chmod(0o555)
        return argv, lambda: home.chmod(0o755)
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY_MOUNT]
    return [*wrapped, "sh", str(home), *argv], lambda: None


def test_read_only_store_is_refused_at_start_and_left_alone() -> None:
    home = short_home()
    inventory = home / "inventory.toml"
    inventory.write_text('[[hosts]]\nname = "n1"\naddress = "127.0.0.1"\n')
    create = [sys.executable, "-c", "import asyncio, sys; from pathlib import Path; "
              "from hpcbatch.store.db import Store\n"
              "async def m():\n s = await Store.open(Path(sys.argv[1])); await s.close()\n"
              "asyncio.run(m())", str(home / "hpcbatch.db")]  # fmt: skip
    subprocess.run(create, check=True)
    before = hashlib.sha256((home / "hpcbatch.db").read_bytes()).hexdigest()
    argv, undo = _read_only(
        home,
        [home / "hpcbatch.db", inventory],
        [sys.executable, "-m", "hpcbatch.cli.main", "--home", str(home), "controller",
         "--inventory", str(inventory)],
    )  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        undo()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    # The OS's own words for each way of making it unwritable, and the path.
    why = "Permission denied" if os.getuid() != 0 else "Read-only file system"
    assert why in proc.stderr and str(home) in proc.stderr, proc.stderr
    assert hashlib.sha256((home / "hpcbatch.db").read_bytes()).hexdigest() == before


def test_clean_stop_leaves_jobs_running_and_restart_collects_them(sandbox: Sandbox) -> None:
    ledger = short_home()
    ledger.chmod(0o777)
    ctl = started(sandbox)
    script = f"#!/bin/sh\necho $$ >> {ledger}/pids\nsleep 3\necho done\n"
    jobs = [ctl.call("submit", request={"script": script})["job_id"] for _ in range(3)]
    wait_for(lambda: all(j["state"] == "RUNNING" for j in ctl.call("jobs", ids=jobs)), 30, "run")
    with Client(ctl.home / "controller.sock") as client:
        assert client.call("shutdown") == {"stopping": True}
    assert ctl.proc is not None
    assert ctl.proc.wait(30) == 0
    pids = [int(p) for p in (ledger / "pids").read_text().split()]
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)  # the jobs ran on
    ctl.start()
    try:
        finals = ctl.call("wait", job_ids=jobs, timeout_s=60)
        assert [j["state"] for j in finals] == ["SUCCEEDED"] * 3
        assert [ctl.call("logs", job_id=j)["data"] for j in jobs] == ["done\n"] * 3
        assert len((ledger / "pids").read_text().split()) == 3  # none ran twice
    finally:
        ctl.stop()
