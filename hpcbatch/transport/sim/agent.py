"""A simulated host agent: the real agent's protocol, with jobs that only take time.

Why it exists: to measure the controller against thousands of hosts on one
machine (benchmarks/scale.py), the hosts must be cheap, yet the controller
must not be able to tell them from real ones. So this speaks exactly the JSON
lines of `hpcbatch.transport.agent.hpcbatch_agent` (docs/architecture.md,
"Host agent protocol"): the same dispatch (`protocol.serve_line`), the same
typed replies, requests validated with the same helpers, and the
state a real agent keeps on disk (attempts, exit records, `collected`) lives
in a `SimHostState` that outlives the SSH connection, so reconnects and
reconciliation behave as with a real host. What it does not do: run anything.

A launched attempt "runs" for a duration taken from the job: the environment
variable `HPCBATCH_SIM_DURATION` (seconds), else the sum of the script's
`sleep N` commands, else 0; it then exits with the script's last `exit N`
(default 0). A time limit shorter than that ends it as a real shepherd would
(SIGTERM, `timed_out`); `kill`/`fence` end it at once with SIGTERM. `exec`
runs nothing: `false` exits 1, anything else 0, with no output. `read`
returns no output. Relay ops (multi-node `hpcbatch-rsh`) are refused.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.epoch import FENCED_OPS, checked
from hpcbatch.transport.agent.procs import (
    DEFAULT_GRACE_S,
    want,
    want_attempt,
    want_env,
    want_strings,
)
from hpcbatch.transport.agent.protocol import (
    AckReply,
    BadRequest,
    Empty,
    ExecReply,
    ExitEvent,
    ExitRecord,
    FenceReply,
    HelloReply,
    KillReply,
    LaunchReply,
    ReadReply,
    ReportedAttempt,
    RetimeReply,
    serve_line,
)
from hpcbatch.transport.agent.tools import want_files

if TYPE_CHECKING:
    from hpcbatch.transport.agent.protocol import Handler

SLEEP_RE = re.compile(r"(?:^|[;&|\s])sleep\s+([0-9]+(?:\.[0-9]*)?)\b", re.MULTILINE)
EXIT_RE = re.compile(r"(?:^|[;&|\s])exit\s+([0-9]+)\b", re.MULTILINE)
DURATION_ENV = "HPCBATCH_SIM_DURATION"
RELAY_OPS = ("rspawn", "rin", "rkill", "relay_out", "relay_exit")


def job_duration(script: str, env: dict[str, str]) -> float:
    """How long a simulated job runs: $HPCBATCH_SIM_DURATION, else its `sleep`s."""
    value = env.get(DURATION_ENV)
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            raise BadRequest(f"{DURATION_ENV} must be a number of seconds, got {value!r}") from None
    return sum(float(m) for m in SLEEP_RE.findall(script))


def job_exit_code(script: str) -> int:
    codes = EXIT_RE.findall(script)
    return int(codes[-1]) % 256 if codes else 0


@dataclass(slots=True)
class SimAttempt:
    """What a real agent keeps in `<root>/attempts/<id>/`: pid, exit, kill."""

    attempt: str
    pid: int
    started: float
    exit: ExitRecord | None = None
    timer: asyncio.TimerHandle | None = None
    duration: float = 0.0  # how long its script takes
    code: int | None = 0  # and what it exits with


@dataclass(slots=True)
class SimHostState:
    """One simulated host's durable state (its disk): survives agent and SSH restarts."""

    name: str
    cpus: int = 8
    memory_mb: int = 32768
    gpus: int = 0
    attempts: dict[str, SimAttempt] = field(default_factory=dict)  # not yet collected
    session: SimAgent | None = None  # the agent of the current connection, if any
    silent: bool = False  # black-holed: sends nothing, reads nothing
    last_sent: float = 0.0  # wall clock of the agent's last line
    next_pid: int = 1000
    launches: int = 0
    exits: int = 0
    connects: int = 0
    epoch: int = 0  # the highest controller epoch seen (the real agent's <root>/epoch)

    def facts(self) -> dict[str, Any]:
        smi = "".join(
            f"{i}, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-sim-{self.name}-{i}\n"
            for i in range(self.gpus)
        )
        return {
            "hostname": self.name,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "nvidia_smi": smi or None,
            "nvidia_smi_error": None,
            "infiniband": [],
            "efa": [],
            "dev_infiniband": False,
            "runtimes": {},
            "python": "3.11.0",
            "kernel": "simulated",
            "user": "sim",
            "home": "/home/sim",
        }

    def running(self) -> int:
        return sum(1 for a in self.attempts.values() if a.exit is None)

    def finish(self, a: SimAttempt, code: int | None, sig: int | None, reason: str | None,
               timed_out: bool = False) -> None:  # fmt: skip
        """The attempt ends: its exit record is written, and reported if an agent listens."""
        if a.exit is not None:
            return
        if a.timer is not None:
            a.timer.cancel()
            a.timer = None
        a.exit = {"code": code, "signal": sig, "reason": reason, "timed_out": timed_out,
                  "started": a.started, "ended": time.time()}  # fmt: skip
        self.exits += 1
        if self.session is not None:
            event: ExitEvent = {"ev": "exit", "attempt": a.attempt, **a.exit}
            self.session.send(event)


