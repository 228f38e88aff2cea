"""A shared cluster, end to end: alice and bob submit through the real socket as
themselves (real uids), and their jobs run as them on real sshd hosts whose
agents log in as root (`sandbox.users_inventory`: run_as = "submitter").

The CLI runs in a process that becomes the user before it connects (the
checkout's interpreter may sit under root's 0700 home, so `runuser` could not
start it): the controller sees the user's uid on its socket, as it would from
`runuser -u alice -- hpcbatch submit`.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="real users alice and bob, and agents logged in as root: needs root "
    "(CI runs as root); as another user the sandbox stays run_as = login",
)

AS_USER = """
import os, pwd, sys
# Everything the CLI may import later, while the interpreter's files are reachable:
import argparse, base64, collections, contextlib, copy, dataclasses, datetime, enum, errno
import fnmatch, functools, gettext, hashlib, io, itertools, json, locale, math, pathlib, re
import select, shlex, shutil, signal, socket, stat, string, struct, textwrap, time, typing
import unicodedata
import hpcbatch.cli.main, hpcbatch.cli.parser, hpcbatch.cli.submit, hpcbatch.cli.format
import hpcbatch.cli.admin, hpcbatch.client, hpcbatch.cli.quick, hpcbatch.locations, _json, _socket
pw = pwd.getpwnam(sys.argv[1])
os.initgroups(pw.pw_name, pw.pw_gid); os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)
os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
os.chdir(pw.pw_dir)
os.umask(int(os.environ.get("HB_TEST_UMASK", "022"), 8))  # the user's shell's umask
sys.exit(hpcbatch.cli.quick.main(sys.argv[2:]))  # the installed entry point
"""


def cli_as(
    user: str, socket: Path, *argv: str, umask: str = "022"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPCBATCH_SOCKET": str(socket), "HB_TEST_UMASK": umask}
    return subprocess.run(
        [sys.executable, "-c", AS_USER, user, *argv],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


async def submit_as(
    user: str, socket: Path, script: Path, *options: str, umask: str = "022"
) -> int:
    done = await asyncio.to_thread(
        cli_as, user, socket, "submit", "--parsable", *options, str(script), umask=umask
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def attempt_dir(sb: Sandbox, job: int, cluster: str = "*") -> Path:
    """`cluster`: the controller's id (other tests' controllers number jobs from 1 too)."""
    found = [
        p
        for h in sb.hosts
        for p in Path(f"{h.work_dir}-users").glob(f"c-{cluster}/{h.name}/attempts/{job}.1.0")
    ]
    assert len(found) == 1, found
    return found[0]


def owner(path: Path) -> tuple[str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


async def test_alice_and_bob_run_as_themselves_and_cannot_see_each_other(
    sandbox: Sandbox, controller_factory: Callable[..., Any]
) -> None:
    assert sandbox.users == ("alice", "bob")
    scripts = Path(tempfile.mkdtemp(prefix="hb-scripts-"))
    os.chmod(scripts, 0o755)
    try:
        c, api = await controller_factory(inventory=sandbox.users_inventory)
        socket = c.settings.socket
        socket.parent.chmod(0o711)  # the socket's directory: every local user may reach it
        mine = scripts / "mine.sh"
        mine.write_text('#!/bin/sh\nid -un\necho "home=$HOME user=$USER"\necho private-data\n')
        mine.chmod(0o644)
        alice = await submit_as("alice", socket, mine)
        (end,) = await api.wait(alice)
        assert end["state"] == "SUCCEEDED", end
        out = await api.logs(alice)  # root is an admin
        pw = pwd.getpwnam("alice")
        assert out.splitlines()[:2] == ["alice", f"home={pw.pw_dir} user=alice"], out
        adir = attempt_dir(sandbox, alice, c.store.cluster_id)
        assert owner(adir) == ("root", 0o711)
        assert owner(adir / "work") == ("alice", 0o700)
        # alice's umask (022, sent by her CLI) made it 0644; work/ (0700) keeps it hers.
        assert owner(adir / "work" / "stdout") == ("alice", 0o644)
        assert owner(adir / "exit")[0] == "root" and owner(adir / "env.json") == ("root", 0o600)

        # bob's job tries alice's files and her exit record: refused by the host.
        nosy = scripts / "nosy.sh"
        nosy.write_text(
            "#!/bin/sh\nid -un\n"
            f"cat {adir}/work/stdout {adir}/env.json 2>&1\n"
            f"echo '{{\"code\": 0}}' > {adir}/exit 2>&1 || echo no-forge\n"
        )
        nosy.chmod(0o644)
        bob = await submit_as("bob", socket, nosy)
        (end,) = await api.wait(bob)
        out = await api.logs(bob)
        assert out.startswith("bob\n") and "private-data" not in out, out
        assert "Permission denied" in out and "no-forge" in out

        # Root (and system accounts) may not submit to hosts that run jobs as their user.
        refused = await asyncio.to_thread(cli_as, "root", socket, "submit", "--parsable", str(mine))
        assert refused.returncode != 0 and "root may not submit" in refused.stderr
        hosts = await asyncio.to_thread(cli_as, "alice", socket, "hosts")
        assert "multi-user" in hosts.stdout, hosts.stdout
    finally:
        shutil.rmtree(scripts, ignore_errors=True)


async def test_the_submitters_umask_reaches_the_job_and_its_output_files(
    sandbox: Sandbox, controller_factory: Callable[..., Any]
) -> None:
    """As Slurm's SLURM_UMASK: the CLI sends its umask, the job runs under it and its
    output files are created with it; alice's 077 keeps bob out of her --output file in a
    directory both can write."""
    scripts = Path(tempfile.mkdtemp(prefix="hb-scripts-"))
    shared = Path(tempfile.mkdtemp(prefix="hb-shared-"))
    os.chmod(scripts, 0o755)
    os.chmod(shared, 0o1777)
    try:
        c, api = await controller_factory(inventory=sandbox.users_inventory)
        socket = c.settings.socket
        socket.parent.chmod(0o711)
        job = scripts / "umask.sh"
        job.write_text("#!/bin/sh\numask\necho alice-private\ntouch made-by-job\n")
        job.chmod(0o644)
        private = await submit_as(
            "alice", socket, job, f"--output={shared}/private.out", f"--chdir={shared}",
            umask="077",
        )  # fmt: skip
        group = await submit_as("alice", socket, job, f"--output={shared}/group.out", umask="027")
        for jid in (private, group):
            (end,) = await api.wait(jid)
            assert end["state"] == "SUCCEEDED", end
        assert (shared / "private.out").read_text().splitlines() == ["0077", "alice-private"]
        assert owner(shared / "private.out") == ("alice", 0o600)
        assert owner(shared / "made-by-job") == ("alice", 0o600)  # the job's own files too
        assert (shared / "group.out").read_text().splitlines()[0] == "0027"
        assert owner(shared / "group.out") == ("alice", 0o640)
        nosy = scripts / "nosy.sh"
        nosy.write_text(f"#!/bin/sh\ncat {shared}/private.out 2>&1 || echo refused\n")
        nosy.chmod(0o644)
        bob = await submit_as("bob", socket, nosy)
        (end,) = await api.wait(bob)
        out = await api.logs(bob)
        assert "Permission denied" in out and "alice-private" not in out, out
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


async def running(api: Any, job_id: int, timeout: float = 60) -> None:
    """Wait until the job runs (the controller has its attempt's start)."""
    deadline = time.monotonic() + timeout
    while (await api("show", job_id=job_id))["state"] != "RUNNING":
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        await asyncio.sleep(0.05)


async def test_hpcbatch_exec_runs_as_the_user_under_the_jobs_umask(
    sandbox: Sandbox, controller_factory: Callable[..., Any]
) -> None:
    """`hpcbatch exec` in a running job of alice's: the command is alice's, under the
    umask her job was submitted with (not the exec'ing shell's), in the job's working
    directory; bob's exec in her job is refused."""
    scripts = Path(tempfile.mkdtemp(prefix="hb-scripts-"))
    shared = Path(tempfile.mkdtemp(prefix="hb-shared-"))
    os.chmod(scripts, 0o755)
    os.chmod(shared, 0o1777)
    release = shared / "release"
    try:
        c, api = await controller_factory(inventory=sandbox.users_inventory)
        socket = c.settings.socket
        socket.parent.chmod(0o711)
        job = scripts / "wait.sh"
        job.write_text(f'#!/bin/sh\nwhile [ ! -e "{release}" ]; do sleep 0.05; done\n')
        job.chmod(0o644)
        jid = await submit_as("alice", socket, job, f"--chdir={shared}", umask="027")
        await running(api, jid)
        command = ("exec", str(jid), "--", "sh", "-c", "id -un; umask; pwd; touch made-by-exec")
        done = await asyncio.to_thread(cli_as, "alice", socket, *command, umask="002")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["alice", "0027", str(shared)], done.stdout
        assert owner(shared / "made-by-exec") == ("alice", 0o640)
        nosy = await asyncio.to_thread(cli_as, "bob", socket, "exec", str(jid), "--", "true")
        assert nosy.returncode != 0 and "not yours" in nosy.stderr, nosy.stderr
        release.touch()
        (end,) = await api.wait(jid)
        assert end["state"] == "SUCCEEDED", end
    finally:
        release.touch()
        shutil.rmtree(scripts, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)
