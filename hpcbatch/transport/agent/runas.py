"""Jobs run as their submitter: the user switch and the user's own files.

Why it exists: on a host with `run_as = "submitter"` (docs/security.md) every
process of a job runs under the submitting user's account, and the job's
files are the user's, made by the user's process. The agent (logged in as
root: the trust boundary is documented in docs/security.md) keeps what must
not be forged in the attempt directory, which stays root's (mode 0711: the
user may pass through it, not list it):

    attempts/<attempt>/        root 0711  pid exit kill meta.json env.json collected
    attempts/<attempt>/work/   user 0700  script stdout stderr hostfiles (HPCBATCH_ATTEMPT_DIR)

Root makes the empty `work/` and gives it to the user; `prepare` makes the
job's files in it in a child that has become the user (umask 077), and
hands the opened output files back to the agent over a socket (SCM_RIGHTS),
so that no file of the user's is opened by root on the user's behalf.
`become` is the switch itself (supplementary groups, gid, uid), in the job's
process before it execs and in relayed commands; the groups are those `lookup`
found, which keeps each user's entry for LOOKUP_VALID_S, so that a launch does
no NSS lookup (docs/security.md, "What running as the submitter costs").

Standard library only (Python 3.8+): uploaded with the rest of the agent.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import signal
import socket
import time
from typing import TYPE_CHECKING, Any, TypeVar

from hpcbatch.transport.agent.fdpass import receive, send
from hpcbatch.transport.agent.protocol import BadRequest
from hpcbatch.transport.agent.userpaths import DEADLINE_S, check_launch_paths, open_output

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Spawn = Callable[[str, Mapping[str, Any], Sequence[int]], int]
    After = Callable[[float, Callable[[], None]], None]

T = TypeVar("T")

WORK = "work"
"""The user's directory inside a root-owned attempt directory."""

DEFAULT_UMASK = 0o077
"""The job's umask when the submitter's is not known (a request without `umask`)."""

# Variables of the agent's own (root's) login session that would point a job of
# another user at root's runtime directory, session bus or mail.
ROOT_SESSION = frozenset({"XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "MAIL", "XDG_SESSION_ID",
                          "XDG_SESSION_TYPE", "XDG_SESSION_CLASS"})  # fmt: skip


def want_umask(req: dict[str, Any]) -> int:
    """The request's `umask` (the submitter's, captured by the CLI as Slurm's SLURM_UMASK),
    DEFAULT_UMASK when absent."""
    value = req.get("umask")
    if value is None:
        return DEFAULT_UMASK
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise BadRequest(f"field 'umask' must be an integer from 0 to 0o777, got {value!r}")
    return value


LOOKUP_VALID_S = 30.0
"""How long a user's passwd entry and groups, looked up once, serve later launches:
a launch then pays no NSS lookup (files, SSSD, LDAP: none to several ms each; Slurm
caches groups for 600 s). A change to the user's groups reaches jobs started after
this. A missing user is never cached (one made now is found at the next launch)."""

_looked_up: dict[str, tuple[float, dict[str, Any]]] = {}


def lookup(user: str, host: str) -> dict[str, Any]:
    """The user's passwd entry and supplementary groups on this host, as the switch
    needs them; `no_user` if none. The agent must be root to switch users."""
    now = time.monotonic()
    hit = _looked_up.get(user)
    if hit is not None and now < hit[0]:
        return dict(hit[1])
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise BadRequest(f"user {user!r} does not exist on host {host}", "no_user") from None
    if os.geteuid() != 0:
        login = pwd.getpwuid(os.geteuid()).pw_name
        raise BadRequest(
            f"the agent on {host} runs as {login}, not root, and cannot run jobs as {user}: "
            'run_as = "submitter" needs the agent to log in as root (docs/security.md)'
        )
    if pw.pw_uid == 0:
        raise BadRequest(f"refusing to run a job as root ({user}) on host {host}")
    entry = {"name": pw.pw_name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": pw.pw_dir,
             "shell": pw.pw_shell or "/bin/sh",
             "groups": os.getgrouplist(pw.pw_name, pw.pw_gid)}  # fmt: skip
    _looked_up[user] = (now + LOOKUP_VALID_S, entry)
    return dict(entry)


def become(user: dict[str, Any]) -> None:
    """Switch this process to the user for good: groups, then gid, then uid. The groups
    are those `lookup` found (no NSS lookup in the job's process); an entry without
    them (a record written by an older agent) has them looked up here."""
    groups = looked_up_groups(user)
    if groups is not None:
        os.setgroups(groups)
    else:
        os.initgroups(user["name"], user["gid"])
    os.setgid(user["gid"])
    os.setuid(user["uid"])
    if os.getuid() != user["uid"] or os.geteuid() != user["uid"]:  # never run as root
        raise OSError(f"could not become {user['name']}")


