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
import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.ctrops import relayed_command
from hpcbatch.transport.agent.procs import BadRequest, read_json, want, want_attempt

if TYPE_CHECKING:
    from hpcbatch.transport.agent.hpcbatch_agent import Agent

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
        if attempt not in agent.running or not token or msg.get("token") != token:
            self.finish(255, None, f"hpcbatch-rsh: not inside a running job here ({attempt!r})")
            return
        self.hub.serial += 1
        self.sid = f"{os.getpid()}.{self.hub.serial}"
        self.hub.clients[self.sid] = self
        host, command = str(msg.get("host") or ""), str(msg.get("command") or "")
        agent.send({"ev": "relay_open", "sid": self.sid, "attempt": attempt, "host": host,
                    "command": command})  # fmt: skip

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

    def finish(self, code: int | None, sig: int | None, error: str | None) -> None:
        self.done = True
        self.write({"exit": code, "signal": sig, "error": error})

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

    def __init__(self, hub: RelayHub, key: str, attempt: str, command: str) -> None:
        self.hub, self.key, self.attempt = hub, key, attempt
        agent = hub.agent
        meta = read_json(agent.path(attempt, "meta.json"))
        env = read_json(agent.path(attempt, "env.json"))
        cwd = meta.get("cwd_resolved") if isinstance(meta, dict) else None
        cwd = cwd if isinstance(cwd, str) and os.path.isdir(cwd) else None
        hub.serial += 1
        argv, full_env = relayed_command(
            agent, attempt, command, {**os.environ, **(env if isinstance(env, dict) else {})},
            cwd, hub.serial,
        )  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=cwd, env=full_env, start_new_session=True,
        )  # fmt: skip
        with open(agent.path(attempt, "relayed"), "a") as f:
            f.write(f"{self.proc.pid}\n")
        # Descriptors are closed through their file objects only: closing the number
        # behind Popen's back would let it close a later reuse of that number.
        self.open_fds: dict[int, int] = {}
        self.files: dict[int, Any] = {}
        for fd_no, pipe in ((1, self.proc.stdout), (2, self.proc.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self.open_fds[fd] = fd_no
            self.files[fd] = pipe
            agent.sel.register(fd, selectors.EVENT_READ, lambda fd=fd: self.on_output(fd))
        assert self.proc.stdin is not None
        self.stdin_fd: int | None = self.proc.stdin.fileno()
        os.set_blocking(self.stdin_fd, False)
        self.stdin_buf = b""
        self.stdin_eof = False
        self.status: int | None = None
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

    def close_stdin(self) -> None:
        if self.stdin_fd is not None and self.proc.stdin is not None:
            self.stdin_fd = None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def on_exit(self) -> None:
        self.status = self.proc.wait()
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
                             "signal": -rc if rc < 0 else None})  # fmt: skip

    def kill(self, sig: int = signal.SIGTERM) -> None:
        kill_session(self.proc.pid, sig)
        if sig != signal.SIGKILL:
            self.hub.agent.after(KILL_GRACE_S, lambda: kill_session(self.proc.pid, signal.SIGKILL))


class RelayHub:
    """Both sides of the relay for one agent."""

    def __init__(self, agent: Agent) -> None:
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
            client.finish(req.get("code"), req.get("signal"), req.get("error"))
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
            self.relayed[key] = Relayed(self, key, attempt, command)
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

    def op_rkill(self, req: dict[str, Any]) -> dict[str, Any]:
        r = self.relayed.get(want(req, "key", str, ""))
        if r is not None:
            r.kill()
        return {"found": r is not None}

    def ops(self) -> dict[str, Any]:
        return {"relay_out": self.op_relay_out, "relay_exit": self.op_relay_exit,
                "rspawn": self.op_rspawn, "rin": self.op_rin, "rkill": self.op_rkill}  # fmt: skip

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
