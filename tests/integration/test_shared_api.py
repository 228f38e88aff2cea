"""A shared cluster through the API: real local users, real uids on the real socket.

One system controller (`hpcbatch controller --system --detach`, run by root as
a service would be) serves three real accounts: alice and bob (ordinary users)
and carol (an administrator through the inventory's `@hbadmins` group). Each
runs the real CLI under their own uid with `runuser`. Checked: what bob sees of
alice's job (its public row, no script, environment or output), what alice
and the administrators see (everything), definitions' owners, the modes of the
store, its WAL and the log (and that bob cannot grep a secret out of them), the
per-user connection cap and the idle timeout, an oversized request, and
control characters in names.

Root is needed to create users and to run commands as them: CI runs as root;
elsewhere the module is skipped with that reason.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcbatch.client import Client, ClientError
from hpcbatch.sandbox import Sandbox

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates local users and runs the CLI as them"
)

USERS = ("alice", "bob", "carol")
ADMIN_GROUP = "hbadmins"
SECRET = "s3cr3t-API-TOKEN-4711"
DEF_SECRET = "pw-of-the-definition-0815"
MAX_PER_USER = 4
IDLE_S = 3.0
REPO = Path(__file__).resolve().parents[2]


def _ensure_user(name: str, groups: tuple[str, ...] = ()) -> None:
    """A real local account with uid >= 1000; idempotent, and safe when another test
    session creates the same account at the same moment."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "-K", "UID_MIN=1000", name],
            capture_output=True,
            check=False,
        )
    assert pwd.getpwnam(name).pw_uid >= 1000, f"{name} has a system uid"
    for group in groups:
        subprocess.run(["usermod", "-a", "-G", group, name], check=True, capture_output=True)


@pytest.fixture(scope="module")
def users() -> None:
    subprocess.run(["groupadd", "-f", ADMIN_GROUP], check=True, capture_output=True)
    _ensure_user("alice")
    _ensure_user("bob")
    _ensure_user("carol", (ADMIN_GROUP,))
    assert "carol" in grp.getgrnam(ADMIN_GROUP).gr_mem


