"""Secrets, end to end with real users (alice and bob) on real sshd hosts.

alice stores a secret from stdin and her job gets it in its environment (the
job proves it by a hash, so the value itself never reaches its output); bob
may not use, list or delete it; the value is found nowhere the controller
keeps or shows things (the SQLite database and its WAL, `show --json`,
`events`, `logs`, the controller's log), and on the host the attempt's env.json
and meta.json (the launch request), which hold it, are root's and 0600. The
plain-login case (hosts without run_as) keeps them 0600 in a 0700 attempt
directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.test_multi_user import AS_USER, owner

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="real users alice and bob: needs root (CI runs as root)"
)

JOB = '#!/bin/sh\nprintf %s "$DB_PASSWORD" | sha256sum | cut -c1-64\necho done\n'


def as_user(
    user: str, socket: Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPCBATCH_SOCKET": str(socket)}
    return subprocess.run(
        [sys.executable, "-c", AS_USER, user, *argv],
        input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


async def run_as(
    user: str, socket: Path, *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(as_user, user, socket, *argv, stdin=stdin)


def attempt_dir(sb: Sandbox, job: int, cluster: str, users: bool = False) -> Path:
    """The job's first attempt directory, of this test's controller (its cluster id: other
    tests' controllers number their jobs from 1 too); `users`: the run_as hosts' work dirs."""
    found = [
        p
        for h in sb.hosts
        for p in Path(f"{h.work_dir}{'-users' if users else ''}").glob(
            f"c-{cluster}/{h.name}/attempts/{job}.1.0"
        )
    ]
    assert len(found) == 1, found
    return found[0]


def found_in_files(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_a_secret_reaches_alices_job_and_nowhere_else(
    sandbox: Sandbox,
    controller_factory: Callable[..., Any],
    store_engine: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    value = "pw-" + secrets.token_hex(12)
    scripts = Path(tempfile.mkdtemp(prefix="hb-secrets-"))
    os.chmod(scripts, 0o755)
    try:
        c, api = await controller_factory(inventory=sandbox.users_inventory)
        sock = c.settings.socket
        sock.parent.chmod(0o711)
        stored = await run_as("alice", sock, "secret", "set", "db-pass", stdin=value + "\n")
        assert stored.returncode == 0, stored.stderr
        assert "secret db-pass stored (owner alice" in stored.stdout
        job = scripts / "job.sh"
        job.write_text(JOB)
        job.chmod(0o644)
        sub = await run_as(
            "alice", sock, "submit", "--parsable", "--secret", "DB_PASSWORD=db-pass", str(job)
        )
        assert sub.returncode == 0, sub.stderr
        alice_job = int(sub.stdout.strip())
        (end,) = await api.wait(alice_job)
        assert end["state"] == "SUCCEEDED", end
        out = await api.logs(alice_job)
        assert out.split() == [hashlib.sha256(value.encode()).hexdigest(), "done"], out

        # bob: may not use it, does not see it listed, may not delete or replace it.
        refused = await run_as("bob", sock, "submit", "--secret", "X=db-pass", str(job))
        assert refused.returncode != 0 and "bob may not use it" in refused.stderr, refused
        listed = await run_as("bob", sock, "secret", "list")
        assert listed.returncode == 0 and "db-pass" not in listed.stdout, listed
        for argv, stdin in (
            (("secret", "delete", "db-pass"), ""),
            (("secret", "set", "db-pass"), "x"),
        ):
            denied = await run_as("bob", sock, *argv, stdin=stdin)
            assert denied.returncode != 0 and "belongs to alice" in denied.stderr, denied
        mine = await run_as("alice", sock, "secret", "list", "--json")
        assert [s["name"] for s in json.loads(mine.stdout)] == ["db-pass"]
        assert value not in mine.stdout

        # Nowhere the controller keeps or shows things.
        show = await run_as("alice", sock, "show", "--json", str(alice_job))
        assert "db-pass" in show.stdout and value not in show.stdout
        shown = await run_as("alice", sock, "show", str(alice_job))
        assert "DB_PASSWORD=<secret db-pass>" in shown.stdout, shown.stdout
        events = await run_as("alice", sock, "events", "--since", "1h")
        assert events.returncode == 0 and str(alice_job) in events.stdout
        assert value not in events.stdout
        assert value not in caplog.text
        if store_engine == "sqlite":
            store_files = sorted(c.settings.database.parent.glob(c.settings.database.name + "*"))
            assert any(p.name.endswith("-wal") for p in store_files), store_files
            assert found_in_files(c.settings.database.parent, value.encode()) == []
        key = c.settings.home / "secrets.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

        # On the host: in the root-owned 0600 env.json only (not in meta.json).
        adir = attempt_dir(sandbox, alice_job, c.store.cluster_id, users=True)
        assert owner(adir / "env.json") == ("root", 0o600)
        assert value in (adir / "env.json").read_text()
        assert owner(adir / "meta.json") == ("root", 0o600)  # the launch request: its env too

        # Deleted: a later job that names it is refused.
        gone = await run_as("alice", sock, "secret", "delete", "db-pass")
        assert gone.returncode == 0, gone.stderr
        again = await run_as("alice", sock, "submit", "--secret", "DB_PASSWORD=db-pass", str(job))
        assert again.returncode != 0 and "does not exist" in again.stderr
    finally:
        shutil.rmtree(scripts, ignore_errors=True)


async def test_plain_login_hosts_keep_the_secret_in_a_private_attempt_dir(
    sandbox: Sandbox, cluster: tuple[Any, Any]
) -> None:
    c, api = cluster
    value = "pw-" + secrets.token_hex(12)
    await api("secret_set", name="token", value=value, access=[])
    job_id = await api.submit(script=JOB, secrets={"DB_PASSWORD": "token"})
    (end,) = await api.wait(job_id)
    assert end["state"] == "SUCCEEDED", end
    assert (await api.logs(job_id)).split()[0] == hashlib.sha256(value.encode()).hexdigest()
    adir = attempt_dir(sandbox, job_id, c.store.cluster_id)
    assert stat.S_IMODE(adir.stat().st_mode) == 0o700
    assert stat.S_IMODE((adir / "env.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((adir / "meta.json").stat().st_mode) == 0o600
    # A secret changed after submit is read at launch; one deleted fails the job with why.
    await api("secret_delete", name="token")
    await api("secret_set", name="token", value="x", access=[])
    held = await api.submit(script=JOB, secrets={"DB_PASSWORD": "token"}, hold=True)
    await api("secret_delete", name="token")
    await api("release", job_ids=[held])
    (end,) = await api.wait(held)
    assert end["state"] == "FAILED" and "secret 'token' (for DB_PASSWORD) does not exist" in (
        end["reason"] or ""
    ), end
