"""Jobs that run as their submitter, on a real agent run by root, with real users.

alice and bob are real local accounts (made as the sandbox makes them, and
kept). The agent runs as root, as on a host with `run_as = "submitter"`:
each job runs as its user, with the user's groups (looked up once for a while,
set in the job's process and its ranks) and passwd environment; its
files are the user's and private; the records the agent trusts (pid, exit,
env.json, meta.json) are root's, so bob can neither read alice's job nor
forge its end; a user missing on the host fails that launch with `no_user`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox.users import ensure_users
from hpcbatch.transport.agent import runas
from tests.integration.test_agent_process import AGENT_ARCHIVE, Agent, eventually
from tests.integration.test_agent_user_paths import relay_client

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="jobs run as their submitter only under a root agent, with real users: "
    "needs root (CI runs as root)",
)


@pytest.fixture(scope="module")
def users() -> dict[str, int]:
    return ensure_users(["alice", "bob"])


def make_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="hpcbatch-runas-"))
    base.chmod(0o711)
    (base / "agent.pyz").write_bytes(AGENT_ARCHIVE)
    return base


@pytest.fixture
async def agent(users: dict[str, int]) -> AsyncIterator[tuple[Agent, Path]]:
    """A root agent whose root others may pass through (as a host's work_dir with
    run_as = "submitter": 0711), not under pytest's 0700 tmp directory."""
    base = make_base()
    root = base / "root"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(base / "agent.pyz"), "--root", str(root), "--heartbeat", "0.2",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24,
    )  # fmt: skip
    root_ready = Agent(proc)
    await root_ready.ok("hello")
    os.chmod(root, 0o711)
    try:
        yield root_ready, root
    finally:
        await root_ready.stop()
        for pid_file in root.glob("attempts/*/pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(json.loads(pid_file.read_text())["job"], signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def as_user(user: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", user, "--", "/bin/sh", "-c", command],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def owner(path: Path) -> tuple[str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


async def test_a_job_runs_as_its_user_with_private_files(
    agent: tuple[Agent, Path], users: dict[str, int]
) -> None:
    ag, root = agent
    script = 'id -un; id -u; echo "$HOME $USER $LOGNAME"; umask; echo secret=$API_TOKEN'
    await ag.launch("a.1.0", script, user="alice", env={"API_TOKEN": "s3cr3t"})
    assert (await ag.exit_event("a.1.0"))["code"] == 0
    out = (await ag.read_all("a.1.0")).splitlines()
    home = pwd.getpwnam("alice").pw_dir
    assert out[:3] == ["alice", str(users["alice"]), f"{home} alice alice"], out
    assert out[3] == "0077", out  # no umask in the request: 077
    adir = root / "attempts" / "a.1.0"
    assert owner(adir) == ("root", 0o711)  # the user passes through, never lists
    assert owner(adir / "work") == ("alice", 0o700)
    assert owner(adir / "work" / "script")[0] == "alice"
    assert owner(adir / "work" / "stdout") == ("alice", 0o600)  # opened by alice's process
    for name in ("env.json", "meta.json", "exit", "pid"):
        assert owner(adir / name)[0] == "root", name
    assert owner(adir / "env.json")[1] == 0o600 and owner(adir / "meta.json")[1] == 0o600


async def test_bob_cannot_read_alices_job_nor_forge_its_end(agent: tuple[Agent, Path]) -> None:
    ag, root = agent
    release = root.parent / "release-a"
    await ag.launch(
        "a.2.0", 'echo private; while [ ! -e "$1" ]; do sleep 0.05; done',
        args=[str(release)], user="alice", env={"API_TOKEN": "s3cr3t"},
    )  # fmt: skip
    adir = root / "attempts" / "a.2.0"
    await eventually(lambda: (adir / "work" / "stdout").exists())
    pid = (
        await eventually(lambda: (adir / "pid").exists() and json.loads((adir / "pid").read_text()))
    )["job"]
    for command in (
        f"cat {adir}/env.json", f"cat {adir}/meta.json", f"cat {adir}/work/stdout",
        f"ls {adir}/work", f"ls {root}/attempts", f"cat /proc/{pid}/environ",
        f"echo '{{\"code\": 0}}' > {adir}/exit", f"kill -9 {pid}",
    ):  # fmt: skip
        done = as_user("bob", command)
        assert done.returncode != 0, (command, done.stdout)
        assert "s3cr3t" not in done.stdout and "private" not in done.stdout
    # Nor can alice forge her own exit record: it is root's.
    assert as_user("alice", f"echo '{{}}' > {adir}/exit").returncode != 0
    # bob's own job, running as bob: the same walls.
    cmd = f"cat {adir}/work/stdout; cat {adir}/env.json; kill {pid}; echo done"
    await ag.launch("b.1.0", cmd, user="bob")
    await ag.exit_event("b.1.0")
    out = await ag.read_all("b.1.0", "stdout")
    err = await ag.read_all("b.1.0", "stderr")
    assert out == "done\n" and "Permission denied" in err and "private" not in out
    os.kill(pid, 0)  # alice's job lives on
    (root.parent / "release-a").touch()
    assert (await ag.exit_event("a.2.0"))["code"] == 0


def _children(parent: int, comm: str) -> dict[int, int]:
    """The processes named `comm` whose parent is `parent`: pid -> real uid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{entry}/status").read_text().splitlines()
            )
            if fields["Name"].strip() == comm and int(fields["PPid"]) == parent:
                found[int(entry)] = int(fields["Uid"].split()[0])
    return found


async def test_each_users_files_are_made_by_a_kept_process_of_theirs(
    agent: tuple[Agent, Path], users: dict[str, int]
) -> None:
    """One process per user, the user's own, forked once by the agent's forker (not the
    agent), makes the files of that user's launches; killed by its user between two
    launches, it is replaced at the next."""
    ag, root = agent
    (forker,) = _children(ag.proc.pid, "hb-forker")
    for attempt, user in (("h.1.0", "alice"), ("h.2.0", "bob"), ("h.3.0", "alice")):
        await ag.launch(attempt, "true", user=user)
        assert (await ag.exit_event(attempt))["code"] == 0
    helpers = _children(forker, "hb-user")
    assert sorted(helpers.values()) == sorted([users["alice"], users["bob"]]), helpers
    alices = next(pid for pid, uid in helpers.items() if uid == users["alice"])
    assert as_user("alice", f"kill -9 {alices}").returncode == 0  # hers to kill
    await ag.launch("h.4.0", "id -un", user="alice")
    assert (await ag.exit_event("h.4.0"))["code"] == 0
    assert await ag.read_all("h.4.0") == "alice\n"
    assert owner(root / "attempts" / "h.4.0" / "work" / "stdout") == ("alice", 0o600)
    again = _children(forker, "hb-user")
    assert alices not in again and sorted(again.values()) == sorted(helpers.values())


async def test_a_missing_user_fails_the_launch_naming_user_and_host(
    agent: tuple[Agent, Path],
) -> None:
    ag, _ = agent
    reply = await ag.call("launch", attempt="n.1.0", script="true", user="nosuchuser9")
    assert not reply["ok"] and reply["code"] == "no_user"
    assert reply["error"] == f"user 'nosuchuser9' does not exist on host {os.uname().nodename}"
    assert (await ag.ok("hello"))["attempts"] == []


async def test_the_relay_lets_in_the_jobs_user_only(agent: tuple[Agent, Path]) -> None:
    ag, root = agent
    release = root.parent / "release-r"
    await ag.launch(
        "r.1.0", 'while [ ! -e "$1" ]; do sleep 0.05; done', args=[str(release)], user="alice"
    )
    env_file = root / "attempts" / "r.1.0" / "env.json"
    env = await eventually(lambda: env_file.exists() and json.loads(env_file.read_text()))
    opening = (
        json.dumps(
            {
                "token": env["HPCBATCH_RELAY_TOKEN"],
                "attempt": "r.1.0",
                "host": "h",
                "command": "true",
            }
        ).encode()
        + b"\n"
    )
    bob = pwd.getpwnam("bob").pw_uid
    refused = await asyncio.to_thread(relay_client, env["HPCBATCH_RELAY"], opening, bob)
    assert f"uid {bob} does not own 'r.1.0'" in refused
    alice = pwd.getpwnam("alice").pw_uid
    let_in = asyncio.create_task(
        asyncio.to_thread(relay_client, env["HPCBATCH_RELAY"], opening, alice, 2.0)
    )
    opened = await ag.event(lambda e: e.get("ev") == "relay_open" and e["attempt"] == "r.1.0")
    assert opened["command"] == "true"
    await let_in
    release.touch()
    await ag.exit_event("r.1.0")


async def relayed(ag: Agent, key: str, attempt: str, command: str) -> tuple[str, dict[str, Any]]:
    """Run `command` relayed into `attempt` (the target side of hpcbatch-rsh); its stdout
    and its end."""
    await ag.ok("rspawn", key=key, attempt=attempt, command=command)
    end = await ag.event(lambda e: e.get("ev") == "rexit" and e["key"] == key)
    out = b"".join(
        base64.b64decode(e["data"])
        for e in ag.events
        if e.get("ev") == "rout" and e["key"] == key and e["fd"] == 1
    )
    return out.decode(), end


async def test_a_relayed_rank_is_the_user_in_the_jobs_directory_and_umask(
    agent: tuple[Agent, Path],
) -> None:
    """A rank relayed into alice's attempt runs as alice, under the job's umask, in the
    job's working directory, which the agent checked as alice (in a child with a deadline,
    not with its own rights in its loop)."""
    ag, root = agent
    cwd = root.parent / "alice-dir"
    cwd.mkdir(mode=0o700)
    pw = pwd.getpwnam("alice")
    os.chown(cwd, pw.pw_uid, pw.pw_gid)
    release = root.parent / "release-c"
    await ag.launch(
        "c.1.0", 'while [ ! -e "$1" ]; do sleep 0.05; done', args=[str(release)],
        user="alice", cwd=str(cwd), umask=0o027,
    )  # fmt: skip
    await eventually(lambda: (root / "attempts" / "c.1.0" / "pid").exists())
    out, end = await relayed(ag, "k1", "c.1.0", "id -un; pwd; umask; touch rank-file")
    assert end["code"] == 0 and out.split() == ["alice", str(cwd), "0027"], (out, end)
    assert owner(cwd / "rank-file") == ("alice", 0o640)
    # A directory alice can no longer reach is not entered, though root could.
    os.chown(cwd, 0, 0)
    out, end = await relayed(ag, "k2", "c.1.0", "id -un; pwd")
    assert end["code"] == 0 and out.split()[0] == "alice" and str(cwd) not in out, out
    release.touch()
    await ag.exit_event("c.1.0")


GROUPS_USER, EXTRA_GROUP = "hpcb-groups", "hpcb-extra"
"""A user of these tests alone, and a group they join and leave (alice's groups stay
as they are: other tests, run at the same time, use her)."""


def member(join: bool) -> None:
    subprocess.run(
        ["gpasswd", "--add" if join else "--delete", GROUPS_USER, EXTRA_GROUP],
        capture_output=True, timeout=30, check=join,
    )  # fmt: skip


@pytest.fixture
def extra_group() -> Iterator[int]:
    """GROUPS_USER, not (yet) in EXTRA_GROUP: the group's gid."""
    ensure_users([GROUPS_USER])
    try:
        gid = grp.getgrnam(EXTRA_GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", EXTRA_GROUP], capture_output=True, timeout=30, check=True)
        gid = grp.getgrnam(EXTRA_GROUP).gr_gid
    member(False)
    try:
        yield gid
    finally:
        member(False)


async def test_a_job_and_its_ranks_have_the_users_supplementary_groups(
    agent: tuple[Agent, Path], extra_group: int
) -> None:
    """The groups come from the host's group database (looked up once by the agent, set
    in the job's process without a lookup of its own), for the script and its ranks."""
    ag, root = agent
    member(True)
    release = root.parent / "release-g"
    await ag.launch(
        "g.1.0", 'id -G; while [ ! -e "$1" ]; do sleep 0.05; done', args=[str(release)],
        user=GROUPS_USER,
    )  # fmt: skip
    await eventually(lambda: (root / "attempts" / "g.1.0" / "pid").exists())
    out, end = await relayed(ag, "g1", "g.1.0", "id -G")
    assert end["code"] == 0 and str(extra_group) in out.split(), out
    release.touch()
    assert (await ag.exit_event("g.1.0"))["code"] == 0
    assert str(extra_group) in (await ag.read_all("g.1.0")).split()


def test_a_users_groups_are_looked_up_once_for_a_while(
    extra_group: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lookup` serves a user's passwd entry and groups from its cache for
    LOOKUP_VALID_S (no NSS lookup per launch); a change to the groups is seen after."""
    before = runas.lookup(GROUPS_USER, "h")
    assert extra_group not in before["groups"]
    assert before["gid"] in before["groups"]
    member(True)
    assert runas.lookup(GROUPS_USER, "h") == before  # cached
    later = time.monotonic() + runas.LOOKUP_VALID_S + 1
    monkeypatch.setattr(runas.time, "monotonic", lambda: later)
    assert extra_group in runas.lookup(GROUPS_USER, "h")["groups"]
    with pytest.raises(runas.BadRequest) as missing:
        runas.lookup("nosuchuser9", "h")
    assert missing.value.code == "no_user"