@dataclass
class Shared:
    """The running system controller and how to reach it as each user."""

    state: Path  # the controller's state directory (HPCBATCH_SYSTEM_HOME)
    sock: Path  # its socket (HPCBATCH_SYSTEM_SOCKET: /run/hpcbatch/controller.sock's stand-in)
    code: Path  # a copy of the package every user can read
    work: Path  # a directory every user can write (job scripts, definition files)

    def env(self, user: str) -> dict[str, str]:
        # Nothing that names the controller but the system socket's location, which
        # stands in for /run/hpcbatch/controller.sock (the test must not take /run).
        home = pwd.getpwnam(user).pw_dir
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": home,
            "PYTHONPATH": str(self.code),
            "HPCBATCH_SYSTEM_SOCKET": str(self.sock),
        }

    def run(self, user: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`hpcbatch ARGV` as `user` (their uid, groups and environment)."""
        cmd = ["runuser", "-u", user, "--", "env", "-i"]
        cmd += [f"{k}={v}" for k, v in self.env(user).items()]
        cmd += [_user_python(), "-m", "hpcbatch.cli.main", *argv]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=str(self.work)
        )

    def ok(self, user: str, *argv: str) -> str:
        out = self.run(user, *argv)
        assert out.returncode == 0, f"{user}: hpcbatch {' '.join(argv)}: {out.stderr}"
        return out.stdout


def as_user(user: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """A process of `user` (their uid, gid and groups) started directly, with no
    runuser in between: killing it ends it, and the connections it holds."""
    pw = pwd.getpwnam(user)
    groups = os.getgrouplist(user, pw.pw_gid)
    return subprocess.Popen(
        argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups, env=env,
        stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _user_python() -> str:
    """A Python every user may run: the CLI needs the standard library only (this venv's
    interpreter may live in root's home)."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


@pytest.fixture(scope="module")
def shared(users: None, sandbox: Sandbox) -> Iterator[Shared]:
    base = Path(tempfile.mkdtemp(prefix="hb-shared-"))
    base.chmod(0o755)
    code = base / "code"
    shutil.copytree(REPO / "hpcbatch", code / "hpcbatch",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    work = base / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o1777)
    inventory = base / "inventory.toml"
    text = sandbox.inventory.read_text()
    inventory.write_text(
        f'admins = ["@{ADMIN_GROUP}"]\n'
        + text
        + f"\n[api]\nmax_connections_per_user = {MAX_PER_USER}\nidle_timeout_s = {IDLE_S}\n"
    )
    state, sock = base / "state", base / "run" / "hpcbatch" / "controller.sock"
    env = {**os.environ, "HPCBATCH_SYSTEM_HOME": str(state), "HPCBATCH_SYSTEM_SOCKET": str(sock)}
    env.pop("HPCBATCH_SOCKET", None)
    env.pop("HPCBATCH_HOME", None)
    argv = [sys.executable, "-m", "hpcbatch.cli.main", "controller", "--system", "--detach"]
    started = subprocess.run(
        [*argv, "-i", str(inventory), "--heartbeat", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + started.stdout
    shared = Shared(state=state, sock=sock, code=code, work=work)
    try:
        _until_hosts_up(sock, len(sandbox.hosts))
        yield shared
    finally:
        pid = int((state / "controller.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        shutil.rmtree(base, ignore_errors=True)


def _until_hosts_up(sock: Path, want: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with Client(sock) as client:
            if sum(h["state"] == "UP" for h in client.call("hosts")) >= want:
                return
        assert time.monotonic() < deadline, "the sandbox hosts never came UP"
        time.sleep(0.1)


def _script(shared: Shared, name: str, text: str) -> Path:
    path = shared.work / name
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def alices_job(shared: Shared) -> int:
    """A finished job of alice's with a secret in its environment and in its output."""
    script = _script(shared, "alice.sh", '#!/bin/sh\necho "alice says $API_TOKEN"\n')
    out = shared.ok("alice", "submit", "--parsable", "--wait", "-J", "alices-job",
                    f"--export=API_TOKEN={SECRET}", str(script))  # fmt: skip
    return int(out.strip().splitlines()[0])


# --------------------------------------------------------------------------- the socket


def test_every_user_finds_the_system_controller_without_settings(shared: Shared) -> None:
    for user in USERS:
        assert "controller" in shared.ok(user, "ping")
    assert stat.S_IMODE(shared.sock.stat().st_mode) == 0o666
    assert stat.S_IMODE(shared.sock.parent.stat().st_mode) == 0o755


# --------------------------------------------------------------------------- privacy


def test_bob_sees_only_the_public_row_of_alices_job(shared: Shared, alices_job: int) -> None:
    job = str(alices_job)
    shown = json.loads(shared.ok("bob", "show", job, "--json"))
    assert shown["private"] is True and shown["user"] == "alice"
    assert shown["name"] == "alices-job" and shown["state"] == "SUCCEEDED"
    assert not {"request", "attempts", "transitions"} & set(shown)
    text = shared.ok("bob", "show", job)
    assert "alices-job" in text and "administrators only" in text and SECRET not in text
    listed = shared.ok("bob", "jobs", "--all", "--json")
    assert SECRET not in listed
    (row,) = [j for j in json.loads(listed) if j["id"] == alices_job]
    assert row["private"] is True and row["user"] == "alice"
    waited = shared.ok("bob", "wait", job, "--json")
    assert SECRET not in waited and json.loads(waited)[0]["private"] is True
    logs = shared.run("bob", "logs", job)
    assert logs.returncode == 1 and SECRET not in logs.stdout + logs.stderr
    assert f"job {job} belongs to alice" in logs.stderr


def test_alice_and_the_admins_see_all_of_it(shared: Shared, alices_job: int) -> None:
    job = str(alices_job)
    for user in ("alice", "carol", "root"):  # the owner, an @group admin, root
        shown = json.loads(shared.ok(user, "show", job, "--json"))
        assert shown["request"]["env"]["API_TOKEN"] == SECRET, user
        assert "private" not in shown and shown["attempts"]
        assert f"alice says {SECRET}" in shared.ok(user, "logs", job), user


def test_the_watch_stream_shows_other_users_jobs_as_public_rows(shared: Shared) -> None:
    code = (
        "import json, sys\n"
        "from hpcbatch.client import Client\n"
        f"c = Client({str(shared.sock)!r}, timeout=60)\n"
        "for e in c.watch():\n"
        "    if e.get('event') == 'job' and e['job']['name'] == sys.argv[1]:\n"
        "        print(json.dumps(e['job']), flush=True)\n"
        "        if e['job']['state'] in ('SUCCEEDED', 'FAILED'): break\n"
    )
    watchers = {
        user: as_user(user, [_user_python(), "-c", code, "watched-job"], shared.env(user))
        for user in ("bob", "carol")
    }
    try:
        time.sleep(0.5)  # both subscribed (a missed event would only leave a watcher waiting)
        script = _script(shared, "watched.sh", "#!/bin/sh\ntrue\n")
        shared.ok("alice", "submit", "--wait", "-J", "watched-job",
                  f"--export=API_TOKEN={SECRET}", str(script))  # fmt: skip
        seen = {user: p.communicate(timeout=60)[0] for user, p in watchers.items()}
    finally:
        for p in watchers.values():
            _stop(p)
    bobs = [json.loads(line) for line in seen["bob"].splitlines()]
    carols = [json.loads(line) for line in seen["carol"].splitlines()]
    assert bobs and all(e["private"] and SECRET not in json.dumps(e) for e in bobs)
    assert carols and not any("private" in e for e in carols)
    assert carols[-1]["exit_code"] == 0


# --------------------------------------------------------------------------- definitions


def test_definitions_have_owners_and_private_environment_values(shared: Shared) -> None:
    body = _script(shared, "def.toml", 'name = "alicedef"\ncommand = ["true"]\n'
                   f'[environment]\nDB_PASSWORD = "{DEF_SECRET}"\n')  # fmt: skip
    shared.ok("alice", "definitions", "register", str(body))
    taken = shared.run("bob", "definitions", "register", str(body))
    assert taken.returncode != 0
    assert "job definition alicedef belongs to alice" in taken.stderr
    seen = json.loads(shared.ok("bob", "definitions", "show", "alicedef", "--json"))
    assert seen["definition"]["environment"] == {"DB_PASSWORD": None} and seen["redacted"]
    assert DEF_SECRET not in shared.ok("bob", "definitions", "list", "--json")
    assert DEF_SECRET not in shared.ok("bob", "definitions", "show", "alicedef")
    for user in ("alice", "carol"):
        mine = json.loads(shared.ok(user, "definitions", "show", "alicedef", "--json"))
        assert mine["definition"]["environment"] == {"DB_PASSWORD": DEF_SECRET}, user
    # An administrator may register the next revision; the name stays alice's.
    shared.ok("carol", "definitions", "register", str(body))
    latest = json.loads(shared.ok("bob", "definitions", "show", "alicedef", "--json"))
    assert (latest["revision"], latest["owner"], latest["user"]) == (2, "alice", "carol")


# --------------------------------------------------------------------------- files


def test_the_store_its_wal_and_the_log_are_the_controllers_alone(
    shared: Shared, alices_job: int
) -> None:
    state = shared.state
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    db = state / "hpcbatch.db"
    files = [db, db.with_name("hpcbatch.db-wal"), db.with_name("hpcbatch.db-shm"),
             db.with_name("hpcbatch.db.lock"), state / "controller.log"]  # fmt: skip
    for path in files:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # The secret is in the store (so the modes matter), and bob cannot get at it.
    assert any(SECRET.encode() in p.read_bytes() for p in files[:2])
    grep = subprocess.run(
        ["runuser", "-u", "bob", "--", "grep", "-r", "-l", SECRET, str(state.parent)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert grep.returncode != 0 and grep.stdout == "", grep.stdout
    assert "Permission denied" in grep.stderr


# --------------------------------------------------------------------------- job control


def test_only_an_administrator_releases_an_administrators_hold(shared: Shared) -> None:
    """scontrol's rule, as real users on the real socket: an admin hold (root's, or
    carol's through @hbadmins) is JobHeldAdmin; alice, the owner, cannot release it
    nor turn it into her own hold; bob cannot touch her job; carol releases it."""
    script = _script(shared, "later.sh", "#!/bin/sh\ntrue\n")
    job = shared.ok("alice", "submit", "--parsable", "--begin", "now+1hour", str(script))
    job = job.strip()
    assert "held" in shared.ok("root", "hold", job)
    shown = json.loads(shared.ok("alice", "show", job, "--json"))
    assert shown["state"] == "PENDING" and shown["reason"].startswith("JobHeldAdmin:"), shown
    refused = shared.run("alice", "release", job)
    assert refused.returncode == 1, refused
    assert "refused: the job is held by an administrator" in refused.stdout, refused.stdout
    again = shared.run("alice", "hold", job)
    assert again.returncode == 1 and "already held by an administrator" in again.stdout
    assert json.loads(shared.ok("alice", "show", job, "--json"))["hold"] == "admin"
    bobs = shared.run("bob", "release", job)
    assert bobs.returncode == 1 and f"job {job}: not your job" in bobs.stderr, bobs
    assert "released" in shared.ok("carol", "release", job)
    shown = json.loads(shared.ok("alice", "show", job, "--json"))
    assert shown["state"] == "RUNNABLE" and shown["hold"] is None, shown
    # Her own hold she may set and release.
    assert "held" in shared.ok("alice", "hold", job)
    shown = json.loads(shared.ok("alice", "show", job, "--json"))
    assert shown["reason"].startswith("JobHeldUser:"), shown
    assert "released" in shared.ok("alice", "release", job)
    shared.ok("alice", "cancel", job)


def test_a_user_may_lower_a_running_jobs_time_limit_but_not_raise_it(shared: Shared) -> None:
    script = _script(shared, "long-limit.sh", "#!/bin/sh\nsleep 60\n")
    job = shared.ok("alice", "submit", "--parsable", "-t", "1", str(script)).strip()
    deadline = time.monotonic() + 30
    while json.loads(shared.ok("alice", "show", job, "--json"))["state"] != "RUNNING":
        assert time.monotonic() < deadline, "alice's job never ran"
        time.sleep(0.1)
    raised = shared.run("alice", "update", job, "--time", "5")
    assert raised.returncode == 1, raised
    assert "a running job's time limit can only be lowered" in raised.stderr, raised.stderr
    assert "updated" in shared.ok("alice", "update", job, "--time", "0:03")
    waited = shared.run("alice", "wait", job, "--json")
    assert waited.returncode == 1, waited  # wait's status: a job failed
    done = json.loads(waited.stdout)[0]
    assert done["state"] == "FAILED" and "time limit of 0:03" in done["reason"], done
    assert done["ended"] - done["started"] < 15, done


# --------------------------------------------------------------------------- limits


def _connect_as(shared: Shared, user: str, count: int, busy: bool) -> subprocess.Popen[str]:
    """A process of `user` holding `count` connections open (each a `watch` stream,
    never idle, if `busy`); it prints "held", then what ends each connection."""
    code = (
        "import socket, sys, time\n"
        f"n, busy = {count}, {busy}\n"
        "socks = []\n"
        "for _ in range(n):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "    if busy:\n"
        '        s.sendall(b\'{"id":1,"op":"watch"}\\n\'); s.recv(65536)\n'
        "    socks.append(s)\n"
        "print('held', flush=True)\n"
        "t0 = time.monotonic()\n"
        "for s in socks:\n"
        "    s.settimeout(30); data = s.recv(65536)\n"
        "    print('closed', round(time.monotonic() - t0, 2), data, flush=True)\n"
    )
    return as_user(user, [_user_python(), "-c", code, str(shared.sock)], shared.env(user))


def test_one_user_cannot_take_every_connection(shared: Shared) -> None:
    holder = _connect_as(shared, "alice", MAX_PER_USER, busy=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = shared.run("alice", "ping")
        assert refused.returncode == 1
        assert "too many open connections" in refused.stderr
        assert f"limit {MAX_PER_USER}" in refused.stderr
        shared.ok("bob", "ping")  # others are not starved
        shared.ok("root", "ping")
    finally:
        _stop(holder)
    deadline = time.monotonic() + 10
    while shared.run("alice", "ping").returncode != 0:  # her connections are given back
        assert time.monotonic() < deadline, "alice's closed connections were never released"
        time.sleep(0.1)


def test_a_wait_whose_client_went_away_gives_its_connection_back(shared: Shared) -> None:
    script = _script(shared, "long.sh", "#!/bin/sh\nsleep 120\n")
    job = int(shared.ok("alice", "submit", "--parsable", str(script)).strip())
    code = (
        "import json, socket, sys, time\n"
        "socks = []\n"
        f"for _ in range({MAX_PER_USER}):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        f"    s.sendall(json.dumps({{'id': 1, 'op': 'wait', 'job_ids': [{job}],"
        " 'timeout_s': 300}).encode() + b'\\n')\n"
        "    socks.append(s)\n"
        "time.sleep(1)\n"
        "print('held', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = as_user("alice", [_user_python(), "-c", code, str(shared.sock)], shared.env("alice"))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = shared.run("alice", "ping")  # four waits in progress: her limit
        assert refused.returncode == 1 and "too many open connections" in refused.stderr
    finally:
        _stop(holder)
    try:
        deadline = time.monotonic() + 5  # not the job's 120 s, nor the waits' 300 s
        while shared.run("alice", "ping").returncode != 0:
            assert time.monotonic() < deadline, "the departed waits kept their connections"
            time.sleep(0.1)
    finally:
        shared.ok("alice", "cancel", str(job))


def test_an_idle_connection_is_closed(shared: Shared) -> None:
    holder = _connect_as(shared, "bob", 1, busy=False)
    out, _ = holder.communicate(timeout=30)
    lines = out.splitlines()
    assert lines[0] == "held"
    _, after, data = lines[1].split(" ", 2)
    assert data == "b''"  # closed by the controller, without a word
    assert IDLE_S - 0.5 <= float(after) <= IDLE_S + 5


# --------------------------------------------------------------------------- bad input


def test_an_oversized_request_fails_with_request_too_large(shared: Shared) -> None:
    big = _script(shared, "big.sh", "#!/bin/sh\n" + "#" * (17 * 2**20) + "\ntrue\n")
    out = shared.run("alice", "submit", str(big))
    assert out.returncode == 1 and "request too large" in out.stderr, out.stderr
    # The same refused by the controller itself (the client's own check lifted): the
    # connection it closes mid-request is still answered, not a silent success.
    import hpcbatch.client as client_module

    saved = client_module.MAX_REQUEST
    client_module.MAX_REQUEST = 64 * 2**20
    try:
        with Client(shared.sock) as client, pytest.raises(ClientError) as err:
            client.call("submit", request={"script": "#" * (17 * 2**20)})
    finally:
        client_module.MAX_REQUEST = saved
    assert err.value.kind == "too_large" and "request too large" in err.value.message


def test_control_characters_are_refused_naming_the_field(shared: Shared) -> None:
    script = _script(shared, "plain.sh", "#!/bin/sh\ntrue\n")
    out = shared.run("alice", "submit", "-J", "evil\x1b]0;pwned\x07", str(script))
    assert out.returncode == 1
    assert "name: " in out.stderr and "control character (\\x1b at position 4)" in out.stderr
    assert "\x1b" not in out.stderr
    out = shared.run("alice", "submit", "-o", "/tmp/out\u202etxt.sh", str(script))
    assert out.returncode == 1 and "output: " in out.stderr and "\\u202e" in out.stderr
    assert "evil" not in shared.ok("bob", "jobs", "--all")


def test_a_socket_left_unread_gets_the_refusal_before_the_close(shared: Shared) -> None:
    """The controller reads a refused connection's request before closing it: a Unix
    socket closed with unread input is reset, and the client would lose the answer."""
    holder = _connect_as(shared, "alice", MAX_PER_USER, busy=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = (
            "import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            's.sendall(b\'{"id":7,"op":"ping"}\\n\')\n'
            "print(s.makefile().readline(), end='')\n"
        )
        out = subprocess.run(
            ["runuser", "-u", "alice", "--", _user_python(), "-c", code, str(shared.sock)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        reply = json.loads(out.stdout)
        assert (reply["id"], reply["ok"], reply["kind"]) == (7, False, "busy")
    finally:
        _stop(holder)


def test_no_socket_anywhere_names_where_it_looked(shared: Shared, tmp_path: Path) -> None:
    env = {**shared.env("bob"), "HPCBATCH_SYSTEM_SOCKET": str(tmp_path / "none.sock")}
    cmd = ["runuser", "-u", "bob", "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
           _user_python(), "-m", "hpcbatch.cli.main", "ping"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    home = pwd.getpwnam("bob").pw_dir
    assert out.returncode == 1 and f"no controller socket at {home}/.hpcbatch" in out.stderr
    assert "/run/hpcbatch/controller.sock" in out.stderr


def test_a_request_pipelined_behind_a_wait_is_answered_after_it(shared: Shared) -> None:
    script = _script(shared, "brief.sh", "#!/bin/sh\nsleep 1\n")
    job = int(shared.ok("alice", "submit", "--parsable", str(script)).strip())
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(shared.sock))
        wait = {"id": 1, "op": "wait", "job_ids": [job], "timeout_s": 60}
        s.sendall(json.dumps(wait).encode() + b"\n" + b'{"id": 2, "op": "ping"}\n')
        replies = [json.loads(line) for line in _lines(s, 2)]
    assert [r["id"] for r in replies] == [1, 2] and all(r["ok"] for r in replies)
    assert replies[0]["result"][0]["state"] == "SUCCEEDED"


def _lines(s: socket.socket, count: int) -> list[str]:
    data = b""
    while data.count(b"\n") < count:
        chunk = s.recv(65536)
        assert chunk, "the controller closed the connection"
        data += chunk
    return data.decode().splitlines()[:count]


def test_a_reload_changes_the_admins_for_the_next_connection(
    shared: Shared, alices_job: int
) -> None:
    """`admins` read again by `hpcbatch reload` (root edits the file): bob, added, sees
    alice's job whole at his next command, and its public row again once removed. A
    reload whose webhook secret file cannot be read changes nothing, bob included."""
    inventory = shared.state.parent / "inventory.toml"
    text = inventory.read_text()
    line = f'admins = ["@{ADMIN_GROUP}"]'
    assert line in text
    job = str(alices_job)
    try:
        broken = text.replace(line, f'admins = ["@{ADMIN_GROUP}", "bob"]') + (
            '\n[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:9/"\n'
            f'secret_file = "{shared.state.parent}/no-such.secret"\n'
        )
        inventory.write_text(broken)
        refused = shared.run("root", "reload")
        assert refused.returncode != 0, refused.stdout
        assert "reload: nothing changed: webhook ops: cannot read secret_file" in refused.stderr
        assert json.loads(shared.ok("bob", "show", job, "--json"))["private"] is True
        inventory.write_text(text.replace(line, f'admins = ["@{ADMIN_GROUP}", "bob"]'))
        assert "settings changed: admins" in shared.ok("root", "reload")
        shown = json.loads(shared.ok("bob", "show", job, "--json"))
        assert shown["request"]["env"]["API_TOKEN"] == SECRET
    finally:
        inventory.write_text(text)
        assert "settings changed: admins" in shared.ok("root", "reload")
    assert json.loads(shared.ok("bob", "show", job, "--json"))["private"] is True
