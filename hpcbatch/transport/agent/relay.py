"""The agent's half of the rsh relay: commands a job starts on its other nodes.

MPI launchers (OpenMPI's plm_rsh_agent, MPICH/Hydra's launcher) and srun
start processes on the job's other nodes with an rsh-like program. hpcbatch's,
`hpcbatch-rsh`, needs no SSH between compute nodes: it connects to this agent
on a Unix socket, the agent forwards over its SSH channel to the controller,
and the controller asks the target node's agent to run the command inside that
node's attempt of the same job. Both halves live here:

* source side (`RelayClient`): a job's hpcbatch-rsh connects to the abstract
  socket named in `HPCBATCH_RELAY`, proves which attempt it belongs to with
  that attempt's `HPCBATCH_RELAY_TOKEN`, names a host and a command; its stdin
  goes out as `relay_in`/`relay_eof` events, the remote output and exit status
  come back (ops `relay_out`, `relay_exit`). Closing the client kills the
  remote command (`relay_close`).
* target side (`Relayed`): op `rspawn` runs `/bin/sh -c COMMAND` in its own
  session with the attempt's environment and directory; output goes out as
  `rout` events, the end as `rexit`. The whole session (every process the
  command started) is killed when the client goes, when the attempt is killed
  or ends, and when the agent exits: the command's stdio lives on this agent's
  channel, so it cannot outlive it usefully.

Client lines (JSON, one per line): `{"token", "attempt", "host", "command"}`
first, then `{"in": base64}` / `{"eof": true}`; the agent answers
`{"fd": 1|2, "data": base64}` lines and one `{"exit": code, "signal", "error"}`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import termios
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent.ctrops import relayed_command
from hpcbatch.transport.agent.procs import read_json, reap, want, want_attempt
from hpcbatch.transport.agent.protocol import BadRequest
from hpcbatch.transport.agent.runas import DEFAULT_UMASK, become, host_env
from hpcbatch.transport.agent.userpaths import in_child, is_dir

if TYPE_CHECKING:
    from hpcbatch.transport.agent.loop import AgentHost

CHUNK = 65536
KILL_GRACE_S = 2.0


def relay_name(root: str) -> str:
    """The abstract socket name of the agent with work directory `root` (`@` = abstract)."""
    return "@hpcbatch-relay-" + hashlib.sha256(root.encode()).hexdigest()[:20]


def sock_address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def session_members(sid: int) -> list[int]:
    """Every process whose session id is `sid` (the leader and all it started)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
            if int(data[data.rindex(b")") + 2 :].split()[3]) == sid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