def looked_up_groups(user: dict[str, Any]) -> list[int] | None:
    """The supplementary groups `lookup` found, or None for an entry without them."""
    groups = user.get("groups")
    ok = isinstance(groups, list) and all(isinstance(g, int) for g in groups)
    return groups if ok else None


def as_user(user: dict[str, Any], fn: Callable[[], T]) -> T:
    """`fn()` with this (root) process's effective ids switched to the user's for the
    call (groups, then gid, then uid; and back): the kernel checks what it does as the
    user's, as it would in the user's own process."""
    groups, egid, euid = os.getgroups(), os.getegid(), os.geteuid()
    try:  # a switch refused half-way is undone as well
        os.setgroups(user["groups"])
        os.setegid(user["gid"])
        os.seteuid(user["uid"])
        return fn()
    finally:
        os.seteuid(euid)
        os.setegid(egid)
        os.setgroups(groups)


def user_env(user: dict[str, Any]) -> dict[str, str]:
    """HOME, USER, LOGNAME (and SHELL) from the host's passwd, as a login would set them;
    XDG_RUNTIME_DIR where the user has one (a systemd login of theirs: rootless podman
    keeps its state there; without it, podman uses its own directory under /tmp)."""
    env = {"HOME": user["home"], "USER": user["name"], "LOGNAME": user["name"],
           "SHELL": user["shell"]}  # fmt: skip
    run = f"/run/user/{user['uid']}"
    try:
        if os.stat(run).st_uid == user["uid"]:
            env["XDG_RUNTIME_DIR"] = run
    except OSError:
        pass
    return env


def host_env(user: dict[str, Any] | None) -> dict[str, str]:
    """The agent's environment as the base of a job's: without root's session variables
    when the job is another user's."""
    if user is None:
        return dict(os.environ)
    return {k: v for k, v in os.environ.items() if k not in ROOT_SESSION}


def make_work_dir(user: dict[str, Any], udir: str) -> None:
    """The user's empty directory in the root-owned attempt directory (root makes it:
    the user cannot write there; an empty directory of root's own is no race)."""
    os.mkdir(udir, 0o700)
    os.chown(udir, user["uid"], user["gid"])


HELPER_IDLE_S = 60.0
"""How long a user's helper is kept after its last launch (then let go: it exits)."""


class _Helper:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock, self.used = pid, sock, time.monotonic()

    def usable(self) -> bool:
        """Nothing on its socket between requests: there, only its end (it was killed:
        the user may kill their own helper) would be."""
        ready, _, _ = select.select([self.sock], [], [], 0)
        return not ready


