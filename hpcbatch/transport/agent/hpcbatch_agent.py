#!/usr/bin/env python3
"""hpcbatch host agent: runs on each host, speaks JSON lines over an SSH channel.

Why it exists: the controller reaches hosts only over SSH, yet a job must outlive
both the SSH connection and this agent. So the agent never waits on jobs itself.
Each `launch` gets a *shepherd* (forked by the agent's forker, forker.py) that
leaves the SSH session (setsid, no inherited descriptors), starts the job in its
own process group, enforces the timeout and `kill` requests, and writes the exit
status to disk atomically. The agent only watches shepherds (pidfds: no polling)
and reports their ends. A new agent, after a reconnect, finds everything again
on disk:

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
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from typing import Any, cast

from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent.ctrops import ImagePulls, container_command, remove_container
from hpcbatch.transport.agent.epoch import EpochFence
from hpcbatch.transport.agent.forker import Forker
from hpcbatch.transport.agent.gpus import GpuSampler
from hpcbatch.transport.agent.hostfacts import host_facts
from hpcbatch.transport.agent.jobctl import JobControlOps
from hpcbatch.transport.agent.loop import EventLoop
from hpcbatch.transport.agent.procs import (
    ATTEMPT_RE,
    DEFAULT_GRACE_S,
    OUTPUT_CAP,
    alive,
    lost_record,
    read_json,
    set_name,
    signal_group,
    utf8_cut,
    want,
    want_attempt,
    want_cpus,
    want_env,
    want_strings,
    write_json,
)
from hpcbatch.transport.agent.protocol import (
    AttemptStateName,
    BadRequest,
    Empty,
    ExitEvent,
    ExitRecord,
    FenceReply,
    HeartbeatEvent,
    HelloReply,
    KillReply,
    LaunchReply,
    ReadReply,
    ReportedAttempt,
)
from hpcbatch.transport.agent.purge import collected_ops
from hpcbatch.transport.agent.relay import RelayHub
from hpcbatch.transport.agent.runas import (
    WORK,
    UserHelpers,
    become,
    host_env,
    lookup,
    make_work_dir,
    user_env,
    want_umask,
)
from hpcbatch.transport.agent.tools import FILE_RE, ExecRun, code_location, want_files, write_shims
from hpcbatch.transport.agent.userpaths import (
    Checker,
    in_child,
    open_output,
    read_output,
)
from hpcbatch.transport.agent.zygote import Spares

FORKED = {  # what the forker starts (forker.py): a spare's shepherd, a launch's, a user's helper
    "waiting": "hpcbatch.transport.agent.zygote:waiting_entry",
    "shepherd": "hpcbatch.transport.agent.zygote:shepherd_entry",
    "user_helper": "hpcbatch.transport.agent.runas:helper_entry",
}


class Agent(EventLoop):
    """The attempts of one host: launched, watched, reported, killed, acknowledged."""

    def __init__(self, root: str, heartbeat: float, use_pidfd: bool = True) -> None:
        super().__init__(use_pidfd)
        self.root = os.path.abspath(root)
        self.attempts = os.path.join(self.root, "attempts")
        os.makedirs(self.attempts, exist_ok=True)
        os.chmod(self.attempts, 0o711)  # jobs run as their user pass through, never list
        self.heartbeat = heartbeat
        with open(code_location()[0], "rb") as f:
            self.version = hashlib.sha256(f.read()).hexdigest()[:16]
        self.bin = os.path.join(self.root, "bin")
        self.cgroups = cgroups.probe(self.root)  # what limits this host can hold jobs to
        self.forker = Forker(FORKED)  # forks the launches' processes, not the agent
        with contextlib.suppress(OSError):  # else at the first launch, which fails with why
            self.forker.start()
        self.helpers = UserHelpers(self.forker.spawn, self.after)  # as the user: their files
        self.spares = Spares(self, self.cgroups, self.forker, self.shepherd_ended)  # ahead
        self.checker = Checker()  # the launches' path checks, in a child kept for them
        self.running: dict[str, dict[str, Any]] = {}  # attempt -> its pid record
        self.sampled: dict[str, dict[str, Any] | None] = {}  # attempt -> its cgroup
        self.reported: set[str] = set()
        self.gpus = GpuSampler(self.sel)  # nvidia-smi, where there is one
        self.ops.update({
            "hello": self.op_hello, "launch": self.op_launch, "kill": self.op_kill,
            "read": self.op_read, "fence": self.op_fence,
            "exec": self.op_exec, "shutdown": self.op_shutdown,
        })  # fmt: skip
        self.images = ImagePulls(self)  # the `image` op's pulls, by attempt
        self.ops["image"] = self.images.start  # replies when the image is there, or is not
        self.relay, self.jobctl = RelayHub(self), JobControlOps(self)  # jobctl: retime, stdin
        self.ops.update({**self.relay.ops(), **self.jobctl.ops()})
        self.ops.update(collected_ops(self.attempts, self.running, self.state))  # ack, purge
        EpochFence(self.root).install(self.ops)  # a newer controller's hosts refuse an older
        write_shims(self.bin)
        self.scan()

    def run(self) -> int:
        if self.heartbeat > 0:
            self.after(self.heartbeat, self.send_heartbeat)
        self.loop()
        self.relay.close()
        self.helpers.close()
        return 0

    def send_heartbeat(self) -> None:
        event: HeartbeatEvent = {"ev": "heartbeat", "t": time.time(), "running": len(self.running)}
        usage = self.sample_usage()
        for attempt, gpu in self.gpus.live().items():  # the last query's answer
            usage.setdefault(attempt, {}).update(gpu)
        self.gpus.poll()  # their GPUs too (the answer comes back later, through `sel`)
        if usage:
            event["usage"] = usage
        self.send(event)
        self.after(self.heartbeat, self.send_heartbeat)

    def sample_usage(self) -> dict[str, dict[str, float]]:
        """Each running attempt's CPU seconds and memory, from its cgroup (live usage)."""
        out: dict[str, dict[str, float]] = {}
        for attempt in self.running:
            if attempt not in self.sampled:  # found after a restart: its meta says
                meta = read_json(self.path(attempt, "meta.json"))
                cg = meta.get("cgroup") if isinstance(meta, dict) else None
                self.sampled[attempt] = cg if isinstance(cg, dict) and cg.get("dirs") else None
            cg = self.sampled[attempt]
            seen = cgroups.sample(cg) if cg else None
            if seen is not None:
                out[attempt] = seen
        return out

    # ----------------------------------------------------------------- attempts and their ends

    def track(self, attempt: str, rec: dict[str, Any], found: bool = False) -> None:
        """Watch a running attempt: a kept shepherd says when it ended (zygote.py); one
        forked for the launch ends with it; one `found` on disk (an earlier agent's,
        which that agent may keep for another job) by its job's end, then `exit`."""
        self.running[attempt] = rec
        if rec.get("kept"):
            return
        pid, start = rec.get("shepherd"), rec.get("shepherd_start")
        if found or not alive(pid, start):  # its job's end, then its record
            pid, start = rec.get("job"), rec.get("job_start")
        if pid and alive(pid, start):
            self.watch(pid, start, False, lambda: self.shepherd_ended(attempt))
        else:
            self.shepherd_ended(attempt)

    def shepherd_ended(self, attempt: str, wait: float = 0.02) -> None:
        """Its `exit` record (looked for again while its shepherd lives: a job's group may
        take it a while); if the shepherd died, the job adopted (lost at its end)."""
        rec = self.running.get(attempt)
        if rec is None:  # finished already
            return
        result = self.exit_record(attempt)
        if result is not None:
            self.finish(attempt, result)
        elif not rec.get("adopted") and alive(rec.get("shepherd"), rec.get("shepherd_start")):
            self.after(wait, lambda: self.shepherd_ended(attempt, min(2 * wait, 1.0)))
        elif alive(rec.get("job"), rec.get("job_start")):
            rec["adopted"] = True
            end = lambda: self.finish(attempt, lost_record(self.path(attempt)))  # noqa: E731
            self.watch(rec["job"], rec.get("job_start"), False, end)
        else:
            self.finish(attempt, lost_record(self.path(attempt)))

    def finish(self, attempt: str, result: ExitRecord) -> None:
        self.running.pop(attempt, None)
        cg = self.sampled.pop(attempt, None)
        self.relay.kill_attempt(attempt)
        self.jobctl.close_stdin(attempt)
        if attempt not in self.reported:
            self.reported.add(attempt)
            result["usage"] = {**(result.get("usage") or {}), **self.gpus.take(attempt)}
            event: ExitEvent = {"ev": "exit", "attempt": attempt, **result}
            self.send(event)
        # After the event, off its path: the group (its shepherd read the usage and left
        # the removal to us; again later while relayed processes are not reaped), and
        # the spare the launch took made again.
        if cg:
            self.drop_cgroup(cg, 25)
        self.spares.fill()

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
            if attempt in self.running:
                continue
            if os.path.exists(self.path(attempt, "exit")):
                self.drop_ended_cgroup(attempt)
                continue
            rec = read_json(self.path(attempt, "pid"))
            if isinstance(rec, dict) and (
                alive(rec.get("shepherd"), rec.get("shepherd_start"))
                or alive(rec.get("job"), rec.get("job_start"))
            ):
                self.track(attempt, rec, found=True)

    def drop_ended_cgroup(self, attempt: str) -> None:
        """An ended attempt's group that its agent ended before removing (a shepherd
        leaves the removal to the agent that launched it)."""
        meta = read_json(self.path(attempt, "meta.json"))
        cg = meta.get("cgroup") if isinstance(meta, dict) else None
        if isinstance(cg, dict) and cg.get("dirs"):
            cgroups.remove(cg)

    def exit_record(self, attempt: str) -> ExitRecord | None:
        """The shepherd's `exit` file, once it is written."""
        result = read_json(self.path(attempt, "exit"))
        return cast("ExitRecord", result) if isinstance(result, dict) else None

    def state(self, attempt: str) -> tuple[AttemptStateName, ExitRecord | None]:
        result = self.exit_record(attempt)
        if result is not None:
            return "exited", result
        if attempt in self.running:
            return "running", None
        lost = lost_record(self.path(attempt))
        lost["ended"] = None
        return "lost", lost

    # ----------------------------------------------------------------- ops

    def op_hello(self, req: dict[str, Any]) -> HelloReply:
        self.scan()
        attempts: list[ReportedAttempt] = []
        for attempt in self.listed():
            state, result = self.state(attempt)
            rec = read_json(self.path(attempt, "pid"))
            pid = rec.get("job") if isinstance(rec, dict) else None
            attempts.append({"attempt": attempt, "state": state, "pid": pid, "exit": result})
        facts = {**host_facts(), "cgroups": self.cgroups.facts()}
        return {"agent_version": self.version, "pid": os.getpid(), "facts": facts,
                "attempts": attempts}  # fmt: skip

    def op_launch(self, req: dict[str, Any]) -> LaunchReply:
        attempt = want_attempt(req.get("attempt"))
        script = want(req, "script", str)
        if script is None:
            raise BadRequest("field 'script' is required")
        adir = self.path(attempt)
        if os.path.lexists(adir):
            raise BadRequest(f"attempt {attempt} already exists", "exists")
        user, umask = self.job_user(req), want_umask(req)
        udir = os.path.join(adir, WORK) if user else adir  # the job's own files
        outputs = {stream: want(req, stream, str) for stream in ("stdout", "stderr")}
        home = user["home"] if user else "~"
        cwd = want(req, "cwd", str) or home
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if not want(req, "append", bool, False):  # a retry's attempt adds to the files
            flags |= os.O_TRUNC
        fds: list[int] = []
        if user:  # checked, made and opened by the user's own process: one child
            self.make_attempt_dir(attempt, adir, user)
            try:
                checked, fds = self.helpers.prepare(
                    user, udir, script, want_files(req), cwd, outputs, flags, umask
                )
            except BaseException:
                shutil.rmtree(adir, ignore_errors=True)
                raise
        else:
            checked = self.checker.launch_paths(cwd, outputs)
        job_env = self.job_env(req, attempt, udir)
        if user:
            job_env.update(user_env(user))
        affinity = want_cpus(req)  # pinned cores: the job's CPU list
        job_env.update(cgroups.cpu_env(affinity))
        spec: dict[str, Any] = {
            "user": user,
            "udir": udir,
            "cwd": checked["cwd"],
            "env": {**host_env(user), **job_env},
            "umask": umask,
            "timeout_s": want(req, "timeout_s", float),
            "grace_s": want(req, "kill_grace_s", float, DEFAULT_GRACE_S),
            "affinity": affinity,
        }
        if spec["timeout_s"] is not None and spec["timeout_s"] <= 0:
            raise BadRequest(f"timeout_s must be positive (or null), got {spec['timeout_s']}")
        spec["warn_signal"] = want(req, "warn_signal", int)
        if spec["warn_signal"] is not None and not 0 < spec["warn_signal"] < signal.NSIG:
            raise BadRequest(f"warn_signal {spec['warn_signal']} is not a signal number")
        spec["warn_before_s"] = want(req, "warn_before_s", float, 60.0)
        spec["warn_batch_only"] = want(req, "warn_batch_only", bool, False)
        paths = {s: checked[s] or os.path.join(udir, s) for s in ("stdout", "stderr")}
        args = want_strings(req, "args")
        want_files(req)  # checked before anything is written
        spec["job_env"] = job_env
        spec["fds"], spec["flags"] = fds, flags
        try:
            if not user:
                self.make_attempt_dir(attempt, adir, None)
            return self.start(attempt, adir, req, script, args, spec, paths)
        except BaseException:
            for fd in set(fds):
                os.close(fd)
            shutil.rmtree(adir, ignore_errors=True)
            raise

    def make_attempt_dir(self, attempt: str, adir: str, user: dict[str, Any] | None) -> None:
        """The attempt's directory (root's, 0711, with the user's work/ in it, when the
        job runs as its user; else the agent's, 0700)."""
        try:
            os.mkdir(adir, 0o711 if user else 0o700)  # the user passes through to work/
        except FileExistsError:
            raise BadRequest(f"attempt {attempt} already exists", "exists") from None
        if user:
            make_work_dir(user, os.path.join(adir, WORK))

    def job_user(self, req: dict[str, Any]) -> dict[str, Any] | None:
        """The account the job runs as (run_as = "submitter"), or None: the agent's."""
        name = want(req, "user", str)
        if name is None:
            return None
        return lookup(name, socket.gethostname())

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

    def start(
        self, attempt: str, adir: str, req: dict[str, Any], script: str, args: list[str],
        spec: dict[str, Any], paths: dict[str, str],
    ) -> LaunchReply:  # fmt: skip
        user, udir = spec["user"], spec.pop("udir")
        script_path = os.path.join(udir, "script")
        shebang = script.startswith("#!")
        spec["argv"] = [script_path, *args] if shebang else ["/bin/sh", script_path, *args]
        if user is None:
            fd = os.open(script_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "wb") as f:
                f.write(script.encode())
        notes = container_command(self, attempt, udir, req, spec) if req.get("container") else ""
        if user is None:
            for name, text in want_files(req).items():
                with open(os.path.join(adir, name), "w") as f:
                    f.write(text)
        write_json(os.path.join(adir, "env.json"), spec.pop("job_env"), mode=0o600)
        meta = {k: v for k, v in req.items() if k not in ("id", "op", "script")}
        meta.update(cwd_resolved=spec["cwd"], stdout_path=paths["stdout"], run_as=user)
        meta.update(stderr_path=paths["stderr"], argv=spec["argv"], cleanup=spec.get("cleanup"),
                    cleanup_user=spec.get("cleanup_user"))  # fmt: skip
        fds: list[int] = spec.pop("fds")  # the user's, opened by the user's process
        flags = spec.pop("flags")
        try:
            for stream in ("stdout", "stderr") if user is None else ():
                same = stream == "stderr" and (
                    os.path.realpath(paths["stderr"]) == os.path.realpath(paths["stdout"])
                )
                try:
                    fd = fds[0] if same else open_output(paths[stream], flags, spec["umask"])
                    fds.append(fd)
                except OSError as exc:
                    raise BadRequest(f"cannot open {stream} file: {exc}", "bad_path") from None
            if notes:
                os.write(fds[1], notes.encode(errors="replace"))
            spec["cgroup"] = self.job_cgroup(attempt, req)
            if spec["cgroup"]:  # for an agent that finds the job without its shepherd
                meta["cgroup"] = spec["cgroup"]
            write_json(os.path.join(adir, "meta.json"), meta, mode=0o600)
            spec["stdin"] = self.jobctl.open_stdin(attempt, adir) if req.get("stdin") else None
            try:
                rec = self.spares.start(adir, spec, fds[0], fds[1])
            except BaseException:
                cgroups.remove(spec["cgroup"])
                self.jobctl.close_stdin(attempt)
                raise
        finally:
            for fd in set(fds):
                os.close(fd)
        self.sampled[attempt] = spec["cgroup"]
        self.gpus.track(attempt, req.get("limits"))
        self.track(attempt, rec)
        return {"pid": rec["job"], "started": rec["started"]}

    def job_cgroup(self, attempt: str, req: dict[str, Any]) -> dict[str, Any] | None:
        """The attempt's cgroup with the request's `limits`, where this host enforces them."""
        limits = want(req, "limits", dict)
        if not limits:
            return None
        try:
            return cgroups.create(self.cgroups, attempt, limits, self.spares.take())
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot set the job's limits: {exc}") from None

    def drop_cgroup(self, cg: dict[str, Any], left: int) -> None:
        """Remove an ended attempt's cgroup; try again later while it is still busy."""
        if not cgroups.remove(cg) and left > 1:
            self.after(0.2, lambda: self.drop_cgroup(cg, left - 1))

    def op_kill(self, req: dict[str, Any]) -> KillReply:
        attempt = want_attempt(req.get("attempt"))
        reason = want(req, "reason", str, "killed")
        grace = want(req, "grace_s", float, DEFAULT_GRACE_S)
        found = attempt in self.running
        if found:
            self.kill(attempt, reason, grace)
        self.images.cancel(attempt)
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
            remove_container(meta)

    def op_read(self, req: dict[str, Any]) -> ReadReply:
        attempt = want_attempt(req.get("attempt"))
        stream = want(req, "stream", str, "stdout")
        if stream not in ("stdout", "stderr"):
            raise BadRequest(f"stream must be stdout or stderr, got {stream!r}")
        offset = want(req, "offset", int, 0)
        limit = max(1, min(want(req, "limit", int, OUTPUT_CAP), 16 * 1024 * 1024))
        meta = read_json(self.path(attempt, "meta.json"))
        if not isinstance(meta, dict):
            raise BadRequest(f"no attempt {attempt}", "no_attempt")
        exited = self.state(attempt)[0] != "running"  # before reading: no output after it
        path, user = meta[f"{stream}_path"], meta.get("run_as")
        got = in_child(
            lambda: read_output(path, offset, limit), f"reading {stream}",
            become=(lambda: become(user)) if user else None,
        )  # fmt: skip
        data, size = got["data"].encode("latin-1"), got["size"]
        done = exited and offset + len(data) >= size
        cut = 0 if done else utf8_cut(data)
        if cut < len(data):
            data = data[: len(data) - cut]
        text = data.decode("utf-8", errors="replace")
        return {"data": text, "offset": offset + len(data), "done": done}

    def op_fence(self, req: dict[str, Any]) -> FenceReply:
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
        ExecRun(self, req["id"], argv, env, want(req, "timeout_s", float, 30.0))  # replies later

    def op_shutdown(self, req: dict[str, Any]) -> Empty:
        self.stopping = True
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hpcbatch host agent (JSON lines on stdio)")
    parser.add_argument("--root", required=True, help="the host's hpcbatch work directory")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds; 0: none")
    parser.add_argument("--no-pidfd", action="store_true", help="(tests) poll as on old kernels")
    opts = parser.parse_args(argv)
    set_name("hb-agent")
    try:
        return Agent(opts.root, opts.heartbeat, use_pidfd=not opts.no_pidfd).run()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
