#!/usr/bin/env python3
"""hpcbatch host agent: runs on each host, speaks JSON lines over an SSH channel.

Why it exists: the controller reaches hosts only over SSH, yet a job must outlive
both the SSH connection and this agent. So the agent never waits on jobs itself.
For each `launch` it forks a *shepherd* that leaves the SSH session (setsid, no
inherited descriptors), starts the job in its own process group, enforces the
timeout and `kill` requests, and writes the exit status to disk atomically. The
agent only watches shepherds (pidfds: no polling) and reports their ends. A new
agent, after a reconnect, finds everything again on disk:

    <root>/attempts/<attempt>/  script env.json meta.json stdout stderr
                                pid kill exit collected

The protocol is in docs/architecture.md, "Host agent protocol". The agent is
uploaded to hosts as one zipapp of this package (see `__init__.archive`):
standard library only, Python 3.8+. It also serves the rsh relay (relay.py) and
writes the `hpcbatch-rsh` and `srun` shims into `<root>/bin`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import selectors
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from hpcbatch.transport.agent.ctrops import ImagePull, container_command, kill_pull
from hpcbatch.transport.agent.procs import (
    ATTEMPT_RE,
    DEFAULT_GRACE_S,
    LOST,
    OUTPUT_CAP,
    BadRequest,
    alive,
    host_facts,
    on_nothing,
    read_all,
    read_json,
    run_cleanup,
    shepherd,
    signal_group,
    utf8_cut,
    want,
    want_attempt,
    want_env,
    want_strings,
    write_json,
)
from hpcbatch.transport.agent.relay import RelayHub
from hpcbatch.transport.agent.tools import FILE_RE, ExecRun, code_location, want_files, write_shims

# --------------------------------------------------------------------------- the agent


class Watch:
    """A process whose end we wait for: by pidfd, else by polling (`fd` is None)."""

    def __init__(self, pid: int, start: int | None, child: bool, on_end: Callable[[], None]):
        self.pid, self.start, self.child, self.on_end = pid, start, child, on_end
        self.fd: int | None = None

    def ended(self) -> bool:
        """Polling check. For our children: exited (not yet reaped: WNOWAIT)."""
        if not self.child:
            return not alive(self.pid, self.start)
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True


class Agent:
    def __init__(self, root: str, heartbeat: float, use_pidfd: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.attempts = os.path.join(self.root, "attempts")
        os.makedirs(self.attempts, exist_ok=True)
        self.heartbeat = heartbeat
        self.use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        with open(code_location()[0], "rb") as f:
            self.version = hashlib.sha256(f.read()).hexdigest()[:16]
        self.bin = os.path.join(self.root, "bin")
        self.sel = selectors.DefaultSelector()
        self.running: dict[str, dict[str, Any]] = {}  # attempt -> its pid record
        self.reported: set[str] = set()
        self.polled: list[Watch] = []
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.inbuf = b""
        self.stopping = False
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, on_nothing)
        self.sel.register(wake_r, selectors.EVENT_READ, lambda: os.read(wake_r, 4096))
        self.sel.register(0, selectors.EVENT_READ, self.on_stdin)
        self.ops: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
            "hello": self.op_hello, "launch": self.op_launch, "kill": self.op_kill,
            "ack": self.op_ack, "read": self.op_read, "fence": self.op_fence,
            "exec": self.op_exec, "shutdown": self.op_shutdown, "image": self.op_image,
        }  # fmt: skip
        self.pulls: dict[str, ImagePull] = {}  # attempt -> its image pull (op `image`)
        self.relay = RelayHub(self)
        self.ops.update(self.relay.ops())
        write_shims(self.bin)
        self.scan()

    # ----------------------------------------------------------------- loop and I/O

    def run(self) -> int:
        if self.heartbeat > 0:
            self.after(self.heartbeat, self.send_heartbeat)
        while not self.stopping:
            now = time.monotonic()
            waits = [t - now for t, _ in self.timers] + ([1.0] if self.polled else [])
            for key, _ in self.sel.select(max(0.0, min(waits)) if waits else None):
                current = self.sel.get_map().get(key.fd)
                if current is not None and current.data is key.data:  # not closed meanwhile
                    self.guard(key.data)
                if self.stopping:
                    break
            for when, fn in sorted(self.timers, key=lambda t: t[0]):
                if when <= time.monotonic():
                    self.timers.remove((when, fn))
                    self.guard(fn)
            for w in list(self.polled):
                if w.ended():
                    self.fire(w)
        self.relay.close()
        return 0

    def guard(self, fn: Callable[[], Any]) -> None:
        """Run a callback; an unexpected error is reported, never fatal."""
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError):
            self.stopping = True
        except Exception as exc:
            try:
                self.send({"ev": "error", "error": f"internal error: {type(exc).__name__}: {exc}"})
            except OSError:
                self.stopping = True

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.timers.append((time.monotonic() + delay, fn))

    def send(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def send_heartbeat(self) -> None:
        self.send({"ev": "heartbeat", "t": time.time(), "running": len(self.running)})
        self.after(self.heartbeat, self.send_heartbeat)

    def on_stdin(self) -> None:
        chunk = os.read(0, 65536)
        if not chunk:
            self.stopping = True  # the controller hung up: jobs keep running
            return
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                self.handle(line)
                if self.stopping:
                    return
        if len(self.inbuf) > 64 * 1024 * 1024:
            self.inbuf = b""
            self.send({"ev": "error", "error": "request line longer than 64 MiB: dropped"})

    def handle(self, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError as exc:
            self.send({"ev": "error", "error": f"malformed request line ({exc}): {line[:200]!r}"})
            return
        rid = req.get("id") if isinstance(req, dict) else None
        if not isinstance(rid, int) or isinstance(rid, bool):
            self.send({"ev": "error", "error": f"request without an integer id: {line[:200]!r}"})
            return
        handler = self.ops.get(req.get("op"))
        try:
            if handler is None:
                raise BadRequest(f"unknown op {req.get('op')!r}; known: {', '.join(self.ops)}")
            result = handler(req)
        except BadRequest as exc:
            self.reply_error(rid, req, str(exc))
        except Exception as exc:
            self.reply_error(
                rid, req, f"internal error in {req.get('op')}: {type(exc).__name__}: {exc}"
            )
        else:
            # None: the handler replies later. A negative id: the sender wants no reply
            # (relay traffic, posted without waiting).
            if result is not None and rid >= 0:
                self.send({"id": rid, "ok": True, **result})

    def reply_error(self, rid: int, req: dict[str, Any], error: str) -> None:
        if rid >= 0:
            self.send({"id": rid, "ok": False, "error": error})
        else:
            self.send({"ev": "error", "error": f"{req.get('op')}: {error}"})

    # ----------------------------------------------------------------- watching processes

    def watch(self, pid: int, start: int | None, child: bool, on_end: Callable[[], None]) -> None:
        w = Watch(pid, start, child, on_end)
        if self.use_pidfd:
            try:
                w.fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.after(0, on_end)
                return
            except OSError:
                self.use_pidfd = False  # old kernel: SIGCHLD and liveness polling instead
            else:
                if child or alive(pid, start):  # (re)checked after opening: no pid reuse
                    self.sel.register(w.fd, selectors.EVENT_READ, lambda: self.fire(w))
                else:
                    os.close(w.fd)
                    self.after(0, on_end)
                return
        self.polled.append(w)

    def fire(self, w: Watch) -> None:
        if w.fd is not None:
            self.sel.unregister(w.fd)
            os.close(w.fd)
        if w in self.polled:
            self.polled.remove(w)
        w.on_end()

    def track(self, attempt: str, rec: dict[str, Any], child: bool) -> None:
        """Watch a running attempt's shepherd; or its job if the shepherd is gone."""
        self.running[attempt] = rec
        if child or alive(rec.get("shepherd"), rec.get("shepherd_start")):
            end = lambda: self.shepherd_ended(attempt, child)  # noqa: E731
            self.watch(rec["shepherd"], rec.get("shepherd_start"), child, end)
        else:
            rec["adopted"] = True
            end = lambda: self.finish(attempt, self.lost_record(attempt))  # noqa: E731
            self.watch(rec["job"], rec.get("job_start"), False, end)

    def shepherd_ended(self, attempt: str, child: bool) -> None:
        rec = self.running[attempt]
        if child:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(rec["shepherd"], 0)
        result = read_json(self.path(attempt, "exit"))
        if isinstance(result, dict):
            self.finish(attempt, result)
        elif alive(rec.get("job"), rec.get("job_start")):
            self.track(attempt, rec, child=False)
        else:
            self.finish(attempt, self.lost_record(attempt))

    def finish(self, attempt: str, result: dict[str, Any]) -> None:
        self.running.pop(attempt, None)
        self.relay.kill_attempt(attempt)
        if attempt not in self.reported:
            self.reported.add(attempt)
            self.send({"ev": "exit", "attempt": attempt, **result})

    def lost_record(self, attempt: str) -> dict[str, Any]:
        rec = read_json(self.path(attempt, "pid"))
        kill = read_json(self.path(attempt, "kill"))
        reason = LOST
        if isinstance(kill, dict) and kill.get("reason"):
            reason = f"{LOST} (killed: {kill['reason']})"
        started = rec.get("started") if isinstance(rec, dict) else None
        return {"code": None, "signal": None, "reason": reason, "timed_out": False,
                "killed": isinstance(kill, dict), "started": started,
                "ended": time.time()}  # fmt: skip

    # ----------------------------------------------------------------- attempts on disk

    def path(self, attempt: str, *names: str) -> str:
        return os.path.join(self.attempts, attempt, *names)

    def listed(self) -> list[str]:
        """Attempt ids on disk not yet acknowledged."""
        names = sorted(os.listdir(self.attempts))
        return [
            n for n in names
            if ATTEMPT_RE.fullmatch(n) and not os.path.exists(self.path(n, "collected"))
        ]  # fmt: skip

    def scan(self) -> None:
        """Find running attempts this agent does not watch yet (started by an earlier agent)."""
        for attempt in self.listed():
            if attempt in self.running or os.path.exists(self.path(attempt, "exit")):
                continue
            rec = read_json(self.path(attempt, "pid"))
            if isinstance(rec, dict) and (
                alive(rec.get("shepherd"), rec.get("shepherd_start"))
                or alive(rec.get("job"), rec.get("job_start"))
            ):
                self.track(attempt, rec, child=False)

    def state(self, attempt: str) -> tuple[str, dict[str, Any] | None]:
        result = read_json(self.path(attempt, "exit"))
        if isinstance(result, dict):
            return "exited", result
        if attempt in self.running:
            return "running", None
        lost = self.lost_record(attempt)
        lost["ended"] = None
        return "lost", lost

    # ----------------------------------------------------------------- ops

    def op_hello(self, req: dict[str, Any]) -> dict[str, Any]:
        self.scan()
        attempts = []
        for attempt in self.listed():
            state, result = self.state(attempt)
            rec = read_json(self.path(attempt, "pid"))
            pid = rec.get("job") if isinstance(rec, dict) else None
            attempts.append({"attempt": attempt, "state": state, "pid": pid, "exit": result})
        return {"agent_version": self.version, "pid": os.getpid(), "facts": host_facts(),
                "attempts": attempts}  # fmt: skip

    def op_launch(self, req: dict[str, Any]) -> dict[str, Any]:
        attempt = want_attempt(req.get("attempt"))
        script = want(req, "script", str)
        if script is None:
            raise BadRequest("field 'script' is required")
        adir = self.path(attempt)
        if os.path.lexists(adir):
            raise BadRequest(f"attempt {attempt} already exists")
        cwd = os.path.expanduser(want(req, "cwd", str) or "~")
        if not os.path.isdir(cwd):
            raise BadRequest(f"working directory {cwd} does not exist (or is not a directory)")
        job_env = self.job_env(req, attempt, adir)
        spec: dict[str, Any] = {
            "cwd": os.path.abspath(cwd),
            "env": {**os.environ, **job_env},
            "timeout_s": want(req, "timeout_s", float),
            "grace_s": want(req, "kill_grace_s", float, DEFAULT_GRACE_S),
        }
        if spec["timeout_s"] is not None and spec["timeout_s"] <= 0:
            raise BadRequest(f"timeout_s must be positive (or null), got {spec['timeout_s']}")
        spec["warn_signal"] = want(req, "warn_signal", int)
        if spec["warn_signal"] is not None and not 0 < spec["warn_signal"] < signal.NSIG:
            raise BadRequest(f"warn_signal {spec['warn_signal']} is not a signal number")
        spec["warn_before_s"] = want(req, "warn_before_s", float, 60.0)
        spec["warn_batch_only"] = want(req, "warn_batch_only", bool, False)
        paths = {s: self.output_path(req, s, spec["cwd"], adir) for s in ("stdout", "stderr")}
        args = want_strings(req, "args")
        want_files(req)  # checked before anything is written
        spec["job_env"] = job_env
        try:
            os.mkdir(adir, 0o700)
        except FileExistsError:
            raise BadRequest(f"attempt {attempt} already exists") from None
        try:
            return self.start(attempt, adir, req, script, args, spec, paths)
        except BaseException:
            shutil.rmtree(adir, ignore_errors=True)
            raise

    def job_env(self, req: dict[str, Any], attempt: str, adir: str) -> dict[str, str]:
        """The request's environment plus what the agent adds: where the attempt lives,
        how to reach the relay (hpcbatch-rsh, srun), and the shims first on PATH."""
        env = want_env(req)
        for var, name in want(req, "file_env", dict, {}).items():
            if not isinstance(name, str) or not FILE_RE.fullmatch(name) or "=" in var:
                raise BadRequest(f"bad file_env entry {var!r}: {name!r}")
            env[var] = os.path.join(adir, name)
        env["HPCBATCH_ATTEMPT_ID"] = attempt
        env["HPCBATCH_ATTEMPT_DIR"] = adir
        env["HPCBATCH_RELAY"] = self.relay.name
        env["HPCBATCH_RELAY_TOKEN"] = secrets.token_hex(16)
        env["PATH"] = (
            self.bin + os.pathsep + (env.get("PATH") or os.environ.get("PATH") or "/usr/bin:/bin")
        )
        return env

    def output_path(self, req: dict[str, Any], stream: str, cwd: str, adir: str) -> str:
        value = want(req, stream, str)
        if value is None:
            return os.path.join(adir, stream)
        path = os.path.join(cwd, os.path.expanduser(value))
        if not os.path.isdir(os.path.dirname(path)):
            raise BadRequest(f"{stream} directory {os.path.dirname(path)} does not exist")
        if os.path.isdir(path):
            raise BadRequest(f"{stream} path {path} is a directory")
        return os.path.abspath(path)

    def start(
        self, attempt: str, adir: str, req: dict[str, Any], script: str, args: list[str],
        spec: dict[str, Any], paths: dict[str, str],
    ) -> dict[str, Any]:  # fmt: skip
        script_path = os.path.join(adir, "script")
        fd = os.open(script_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(script.encode())
        shebang = script.startswith("#!")
        spec["argv"] = [script_path, *args] if shebang else ["/bin/sh", script_path, *args]
        notes = container_command(self, attempt, adir, req, spec) if req.get("container") else ""
        for name, text in want_files(req).items():
            with open(os.path.join(adir, name), "w") as f:
                f.write(text)
        write_json(os.path.join(adir, "env.json"), spec.pop("job_env"), mode=0o600)
        meta = {k: v for k, v in req.items() if k not in ("id", "op", "script")}
        meta.update(cwd_resolved=spec["cwd"], stdout_path=paths["stdout"])
        meta.update(stderr_path=paths["stderr"], argv=spec["argv"], cleanup=spec.get("cleanup"))
        write_json(os.path.join(adir, "meta.json"), meta)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if not want(req, "append", bool, False):  # a retry's attempt adds to the files
            flags |= os.O_TRUNC
        fds: list[int] = []
        try:
            for stream in ("stdout", "stderr"):
                same = stream == "stderr" and (
                    os.path.realpath(paths["stderr"]) == os.path.realpath(paths["stdout"])
                )
                try:
                    fds.append(fds[0] if same else os.open(paths[stream], flags, 0o644))
                except OSError as exc:
                    raise BadRequest(f"cannot open {stream} file: {exc}") from None
            if notes:
                os.write(fds[1], notes.encode(errors="replace"))
            rec = self.fork_shepherd(adir, spec, fds[0], fds[1])
        finally:
            for fd in set(fds):
                os.close(fd)
        self.track(attempt, rec, child=True)
        return {"pid": rec["job"], "started": rec["started"]}

    def fork_shepherd(self, adir: str, spec: dict[str, Any], out: int, err: int) -> dict[str, Any]:
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            shepherd(adir, spec, out, err, report_w)
        os.close(report_w)
        line = read_all(report_r)  # the shepherd reports once the job has started
        try:
            rec = json.loads(line)
        except ValueError:
            os.waitpid(pid, 0)
            raise RuntimeError("the shepherd failed before starting the job") from None
        return dict(rec)

    def op_kill(self, req: dict[str, Any]) -> dict[str, Any]:
        attempt = want_attempt(req.get("attempt"))
        reason = want(req, "reason", str, "killed")
        grace = want(req, "grace_s", float, DEFAULT_GRACE_S)
        found = attempt in self.running
        if found:
            self.kill(attempt, reason, grace)
        kill_pull(self, attempt)
        return {"found": found}

    def kill(self, attempt: str, reason: str, grace: float) -> None:
        write_json(self.path(attempt, "kill"), {"reason": reason, "grace_s": grace})
        self.relay.kill_attempt(attempt)
        rec = self.running[attempt]
        if not rec.get("adopted") and alive(rec["shepherd"], rec.get("shepherd_start")):
            try:
                os.kill(rec["shepherd"], signal.SIGTERM)  # it reads the kill file
                return
            except ProcessLookupError:
                pass
        job, start = rec["job"], rec.get("job_start")
        if alive(job, start):  # no shepherd: do its work
            signal_group(job, signal.SIGTERM)
            signal_group(job, signal.SIGCONT)
            self.after(grace, lambda: self.kill_adopted(attempt, job))

    def kill_adopted(self, attempt: str, job: int) -> None:
        signal_group(job, signal.SIGKILL)
        meta = read_json(self.path(attempt, "meta.json"))
        if isinstance(meta, dict) and meta.get("cleanup"):  # a container: remove it too
            run_cleanup(meta["cleanup"], dict(os.environ))

    def op_ack(self, req: dict[str, Any]) -> dict[str, Any]:
        acked = []
        for attempt in map(want_attempt, want(req, "attempts", list, [])):
            if os.path.isdir(self.path(attempt)) and self.state(attempt)[0] != "running":
                with open(self.path(attempt, "collected"), "w") as f:
                    f.write(f"{time.time()}\n")
                acked.append(attempt)
        return {"acked": acked}

    def op_read(self, req: dict[str, Any]) -> dict[str, Any]:
        attempt = want_attempt(req.get("attempt"))
        stream = want(req, "stream", str, "stdout")
        if stream not in ("stdout", "stderr"):
            raise BadRequest(f"stream must be stdout or stderr, got {stream!r}")
        offset = want(req, "offset", int, 0)
        limit = max(1, min(want(req, "limit", int, OUTPUT_CAP), 16 * 1024 * 1024))
        meta = read_json(self.path(attempt, "meta.json"))
        if not isinstance(meta, dict):
            raise BadRequest(f"no attempt {attempt}")
        exited = self.state(attempt)[0] != "running"  # before reading: no output after it
        try:
            with open(meta[f"{stream}_path"], "rb") as f:
                f.seek(max(0, offset))
                data = f.read(limit)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            data, size = b"", 0
        done = exited and offset + len(data) >= size
        cut = 0 if done else utf8_cut(data)
        if cut < len(data):
            data = data[: len(data) - cut]
        text = data.decode("utf-8", errors="replace")
        return {"data": text, "offset": offset + len(data), "done": done}

    def op_fence(self, req: dict[str, Any]) -> dict[str, Any]:
        keep = set(want_strings(req, "keep"))
        grace = want(req, "grace_s", float, DEFAULT_GRACE_S)
        killed = [a for a in sorted(self.running) if a not in keep]
        for attempt in killed:
            self.kill(attempt, "fenced", grace)
        return {"killed": killed}

    def op_exec(self, req: dict[str, Any]) -> None:
        argv = want_strings(req, "argv")
        if not argv:
            raise BadRequest("field 'argv' must be a non-empty list")
        env = {**os.environ, **want_env(req)}
        ExecRun(self, req["id"], argv, env, want(req, "timeout_s", float, 30.0))
        return None  # ExecRun replies when the command ends

    def op_image(self, req: dict[str, Any]) -> None:
        ImagePull.start(self, req)
        return None  # ImagePull replies when the image is there, or is not

    def op_shutdown(self, req: dict[str, Any]) -> dict[str, Any]:
        self.stopping = True
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hpcbatch host agent (JSON lines on stdio)")
    parser.add_argument("--root", required=True, help="the host's hpcbatch work directory")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds; 0: none")
    parser.add_argument("--no-pidfd", action="store_true", help="(tests) poll as on old kernels")
    opts = parser.parse_args(argv)
    try:
        return Agent(opts.root, opts.heartbeat, use_pidfd=not opts.no_pidfd).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