class SimAgent:
    """One agent process's worth of protocol, for one SSH channel.

    `write` sends one encoded line to the controller; `close` ends the channel
    (as the real agent exiting). Feed received bytes to `data_received`.
    """

    def __init__(
        self,
        host: SimHostState,
        heartbeat_s: float,
        write: Callable[[bytes], None],
        close: Callable[[], None],
    ) -> None:
        self.host = host
        self.heartbeat_s = heartbeat_s
        self._write = write
        self._close = close
        self._buf = b""
        self._loop = asyncio.get_running_loop()
        self._beat: asyncio.TimerHandle | None = None
        self.pid = host.next_pid
        host.next_pid += 1
        self.version = "sim"
        if host.session is not None:
            host.session.stop()  # one agent per host: the old channel's agent is gone
        host.session = self
        if heartbeat_s > 0:
            self._beat = self._loop.call_later(heartbeat_s, self._heartbeat)
        self.ops: dict[str, Handler] = {
            "hello": self.op_hello, "launch": self.op_launch, "kill": self.op_kill,
            "ack": self.op_ack, "read": self.op_read, "fence": self.op_fence,
            "exec": self.op_exec, "shutdown": self.op_shutdown, "retime": self.op_retime,
        }  # fmt: skip
        self.ops.update(dict.fromkeys(RELAY_OPS, self.op_relay))
        for op in FENCED_OPS:  # as the real agent: an older controller's epoch is refused
            if op in self.ops:
                self.ops[op] = self._fenced(op, self.ops[op])

    def _fenced(self, op: str, handler: Handler) -> Handler:
        def run(req: dict[str, Any]) -> Mapping[str, Any] | None:
            epoch = checked(op, req.get("epoch"), self.host.epoch)
            if epoch is not None:
                self.host.epoch = epoch
            return handler(req)

        return run

    def stop(self) -> None:
        """The channel is gone: no more heartbeats; attempts go on (they are the host's)."""
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self.host.session is self:
            self.host.session = None

    # ----------------------------------------------------------------- I/O

    def send(self, obj: Mapping[str, Any]) -> None:
        if not self.host.silent:
            self._write((json.dumps(obj) + "\n").encode())
            self.host.last_sent = time.time()

    def _heartbeat(self) -> None:
        self.send({"ev": "heartbeat", "t": time.time(), "running": self.host.running()})
        self._beat = self._loop.call_later(self.heartbeat_s, self._heartbeat)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.strip():
                self.handle(line)

    def handle(self, line: bytes) -> None:
        if serve_line(line, self.ops, self.send) == "shutdown":
            self.stop()
            self._close()

    # ----------------------------------------------------------------- ops

    def op_hello(self, req: dict[str, Any]) -> HelloReply:
        attempts: list[ReportedAttempt] = [
            {
                "attempt": a.attempt,
                "state": "running" if a.exit is None else "exited",
                "pid": a.pid,
                "exit": a.exit,
            }
            for a in sorted(self.host.attempts.values(), key=lambda a: a.attempt)
        ]
        return {"agent_version": self.version, "pid": self.pid, "facts": self.host.facts(),
                "attempts": attempts}  # fmt: skip

    def op_launch(self, req: dict[str, Any]) -> LaunchReply:
        host = self.host
        attempt = want_attempt(req.get("attempt"))
        script = want(req, "script", str)
        if script is None:
            raise BadRequest("field 'script' is required")
        if attempt in host.attempts:
            raise BadRequest(f"attempt {attempt} already exists", "exists")
        env = want_env(req)
        want_strings(req, "args")
        want_files(req)
        want(req, "file_env", dict, {})
        for stream in ("cwd", "stdout", "stderr"):
            want(req, stream, str)
        timeout = want(req, "timeout_s", float)
        if timeout is not None and timeout <= 0:
            raise BadRequest(f"timeout_s must be positive (or null), got {timeout}")
        want(req, "kill_grace_s", float, DEFAULT_GRACE_S)
        duration = job_duration(script, env)
        code = job_exit_code(script)
        a = SimAttempt(attempt, host.next_pid, time.time(), duration=duration, code=code)
        host.next_pid += 1
        host.attempts[attempt] = a
        host.launches += 1
        self._arm(a, timeout)
        return {"pid": a.pid, "started": a.started}

    def _arm(self, a: SimAttempt, timeout: float | None) -> None:
        """The attempt's end: its script's duration, or its time limit if sooner."""
        host = self.host
        if a.timer is not None:
            a.timer.cancel()
        left = a.started - time.time()
        if timeout is not None and timeout < a.duration:
            reason = f"timed out after {timeout:g} s"
            a.timer = self._loop.call_later(
                max(0.0, left + timeout), host.finish, a, None, int(signal.SIGTERM), reason, True
            )
        else:
            a.timer = self._loop.call_later(
                max(0.0, left + a.duration), host.finish, a, a.code, None, None
            )

    def op_retime(self, req: dict[str, Any]) -> RetimeReply:
        attempt = want_attempt(req.get("attempt"))
        timeout = want(req, "timeout_s", float)
        a = self.host.attempts.get(attempt)
        if a is None or a.exit is not None:
            return {"found": False}
        self._arm(a, timeout)
        return {"found": True}

    def op_kill(self, req: dict[str, Any]) -> KillReply:
        attempt = want_attempt(req.get("attempt"))
        reason = want(req, "reason", str, "killed")
        want(req, "grace_s", float, DEFAULT_GRACE_S)
        a = self.host.attempts.get(attempt)
        found = a is not None and a.exit is None
        if a is not None and found:
            self._loop.call_soon(self.host.finish, a, None, int(signal.SIGTERM), reason)
        return {"found": found}

    def op_ack(self, req: dict[str, Any]) -> AckReply:
        acked = []
        for attempt in map(want_attempt, want(req, "attempts", list, [])):
            a = self.host.attempts.get(attempt)
            if a is not None and a.exit is not None:
                del self.host.attempts[attempt]
                acked.append(attempt)
        return {"acked": acked}

    def op_read(self, req: dict[str, Any]) -> ReadReply:
        attempt = want_attempt(req.get("attempt"))
        stream = want(req, "stream", str, "stdout")
        if stream not in ("stdout", "stderr"):
            raise BadRequest(f"stream must be stdout or stderr, got {stream!r}")
        offset = want(req, "offset", int, 0)
        a = self.host.attempts.get(attempt)
        if a is None:
            raise BadRequest(f"no attempt {attempt}", "no_attempt")
        return {"data": "", "offset": offset, "done": a.exit is not None}

    def op_fence(self, req: dict[str, Any]) -> FenceReply:
        keep = set(want_strings(req, "keep"))
        want(req, "grace_s", float, DEFAULT_GRACE_S)
        running = [a for a in self.host.attempts.values() if a.exit is None]
        killed = sorted(a.attempt for a in running if a.attempt not in keep)
        for a in running:
            if a.attempt not in keep:
                self._loop.call_soon(self.host.finish, a, None, int(signal.SIGTERM), "fenced")
        return {"killed": killed}

    def op_exec(self, req: dict[str, Any]) -> ExecReply:
        argv = want_strings(req, "argv")
        if not argv:
            raise BadRequest("field 'argv' must be a non-empty list")
        want_env(req)
        code = 1 if argv[0].rsplit("/", 1)[-1] == "false" else 0
        return {"code": code, "signal": None, "timed_out": False, "stdout": "", "stderr": ""}

    def op_shutdown(self, req: dict[str, Any]) -> Empty:
        return {}

    def op_relay(self, req: dict[str, Any]) -> Empty:
        raise BadRequest(f"{req.get('op')}: the simulated host has no rsh relay")