class UserHelpers:
    """The launches' user-side work (`prepare`), each user's in a process of theirs kept
    for it: forked once (by the forker), switched to the user once, it serves that
    user's launches until HELPER_IDLE_S after the last one. A launch then pays a round
    trip on a socket, not a fork and an exit (about 3 ms of CPU a job). A helper that
    misses DEADLINE_S (a hung mount) is killed and that launch refused; one that ended
    (the user may kill their own) is replaced at the next launch."""

    def __init__(self, spawn: Spawn, after: After) -> None:
        self.spawn = spawn  # Forker.spawn: the helpers are the forker's children
        self.after = after  # the agent's timers
        self.kept: dict[tuple[int, int, tuple[int, ...]], _Helper] = {}
        after(HELPER_IDLE_S, self.sweep)

    def prepare(
        self, user: dict[str, Any], udir: str, script: str, files: dict[str, str],
        cwd: str, outputs: dict[str, str | None], flags: int, umask: int = DEFAULT_UMASK,
    ) -> tuple[dict[str, Any], list[int]]:  # fmt: skip
        """As the user, with a deadline: check the working directory and outputs
        (`check_launch_paths`), write the script and files into `udir` (umask 077), open
        the outputs (created under the job's `umask`). Returns the checked paths and the
        stdout and stderr descriptors (the same file twice: one descriptor for both)."""
        key = (user["uid"], user["gid"], tuple(user.get("groups") or ()))
        helper = self._helper(key, user)
        args = {"udir": udir, "script": script, "files": files, "cwd": cwd,
                "outputs": outputs, "flags": flags, "umask": umask}  # fmt: skip
        name = user["name"]
        try:
            send(helper.sock, args, [])
            got = receive(helper.sock)
        except socket.timeout:  # noqa: UP041 (an OSError of its own on 3.8-3.9 hosts; 3.10+: TimeoutError)
            self._drop(key)
            raise BadRequest(f"preparing the job's files as {name} took over {DEADLINE_S:g} s",
                             "bad_path") from None  # fmt: skip
        except (OSError, ValueError):
            got = None
        if got is None:
            self._drop(key)
            raise BadRequest(f"preparing the job's files as {name} failed: its process ended",
                             "bad_path")  # fmt: skip
        helper.used = time.monotonic()
        reply, fds = got
        if isinstance(reply, dict) and reply.get("ok") and len(fds) == 2:
            return dict(reply["checked"]), fds
        for fd in fds:
            os.close(fd)
        error = reply.get("error") if isinstance(reply, dict) else None
        code = reply.get("code") if isinstance(reply, dict) else None
        raise BadRequest(str(error or f"preparing the job's files as {name} failed"),
                         code if code in ("bad_path", "no_user") else "bad_path")  # fmt: skip

    def _helper(self, key: tuple[int, int, tuple[int, ...]], user: dict[str, Any]) -> _Helper:
        helper = self.kept.get(key)
        if helper is not None and not helper.usable():
            self._drop(key)
            helper = None
        if helper is None:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                pid = self.spawn("user_helper", {"user": user}, [theirs.fileno()])
            except OSError as exc:
                ours.close()
                raise BadRequest(f"cannot start a process as {user['name']}: {exc}",
                                 "bad_path") from None  # fmt: skip
            finally:
                theirs.close()
            ours.settimeout(DEADLINE_S)
            helper = self.kept[key] = _Helper(pid, ours)
        return helper

    def _drop(self, key: tuple[int, int, tuple[int, ...]]) -> None:
        helper = self.kept.pop(key, None)
        if helper is not None:
            helper.sock.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(helper.pid, signal.SIGKILL)  # the forker's child: the kernel reaps it

    def sweep(self) -> None:
        """Let go of the helpers idle for HELPER_IDLE_S (each exits at its socket's end);
        again in a while."""
        now = time.monotonic()
        for key, helper in list(self.kept.items()):
            if now - helper.used > HELPER_IDLE_S:
                self.kept.pop(key)
                helper.sock.close()
        self.after(HELPER_IDLE_S / 4, self.sweep)

    def close(self) -> None:
        for key in list(self.kept):
            self._drop(key)


def helper_entry(args: dict[str, Any], fds: list[int]) -> None:
    """The forker's entry for a user's helper: become the user, then answer `prepare`'s
    requests on the socket handed over until the agent lets go."""
    sock = socket.socket(fileno=fds[0])
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write("hb-user")  # as procs.set_name names the agent's other processes
    user = args["user"]
    failed = None
    try:
        become(user)
    except OSError as exc:  # answered to each request: never anything done as root
        failed = f"cannot become {user['name']}: {exc}"
    os.umask(0o077)
    while True:
        got = receive(sock)
        if got is None:
            return
        req, passed = got
        for fd in passed:
            os.close(fd)
        if failed:
            send(sock, {"ok": False, "error": failed}, [])
            continue
        try:
            checked, opened = _make_as_user(
                req["udir"], req["script"], req["files"], req["cwd"], req["outputs"],
                req["flags"], req["umask"],
            )  # fmt: skip
        except BadRequest as exc:
            send(sock, {"ok": False, "code": exc.code, "error": str(exc)}, [])
            continue
        except Exception as exc:
            send(sock, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, [])
            continue
        try:
            send(sock, {"ok": True, "checked": checked}, opened)
        finally:
            for fd in set(opened):
                os.close(fd)


def _make_as_user(
    udir: str,
    script: str,
    files: dict[str, str],
    cwd: str,
    streams: dict[str, str | None],
    flags: int,
    umask: int,
) -> tuple[dict[str, Any], list[int]]:
    """In the user's helper (the user already, umask 077): one launch's files."""
    checked = check_launch_paths(cwd, streams)
    outputs = [checked[s] or os.path.join(udir, s) for s in ("stdout", "stderr")]
    fd = os.open(os.path.join(udir, "script"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(fd, "wb") as f:
        f.write(script.encode())
    for name, text in files.items():
        fd = os.open(os.path.join(udir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    opened: dict[str, int] = {}
    fds = []
    for path in outputs:
        real = os.path.realpath(path)
        if real not in opened:
            try:
                opened[real] = open_output(path, flags, umask)
            except OSError as exc:
                for fd in opened.values():  # the helper lives on: nothing left open
                    os.close(fd)
                raise BadRequest(f"cannot open output file: {exc}", "bad_path") from None
        fds.append(opened[real])
    return checked, fds
