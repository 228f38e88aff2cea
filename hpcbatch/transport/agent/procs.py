"""The host agent's building blocks that need no agent state: files, processes.

Split from hpcbatch_agent.py so each module stays readable: request-field
checks and the shepherd (the process that owns one attempt's job, see
hpcbatch_agent's docstring). The shepherds and job processes import it (forker.py):
what it imports, each of them carries, so the host facts `hello` reports live in
hostfacts.py. Standard library only: it is uploaded to hosts with the rest of the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent.podman_state import run_repairing
from hpcbatch.transport.agent.protocol import BadRequest, ExitRecord
from hpcbatch.transport.agent.runas import as_user, become, looked_up_groups

if TYPE_CHECKING:
    from collections.abc import Callable

ATTEMPT_RE = re.compile(r"[A-Za-z0-9_.-]+")
OUTPUT_CAP = 64 * 1024
DEFAULT_GRACE_S = 10.0
LOST = "lost: shepherd died without an exit status"


# --------------------------------------------------------------------------- small helpers


def read_json(path: str) -> Any:
    """The JSON in `path`, or None if it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write_json(path: str, obj: Any, mode: int = 0o644) -> None:
    """Write `obj` to `path` atomically (a temporary file, then rename). Encoded whole:
    `json.dump` to a file takes the pure-Python encoder, several times slower."""
    data = json.dumps(obj).encode()
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    """Whether `pid` runs and is the process that started at `start` (no pid reuse)."""
    if not pid:
        return False
    if not os.path.isdir("/proc/self"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start is None or stat[1] == start


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


GROUP_GONE_S = 2.0
"""How long the shepherd waits for the job's killed processes to be gone before it writes
the exit: a KILLed process is still listed while the kernel tears it down (slower under
load, and a container's processes die after their runtime)."""


def wait_group_gone(pgid: int, limit_s: float) -> bool:
    """Wait until no process is left in the group `pgid` (at most `limit_s`); whether it
    is empty. Costs nothing when the group is already gone (the usual case)."""
    deadline = time.monotonic() + limit_s
    delay = 0.002
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # a member changed user: still there
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def close_fds(keep: set[int]) -> None:
    """Close every descriptor above 2 not in `keep`."""
    try:
        fds: list[int] = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def lost_record(adir: str) -> ExitRecord:
    """The end of an attempt whose shepherd died without writing `exit`, from its files."""
    rec, kill, meta = (read_json(os.path.join(adir, n)) for n in ("pid", "kill", "meta.json"))
    killed = isinstance(kill, dict)
    reason = f"{LOST} (killed: {kill['reason']})" if killed and kill.get("reason") else LOST
    used = cgroups.leftover_usage(meta.get("cgroup") if isinstance(meta, dict) else None)
    return {"code": None, "signal": None, "reason": reason, "timed_out": False, "killed": killed,
            "started": rec.get("started") if isinstance(rec, dict) else None,
            "ended": time.time(), "usage": used, "oom": False}  # fmt: skip


def read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(chunk)


def utf8_cut(data: bytes) -> int:
    """How many bytes at the end of `data` form an incomplete UTF-8 sequence."""
    for i in range(1, min(4, len(data)) + 1):
        c = data[-i]
        if c & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if 0xC0 <= c < 0xE0 else 3 if 0xE0 <= c < 0xF0 else 4 if c >= 0xF0 else 1
            return i if need > i else 0
    return 0


def exit_fields(status: int) -> tuple[int | None, int | None]:
    """(code, signal) from a wait status."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


# --------------------------------------------------------------------------- request fields


def want(req: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """Field `name` of `req`, checked to be of `kind`; `default` if missing or null."""
    value = req.get(name)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f"field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def want_cpus(req: dict[str, Any]) -> list[int]:
    """The host CPUs of the launch's pinned cores (`limits.cores`), or []."""
    try:
        return cgroups.host_cpus((want(req, "limits", dict) or {}).get("cores"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def want_attempt(value: Any) -> str:
    if not isinstance(value, str) or not ATTEMPT_RE.fullmatch(value) or value in (".", ".."):
        raise BadRequest(f"bad attempt id {value!r}: use characters [A-Za-z0-9_.-]")
    return value


def want_strings(req: dict[str, Any], name: str) -> list[str]:
    value = want(req, name, list, [])
    if not all(isinstance(v, str) and "\0" not in v for v in value):
        raise BadRequest(f"field {name!r} must be a list of strings without NUL")
    return list(value)


def want_env(req: dict[str, Any]) -> dict[str, str]:
    env = want(req, "env", dict, {})
    for k, v in env.items():
        if not k or "=" in k or "\0" in k or not isinstance(v, str) or "\0" in v:
            raise BadRequest(f"bad environment variable {k!r}={v!r}")
    return dict(env)


# --------------------------------------------------------------------------- the shepherd


class _Flags:
    term = False
    retime = False


def _on_term(signum: int, frame: Any) -> None:
    _Flags.term = True


def _on_retime(signum: int, frame: Any) -> None:
    _Flags.retime = True  # `retime`: the attempt's `limit` file holds its new time limit


def on_nothing(signum: int, frame: Any) -> None:
    """A handler only so that the signal wakes the loop through the wakeup fd."""


def shepherd(adir: str, spec: dict[str, Any], out_fd: int, err_fd: int, report: int) -> NoReturn:
    """The shepherd process: start the job, wait for it, write `exit`. Never returns."""
    try:
        wake = detach({out_fd, err_fd, report})
        supervise(adir, spec, out_fd, err_fd, report, wake)
    finally:
        os._exit(0)


def set_name(name: str) -> None:
    """Name this process as `ps -o comm`, `top` and `perf` show it (hb-agent, hb-shepherd,
    hb-job: a job's process until its exec), not one more `python3`. Best effort."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(name)


def detach(keep: set[int]) -> int:
    """A new shepherd leaves the agent: its own session, no inherited descriptors but
    `keep`, signals that wake it through the returned descriptor."""
    set_name("hb-shepherd")
    signal.set_wakeup_fd(-1)
    os.setsid()
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Popen's children get the default back
    for sig in (signal.SIGHUP, signal.SIGINT):  # caught, not ignored: an exec resets them
        signal.signal(sig, on_nothing)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    close_fds(keep)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGUSR1, _on_retime)
    signal.signal(signal.SIGCHLD, on_nothing)
    return wake_r


def start_job(spec: dict[str, Any], out_fd: int, err_fd: int, exec_w: int) -> NoReturn:
    """In the job's child process: set up descriptors and exec the script."""
    try:
        set_name("hb-job")
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.dup2(os.open(spec.get("stdin") or os.devnull, os.O_RDONLY), 0)  # stdin: a FIFO
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        close_fds({exec_w})
        cgroups.enter(spec.get("cgroup"), spec.get("affinity"))  # before exec: all it starts
        if spec.get("user") and not spec.get("keep_root"):
            become(spec["user"])  # run_as = "submitter": the job is the user's, from here on
        # The submitter's umask (077 by default); a docker client kept as root to reach its
        # daemon (containers.py: the container itself runs as the user) starts from "/".
        os.umask(spec.get("umask", 0o077))
        os.chdir("/" if spec.get("keep_root") else spec["cwd"])
        argv = spec["argv"]
        os.execve(argv[0], argv, spec["env"])
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        for fd, text in ((exec_w, message), (2, f"hpcbatch: cannot start the job: {message}\n")):
            with contextlib.suppress(OSError):
                os.write(fd, text.encode(errors="replace"))
    os._exit(127)


QUICK = sys.version_info >= (3, 11)
"""Whether this Python's Popen can start a job as start_job does (process_group: 3.11)."""


def quick_start(spec: dict[str, Any], out_fd: int, err_fd: int) -> subprocess.Popen[bytes] | None:
    """Start the job as start_job would, from a root shepherd already in the job's groups,
    with the child set up in C by Popen (and by vfork where it switches no user): none
    of a forked Python's page faults, in the child or after the fork in the shepherd
    (docs/performance.md, "The job started in C"). None where it cannot (a Python before
    3.11, a `cgroup` still to join, an exec or directory that fails): the caller then
    forks start_job, which says why as it always did. The caller waits for the child
    itself (wait4) and sets the Popen's `returncode` after, so Popen never reaps it."""
    keep_root = bool(spec.get("keep_root"))
    user = None if keep_root else spec.get("user")
    groups = looked_up_groups(user) if user else None
    if not QUICK or spec.get("cgroup") or (user and groups is None):
        return None
    ids: dict[str, Any] = {}
    cwd: str | None = "/" if keep_root else spec["cwd"]
    stdin = None
    try:
        if user:  # Popen changes directory before it switches users: do it as the user
            as_user(user, lambda: os.chdir(spec["cwd"]))
            ids = {"user": user["uid"], "group": user["gid"], "extra_groups": groups}
            cwd = None
        stdin = os.open(spec.get("stdin") or os.devnull, os.O_RDONLY)
        if spec.get("affinity"):
            os.sched_setaffinity(0, spec["affinity"])  # the child's, inherited
        return subprocess.Popen(
            spec["argv"], stdin=stdin, stdout=out_fd, stderr=err_fd, cwd=cwd, env=spec["env"],
            umask=spec.get("umask", 0o077), process_group=0, restore_signals=True, **ids,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        if stdin is not None:
            os.close(stdin)


def supervise(
    adir: str, spec: dict[str, Any], out_fd: int, err_fd: int, report: int, wake: int
) -> None:
    exec_r, exec_w = os.pipe()  # close-on-exec: EOF without data means exec succeeded
    started = time.time()
    job = os.fork()
    if job == 0:
        start_job(spec, out_fd, err_fd, exec_w)
    os.close(exec_w)
    oversee(adir, spec, out_fd, err_fd, report, wake, job, exec_r, started)


def oversee(
    adir: str, spec: dict[str, Any], out_fd: int, err_fd: int, report: int, wake: int,
    job: int, exec_r: int, started: float, leave: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """The shepherd once its job process is forked (here, or ahead: zygote.py): report
    the start, wait for the end, write `exit`. `leave`: takes this shepherd out of the
    job's groups once the start is reported (it started the job from inside them)."""
    _Flags.term = _Flags.retime = False  # a kept shepherd: a signal for its last attempt
    with contextlib.suppress(OSError):  # the child may have done it first
        os.setpgid(job, job)
    os.close(out_fd)
    if err_fd != out_fd:
        os.close(err_fd)
    exec_error = read_all(exec_r).decode(errors="replace")
    rec: dict[str, Any] = {"shepherd": os.getpid(), "job": job, "started": started}
    rec["shepherd_start"] = (proc_stat(os.getpid()) or ("", None))[1]
    rec["job_start"] = (proc_stat(job) or ("", None))[1]
    write_json(os.path.join(adir, "pid"), rec)
    with contextlib.suppress(OSError):  # if the agent is gone, the job runs on regardless
        os.write(report, (json.dumps(rec) + "\n").encode())
    os.close(report)
    if leave is not None:
        leave()
    status, reason, timed_out, rusage = wait_job(adir, job, spec, wake)
    signal_group(job, signal.SIGKILL)  # leftover background processes of the job
    wait_group_gone(job, GROUP_GONE_S)
    code, sig = exit_fields(status)
    if spec.get("cleanup") and (reason or timed_out or sig or spec.get("always_cleanup")):
        # a container outlives its client: killed by us, or by a signal from elsewhere
        # (the OOM killer, an administrator), podman's `--rm` never ran
        run_cleanup(spec["cleanup"], spec["env"], spec.get("cleanup_user"))
    # The agent that launched it removes the group once it has sent the exit event
    # (off the exit's path); a shepherd whose agent is gone removes it itself.
    used = job_usage(spec.get("cgroup"), rusage, started, sig, os.getppid() != spec.get("agent"))
    if exec_error:
        reason = f"exec failed: {exec_error}"
    killed = os.path.exists(os.path.join(adir, "kill"))  # a kill request (cancel, fence)
    oom = bool(used.pop("oom", False)) and not killed
    result = {"code": code, "signal": sig, "reason": reason, "timed_out": timed_out,
              "killed": killed, "started": started, "ended": time.time(),
              "usage": used, "oom": oom}  # fmt: skip
    write_json(os.path.join(adir, "exit"), result)


def reap(proc: subprocess.Popen[bytes]) -> tuple[int, dict[str, float] | None]:
    """An ended child's return code (as Popen's) and what it used: its CPU time and
    largest resident size, its waited-for descendants included (wait4)."""
    try:
        _pid, status, ru = os.wait4(proc.pid, 0)
    except ChildProcessError:  # reaped already
        return proc.wait(), None
    proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    used = {"cpu_user_s": ru.ru_utime, "cpu_sys_s": ru.ru_stime,
            "mem_peak_bytes": float(ru.ru_maxrss * 1024)}  # fmt: skip
    return proc.returncode, used


def job_usage(
    cg: dict[str, Any] | None, rusage: Any, started: float, sig: int | None, remove: bool = True
) -> dict[str, Any]:
    """What the job used: from its cgroup where it has one (then the cgroup is removed,
    if `remove`), else from the kernel's accounting of the waited-for process tree (wait4)."""
    used: dict[str, Any] = {"elapsed_s": round(time.time() - started, 3)}
    if rusage is not None:
        used.update(cpu_user_s=rusage.ru_utime, cpu_sys_s=rusage.ru_stime, source="rusage")
        used["mem_peak_bytes"] = rusage.ru_maxrss * 1024  # the largest single process
    if cg:
        seen = cgroups.usage(cg)
        used["oom"] = cgroups.oom_killed(seen, sig)
        used["mem_limit_bytes"] = cg.get("memory_bytes")
        for key in ("cpu_user_s", "cpu_sys_s", "mem_peak_bytes"):
            if seen.get(key) is not None:
                used[key] = seen[key]
        used["source"] = "cgroup"
        if remove:
            cgroups.remove(cg)
    return used


def run_cleanup(
    commands: list[list[str]], env: dict[str, str], user: dict[str, Any] | None = None
) -> None:
    """Run each command (e.g. `podman rm --force NAME`), ignoring failures: best effort
    that must not keep the exit status from being written. As `user` where the container
    is theirs (rootless podman of a job run as its submitter)."""
    run: dict[str, Any] = {"env": env, "preexec_fn": (lambda: become(user)) if user else None}
    for argv in commands:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if os.path.basename(argv[0]) == "podman":  # its state repaired where broken
                run_repairing(argv, run, 60)
                continue
            subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, timeout=60, **run,
            )  # fmt: skip


def wait_job(
    adir: str, job: int, spec: dict[str, Any], wake: int
) -> tuple[int, str | None, bool, Any]:
    """Wait for the job; on timeout or SIGTERM (a `kill`): TERM its group, KILL after grace."""
    timeout = spec["timeout_s"]
    begun = time.monotonic()
    deadline = begun + timeout if timeout is not None else None
    # `--signal`: a warning signal that long before the limit (to the group, or
    # with batch_only to the script alone), as Slurm does.
    warn_sig: int = spec.get("warn_signal") or 0
    warn_at: float | None = None
    if deadline is not None and warn_sig:
        warn_at = max(time.monotonic(), deadline - float(spec.get("warn_before_s") or 0))
    warned = False
    kill_at: float | None = None
    reason: str | None = None
    timed_out = False
    while True:
        pid, status, rusage = os.wait4(job, os.WNOHANG)
        if pid:
            return status, reason, timed_out, rusage
        now = time.monotonic()
        grace: float | None = None
        if _Flags.retime and not timed_out:  # `hpcbatch update --time` of a running job
            _Flags.retime = False
            timeout = _new_limit(adir, timeout)
            deadline = begun + timeout if timeout is not None else None
            if warn_sig and not warned and deadline is not None:
                warn_at = max(now, deadline - float(spec.get("warn_before_s") or 0))
        if _Flags.term:
            _Flags.term = False
            req = read_json(os.path.join(adir, "kill"))
            req = req if isinstance(req, dict) else {}
            reason = reason or str(req.get("reason") or "killed")
            grace = req.get("grace_s")
            grace = float(grace) if isinstance(grace, (int, float)) else spec["grace_s"]
        if warn_at is not None and now >= warn_at:
            warn_at, warned = None, True
            if spec.get("warn_batch_only"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(job, warn_sig)
            else:
                signal_group(job, warn_sig)
        if deadline is not None and now >= deadline and not timed_out:
            timed_out = True
            reason = reason or f"timed out after {timeout:g} s"
            grace = spec["grace_s"]
        if grace is not None:
            signal_group(job, signal.SIGTERM)
            signal_group(job, signal.SIGCONT)
            kill_at = min(kill_at if kill_at is not None else now + grace, now + grace)
        if kill_at is not None and now >= kill_at:
            signal_group(job, signal.SIGKILL)
        waits = [t - now for t in (deadline, kill_at, warn_at) if t is not None and t > now]
        selectors_wait(wake, min(waits) if waits else None)


def _new_limit(adir: str, old: float | None) -> float | None:
    """The time limit in the attempt's `limit` file (written by the agent's `retime`)."""
    req = read_json(os.path.join(adir, "limit"))
    if not isinstance(req, dict) or "timeout_s" not in req:
        return old
    value = req["timeout_s"]
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def selectors_wait(fd: int, timeout: float | None) -> None:
    """Wait until `fd` (a signal wakeup pipe) is readable or `timeout` passes; drain it."""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        if sel.select(timeout):
            os.read(fd, 4096)