def kill_session(sid: int, sig: int) -> None:
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def spawn_on_pty(
    argv: list[str],
    cwd: str | None,
    env: dict[str, str],
    size: list[int],
    user: Any = None,
    cg: Any = None,
    umask: int = DEFAULT_UMASK,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` in a new session whose controlling terminal is a new pty; its master.

    In the attempt's cgroup (`cg`: meta.json's cgroup) and as the job's user when the
    job runs as its submitter (`user`: meta.json's run_as), under the job's umask."""
    master, slave = os.openpty()
    set_winsize(slave, size[0], size[1])
    try:
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave,
            env={**env, "TERM": env.get("TERM") or "xterm"}, start_new_session=True,
            preexec_fn=lambda: _pty_child(user, cg, umask, cwd),
        )  # fmt: skip
    finally:
        os.close(slave)
    return proc, master


def _pty_child(user: Any, cg: Any, umask: int, cwd: str | None) -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    enter_job(user, cg, umask, cwd)


def enter_job(user: Any, cg: Any, umask: int, cwd: str | None) -> None:
    """In a relayed command's child, before it execs: the attempt's cgroup, the job's user
    (a rank is theirs), umask, then its working directory, entered as the user."""
    cgroups.enter(cg)  # a rank joins this node's attempt cgroup, held to its limits
    if user:
        become(user)
    os.umask(umask)
    if cwd:
        os.chdir(cwd)


def job_dir(cwd: Any, user: Any) -> str | None:
    """The attempt's working directory if it is one, checked in a child (as the job's
    user, with the deadline: userpaths) so a hung mount cannot stop the agent; None if
    it is not a directory (the command then runs in the agent's)."""
    if not isinstance(cwd, str) or not cwd:
        return None
    ok = in_child(lambda: is_dir(cwd), "the relayed command's working directory",
                  become=(lambda: become(user)) if user else None)  # fmt: skip
    return cwd if ok else None


MAX_OPEN_LINE = 64 * 1024
"""The longest first line a relay client may send before it is authenticated."""


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


def attempt_owner(adir: str) -> int | None:
    """Whose job an attempt is: its user's uid (run_as = "submitter", in the root-owned
    meta.json), else the owner of its directory (the agent's login)."""
    meta = read_json(os.path.join(adir, "meta.json"))
    user = meta.get("run_as") if isinstance(meta, dict) else None
    if isinstance(user, dict) and isinstance(user.get("uid"), int):
        return int(user["uid"])
    try:
        return os.stat(adir).st_uid
    except OSError:
        return None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class RelayClient:
    """One hpcbatch-rsh connection to this agent (the source side)."""

    def __init__(self, hub: RelayHub, sock: socket.socket) -> None:
        self.hub, self.sock = hub, sock
        self.inbuf = b""
        self.outbuf = b""
        self.sid: str | None = None
        self.done = False
        self.uid = peer_uid(sock)
        sock.setblocking(False)
        hub.agent.sel.register(sock, selectors.EVENT_READ, self.on_ready)

    def on_ready(self) -> None:
        self.flush()
        if self.done and not self.outbuf:
            self.close(notify=False)
            return
        try:
            chunk = self.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close(notify=True)
            return
        self.inbuf += chunk
        if self.sid is None and len(self.inbuf) > MAX_OPEN_LINE and b"\n" not in self.inbuf:
            # Not yet authenticated: an unbounded line would fill the agent's memory.
            self.finish(255, None, "hpcbatch-rsh: first line too long")
            return
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip() and self.sock.fileno() >= 0:
                self.on_line(line)

    def on_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            self.finish(255, None, "hpcbatch-rsh: malformed line from the client")
            return
        if self.sid is None:
            self.open(msg)
        elif "in" in msg:
            self.hub.agent.send({"ev": "relay_in", "sid": self.sid, "data": msg["in"]})
        elif msg.get("eof"):
            self.hub.agent.send({"ev": "relay_eof", "sid": self.sid})

    def open(self, msg: dict[str, Any]) -> None:
        attempt = str(msg.get("attempt") or "")
        agent = self.hub.agent
        env = read_json(agent.path(attempt, "env.json")) if attempt.strip(".") else None
        token = env.get("HPCBATCH_RELAY_TOKEN") if isinstance(env, dict) else None
        given = msg.get("token")
        if (
            attempt not in agent.running
            or not isinstance(token, str)
            or not isinstance(given, str)
            or not hmac.compare_digest(given.encode(), token.encode())
        ):
            self.finish(255, None, f"hpcbatch-rsh: not inside a running job here ({attempt!r})")
            return
        owner = attempt_owner(agent.path(attempt))
        if self.uid is None or self.uid not in (owner, 0):
            # Another account on this host, even one holding the token (it read it
            # somewhere): only the attempt's owner may run its remote commands (and
            # root, who can read the token and act as the owner anyway).
            self.finish(255, None, f"hpcbatch-rsh: uid {self.uid} does not own {attempt!r}")
            return
        if "step" in msg:
            self.report_step(attempt, msg["step"])
            return
        self.hub.serial += 1
        self.sid = f"{os.getpid()}.{self.hub.serial}"
        self.hub.clients[self.sid] = self
        host, command = str(msg.get("host") or ""), str(msg.get("command") or "")
        agent.send({"ev": "relay_open", "sid": self.sid, "attempt": attempt, "host": host,
                    "command": command})  # fmt: skip

    def report_step(self, attempt: str, step: object) -> None:
        """srun's report of a step's start or end: one event to the controller, then done."""
        self.hub.agent.send({"ev": "job_step", "attempt": attempt, "step": step})
        self.finish(0, None, None)

    def write(self, obj: dict[str, Any]) -> None:
        self.outbuf += (json.dumps(obj) + "\n").encode()
        self.flush()

    def flush(self) -> None:
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.outbuf = b""
                break
            self.outbuf = self.outbuf[n:]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        with contextlib.suppress(KeyError, ValueError):
            self.hub.agent.sel.modify(self.sock, events, self.on_ready)
        if self.done and not self.outbuf:
            self.close(notify=False)

    def finish(self, code: int | None, sig: int | None, error: str | None, use: Any = None) -> None:
        self.done = True  # use: what the remote command used (hpcbatch-rsh notes it for srun)
        self.write({"exit": code, "signal": sig, "error": error, "usage": use})

    def close(self, notify: bool) -> None:
        if self.sock.fileno() < 0:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.hub.agent.sel.unregister(self.sock)
        self.sock.close()
        if self.sid is not None and self.hub.clients.pop(self.sid, None) is not None and notify:
            self.hub.agent.send({"ev": "relay_close", "sid": self.sid})


class Relayed:
    """One command run here for another node's hpcbatch-rsh (the target side)."""

    def __init__(
        self, hub: RelayHub, key: str, attempt: str, command: str, pty: list[int] | None = None
    ) -> None:
        self.hub, self.key, self.attempt = hub, key, attempt
        agent = hub.agent
        meta = read_json(agent.path(attempt, "meta.json"))
        meta = meta if isinstance(meta, dict) else {}
        env = read_json(agent.path(attempt, "env.json"))
        user = meta.get("run_as")
        cwd = job_dir(meta.get("cwd_resolved"), user)
        hub.serial += 1
        base = {**host_env(user), **(env if isinstance(env, dict) else {})}
        argv, full_env, keep_root = relayed_command(agent, attempt, command, base, cwd,
                                                    hub.serial)  # fmt: skip
        if keep_root:  # a docker client: root's, the container is the user's (ctrops)
            user, cwd = None, "/"
        cg = meta.get("cgroup")
        cg = cg if isinstance(cg, dict) and cg.get("dirs") else None
        umask = meta.get("umask", DEFAULT_UMASK)
        self.pty_fd: int | None = None
        if pty:
            self.proc, self.pty_fd = spawn_on_pty(argv, cwd, full_env, pty, user, cg, umask)
        else:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=full_env, start_new_session=True,
                # the agent is single-threaded: a preexec function is safe
                preexec_fn=lambda: enter_job(user, cg, umask, cwd),
            )  # fmt: skip
        with open(agent.path(attempt, "relayed"), "a") as f:
            f.write(f"{self.proc.pid}\n")
        # Descriptors are closed through their file objects only: closing the number
        # behind Popen's back would let it close a later reuse of that number.
        self.open_fds: dict[int, int] = {}
        self.files: dict[int, Any] = {}
        pipes = [(1, self.proc.stdout), (2, self.proc.stderr)]
        if self.pty_fd is not None:
            pipes = [(1, os.fdopen(os.dup(self.pty_fd), "rb", buffering=0))]
        for fd_no, pipe in pipes:
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.open_fds[fd] = fd_no
            self.files[fd] = pipe
            agent.sel.register(fd, selectors.EVENT_READ, lambda fd=fd: self.on_output(fd))
        self.stdin_fd: int | None = self.pty_fd
        if self.pty_fd is None:
            assert self.proc.stdin is not None
            self.stdin_fd = self.proc.stdin.fileno()
        assert self.stdin_fd is not None
        os.set_blocking(self.stdin_fd, False)
        self.stdin_buf = b""
        self.stdin_eof = False
        self.status: int | None = None
        self.usage: dict[str, float] | None = None
        agent.watch(self.proc.pid, None, True, self.on_exit)

    def on_output(self, fd: int) -> None:
        try:
            data = os.read(fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.hub.agent.send({"ev": "rout", "key": self.key, "fd": self.open_fds[fd],
                                 "data": b64(data)})  # fmt: skip
            return
        self.close_fd(fd)
        self.maybe_done()

    def close_fd(self, fd: int) -> None:
        if self.open_fds.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.hub.agent.sel.unregister(fd)
            self.files.pop(fd).close()

    def feed(self, data: bytes, eof: bool) -> None:
        self.stdin_buf += data
        self.stdin_eof = self.stdin_eof or eof
        fd = self.stdin_fd
        if fd is None:
            return
        try:
            while self.stdin_buf:
                self.stdin_buf = self.stdin_buf[os.write(fd, self.stdin_buf) :]
        except (BlockingIOError, InterruptedError):
            self.hub.agent.after(0.05, lambda: self.feed(b"", False))
            return
        except OSError:
            self.stdin_buf = b""
        if self.stdin_eof:
            self.close_stdin()

    def resize(self, rows: int, cols: int) -> None:
        if self.pty_fd is not None:
            set_winsize(self.pty_fd, rows, cols)

    def close_stdin(self) -> None:
        if self.pty_fd is not None:  # a terminal's end of input is the user's ^D, not EOF
            if self.status is not None:
                self.stdin_fd, fd, self.pty_fd = None, self.pty_fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)
            return
        if self.stdin_fd is not None and self.proc.stdin is not None:
            self.stdin_fd = None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def on_exit(self) -> None:
        self.status, self.usage = reap(self.proc)  # usage: for srun's step (srun.py)
        # Output still in the pipes is read first; a grandchild that keeps them
        # open (a daemon) must not hold the exit back for long.
        self.hub.agent.after(KILL_GRACE_S, self.force_done)
        self.maybe_done()

    def force_done(self) -> None:
        for fd in list(self.open_fds):
            self.close_fd(fd)
        self.maybe_done()

    def maybe_done(self) -> None:
        if self.status is None or self.open_fds or self.key not in self.hub.relayed:
            return
        del self.hub.relayed[self.key]
        self.close_stdin()
        kill_session(self.proc.pid, signal.SIGKILL)  # what it left behind
        rc = self.status
        self.hub.agent.send({"ev": "rexit", "key": self.key, "code": rc if rc >= 0 else None,
                             "signal": -rc if rc < 0 else None, "usage": self.usage})  # fmt: skip

    def kill(self, sig: int = signal.SIGTERM) -> None:
        kill_session(self.proc.pid, sig)
        if sig != signal.SIGKILL:
            self.hub.agent.after(KILL_GRACE_S, lambda: kill_session(self.proc.pid, signal.SIGKILL))


class RelayHub:
    """Both sides of the relay for one agent."""

    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.name = relay_name(agent.root)
        self.clients: dict[str, RelayClient] = {}
        self.relayed: dict[str, Relayed] = {}
        self.serial = 0
        self.server: socket.socket | None = None
        self.listen()

    def listen(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(sock_address(self.name))
        except OSError:  # the agent we replace has not let go of it yet
            server.close()
            self.agent.after(0.5, self.listen)
            return
        server.listen(64)
        server.setblocking(False)
        self.server = server
        self.agent.sel.register(server, selectors.EVENT_READ, self.accept)

    def accept(self) -> None:
        assert self.server is not None
        try:
            sock, _ = self.server.accept()
        except (BlockingIOError, InterruptedError):
            return
        RelayClient(self, sock)

    # ----------------------------------------------------------------- ops

    def op_relay_out(self, req: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.get(want(req, "sid", str, ""))
        if client is not None:
            client.write({"fd": want(req, "fd", int, 1), "data": want(req, "data", str, "")})
        return {}

    def op_relay_exit(self, req: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.pop(want(req, "sid", str, ""), None)
        if client is not None:
            client.finish(req.get("code"), req.get("signal"), req.get("error"), req.get("usage"))
        return {}

    def op_rspawn(self, req: dict[str, Any]) -> dict[str, Any]:
        key = want(req, "key", str)
        if not key or key in self.relayed:
            raise BadRequest(f"bad or duplicate relay key {key!r}")
        try:
            attempt = want_attempt(req.get("attempt"))
            if attempt not in self.agent.running:
                raise BadRequest(f"attempt {attempt} is not running here")
            command = want(req, "command", str, "")
            pty = req.get("pty")
            size = [int(x) for x in pty] if isinstance(pty, list) and len(pty) == 2 else None
            self.relayed[key] = Relayed(self, key, attempt, command, size)
        except Exception as exc:  # the client must hear of it, whatever it was
            self.agent.send({"ev": "rexit", "key": key, "code": 255, "signal": None,
                             "error": f"cannot start the command: {exc}"})  # fmt: skip
            return {}
        return {"pid": self.relayed[key].proc.pid}

    def op_rin(self, req: dict[str, Any]) -> dict[str, Any]:
        r = self.relayed.get(want(req, "key", str, ""))
        if r is not None:
            r.feed(base64.b64decode(want(req, "data", str, "")), bool(req.get("eof")))
        return {}

    def op_rresize(self, req: dict[str, Any]) -> dict[str, Any]:
        r = self.relayed.get(want(req, "key", str, ""))
        if r is not None:
            r.resize(want(req, "rows", int, 24), want(req, "cols", int, 80))
        return {}

    def op_rkill(self, req: dict[str, Any]) -> dict[str, Any]:
        r = self.relayed.get(want(req, "key", str, ""))
        if r is not None:
            r.kill()
        return {"found": r is not None}

    def ops(self) -> dict[str, Any]:
        return {"relay_out": self.op_relay_out, "relay_exit": self.op_relay_exit,
                "rspawn": self.op_rspawn, "rin": self.op_rin, "rkill": self.op_rkill,
                "rresize": self.op_rresize}  # fmt: skip

    # ----------------------------------------------------------------- lifecycle

    def kill_attempt(self, attempt: str, sig: int = signal.SIGTERM) -> None:
        """Stop what was relayed into `attempt` (also by an earlier agent: the `relayed` file)."""
        for r in list(self.relayed.values()):
            if r.attempt == attempt:
                r.kill(sig)
        try:
            with open(self.agent.path(attempt, "relayed")) as f:
                pids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            kill_session(pid, sig)

    def close(self) -> None:
        for r in list(self.relayed.values()):
            r.kill(signal.SIGKILL)
        for client in list(self.clients.values()):
            client.close(notify=False)
        if self.server is not None:
            self.server.close()
