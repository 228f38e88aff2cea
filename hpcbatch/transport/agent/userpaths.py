"""User paths, touched only in a child process with a deadline.

Why it exists: the agent is one single-threaded loop that also sends the
heartbeats. A user's working directory or output file may sit on a hung
network mount (every `stat` blocks), or be a FIFO (an `open` blocks until
someone opens the other end). Done in the agent, either stops the heartbeats
and the controller cuts the host off with every job on it. So the checks of
`launch` and the reads of `read` run in a child process that reports one JSON
line; the agent waits for it at most `deadline_s` and then kills it and
refuses the request (code `bad_path`), and the host stays up.

The checks of a launch as the agent's own login go to one child kept for them
(`Checker`), so that a launch pays a round trip on a socket, not a fork of
the agent (a fork and an exit per launch were about 1.5 ms of CPU a job,
docs/performance.md); the others fork a child per request (`in_child`).

Where the job runs as its submitter, the child switches to the user first
(`as_user`), so a path is checked with the user's rights, not the agent's.

Standard library only: uploaded to hosts with the rest of the agent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import stat
import time
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.protocol import BadRequest

if TYPE_CHECKING:
    from collections.abc import Callable

DEADLINE_S = 5.0
"""How long a check of user paths may take (a hung mount answers never)."""


def kind_of(mode: int) -> str:
    """A file type in words, as `logs` and launch errors say it."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISCHR, "a character device"), (stat.S_ISDIR, "a directory"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def in_child(
    work: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S,
    become: Callable[[], None] | None = None,
) -> Any:  # fmt: skip
    """Run `work` in a forked child (after `become`, e.g. the switch to the job's
    user) and return its JSON result. Its BadRequest comes back as one; a child
    that does not answer by the deadline is killed and the request refused."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        code = 0

        def work_as() -> Any:
            if become is not None:
                become()
            return work()

        out = _answer(work_as, what)
        try:
            os.write(w, json.dumps(out).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    try:
        data = _read_until(r, time.monotonic() + deadline_s)
    finally:
        os.close(r)
    if data is None:
        os.kill(pid, signal.SIGKILL)  # a child in an uninterruptible wait ends when it can
        reap(pid)
        raise BadRequest(f"{what} did not answer in {deadline_s:g} s (a hung mount?)", "bad_path")
    reap(pid)
    return _result(data, what)


def _answer(work: Callable[[], Any], what: str) -> dict[str, Any]:
    """In a checking child: `work`'s result, or the error the agent refuses with."""
    try:
        return {"ok": work()}
    except BadRequest as exc:
        return {"error": str(exc), "code": exc.code}
    except BaseException as exc:  # reported to the agent, which refuses
        return {"error": f"{what}: {type(exc).__name__}: {exc}", "code": "bad_path"}


def _result(data: bytes, what: str) -> Any:
    """In the agent: a checking child's answer, or the BadRequest it reported."""
    try:
        out = json.loads(data)
    except ValueError:
        raise BadRequest(f"{what}: the checking process failed", "bad_path") from None
    if "error" in out:
        raise BadRequest(out["error"], out.get("code", "bad_path"))
    return out["ok"]


class Checker:
    """One child kept for the checks of a launch's paths as the agent's own login.

    It is forked once (the first launch, and again after one missed its deadline)
    and answers one JSON line per request on a socket. A request that is not
    answered by the deadline gets the child killed and the launch refused, as
    with `in_child`; the next launch starts a new child. The child ends at end
    of file on its socket or when the agent is gone."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._sock: socket.socket | None = None

    def launch_paths(
        self, cwd: str, outputs: dict[str, str | None], deadline_s: float = DEADLINE_S
    ) -> dict[str, Any]:
        """check_launch_paths(cwd, outputs), in the kept child."""
        got: dict[str, Any] = self._call([cwd, outputs], "the job's paths", deadline_s)
        return got

    def _call(self, args: list[Any], what: str, deadline_s: float) -> Any:
        if _unreaped:
            reap_pending()  # a child killed for a hang, once it has ended
        request = json.dumps(args).encode() + b"\n"
        sock = self._sock
        try:
            if sock is None:
                raise BrokenPipeError
            sock.sendall(request)
        except OSError:  # none yet, or it died (killed by someone): a new one
            self.close()
            self._start()
            sock = self._sock
            assert sock is not None
            sock.sendall(request)
        try:
            data = _read_until(sock.fileno(), time.monotonic() + deadline_s, b"\n")
        except OSError:
            data = b""
        if data is None or not data.endswith(b"\n"):
            self.close()
            if data is None:
                raise BadRequest(
                    f"{what} did not answer in {deadline_s:g} s (a hung mount?)", "bad_path"
                )
            raise BadRequest(f"{what}: the checking process failed", "bad_path")
        return _result(data, what)

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        ours.set_inheritable(False)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                ours.close()
                _serve_checks(theirs)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self._pid, self._sock = pid, ours

    def close(self) -> None:
        """Let the child go (killed: it may be stuck on a hung mount); reaped when it ends."""
        if self._sock is not None:
            self._sock.close()
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            reap(self._pid)
        self._pid, self._sock = None, None


def _serve_checks(sock: socket.socket) -> None:
    """The kept child: answer launch path checks until the agent lets it go."""
    parent = os.getppid()
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write("hb-check")  # as procs.set_name names the agent's other processes
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):  # not the agent's channel to the controller
        os.dup2(devnull, fd)
    os.closerange(3, sock.fileno())
    os.closerange(sock.fileno() + 1, 1 << 16)
    buf = b""
    while True:
        ready, _, _ = select.select([sock], [], [], 5.0)
        if not ready:
            if os.getppid() != parent:
                return  # the agent is gone
            continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out = _answer(functools.partial(_check_line, line), "the job's paths")
            sock.sendall(json.dumps(out).encode() + b"\n")


def _check_line(line: bytes) -> dict[str, Any]:
    cwd, outputs = json.loads(line)
    return check_launch_paths(cwd, outputs)


def _read_until(fd: int, deadline: float, end: bytes | None = None) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if end is not None and chunk.endswith(end):
            return b"".join(chunks)


_unreaped: set[int] = set()


def reap(pid: int) -> None:
    """Collect a child that has answered (it exits right after), without waiting on the
    request's path: now if it is gone, else at a later call (with the children still
    pending then). One killed in an uninterruptible wait is collected once it ends."""
    _unreaped.add(pid)
    reap_pending()


def reap_pending() -> None:
    """Collect the children `reap` left for later that have ended since."""
    for p in list(_unreaped):
        try:
            done = os.waitpid(p, os.WNOHANG)[0]
        except ChildProcessError:
            done = p
        if done:
            _unreaped.discard(p)


# --------------------------------------------------------------------------- the checks


def is_dir(path: str) -> bool:
    """In the child: whether `path` is a directory this process may enter (a relayed
    command's working directory, checked as the job's user)."""
    return os.path.isdir(path) and os.access(path, os.X_OK)


def check_launch_paths(cwd: str, outputs: dict[str, str | None]) -> dict[str, Any]:
    """In the child: the working directory and the output files of a launch.

    Returns {"cwd": absolute cwd, "stdout": path|None, "stderr": path|None}
    (None: the attempt directory's file). An output that exists must be a regular
    file or a character device (/dev/null); a FIFO or socket would block the job's
    shepherd or the agent's `read`, so it is refused here, at launch."""
    cwd = os.path.expanduser(cwd)
    if not os.path.isdir(cwd):
        raise BadRequest(f"working directory {cwd} does not exist (or is not a directory)",
                         "bad_path")  # fmt: skip
    cwd = os.path.abspath(cwd)
    paths: dict[str, Any] = {"cwd": cwd}
    for stream, value in outputs.items():
        if value is None:
            paths[stream] = None
            continue
        path = os.path.abspath(os.path.join(cwd, os.path.expanduser(value)))
        if not os.path.isdir(os.path.dirname(path)):
            raise BadRequest(f"{stream} directory {os.path.dirname(path)} does not exist",
                             "bad_path")  # fmt: skip
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        if stat.S_ISDIR(mode):
            raise BadRequest(f"{stream} path {path} is a directory", "bad_path")
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            raise BadRequest(f"{stream} path {path} is {kind_of(mode)}, not a regular file",
                             "bad_path")  # fmt: skip
        paths[stream] = path
    return paths


def read_output(path: str, offset: int, limit: int) -> dict[str, Any]:
    """In the child: up to `limit` bytes of an output file from `offset` (latin-1 in
    JSON, so bytes survive), and its size. A file that is not regular is refused,
    saying what it is, without opening it for reading (a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"data": "", "size": 0}
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"output {path} is {kind_of(st.st_mode)}, not a regular file: "
                         "hpcbatch cannot read it back", "bad_path")  # fmt: skip
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.lseek(fd, max(0, offset), os.SEEK_SET)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return {"data": b"".join(chunks).decode("latin-1"), "size": size}


def open_output(path: str, flags: int, umask: int | None = None) -> int:
    """Open an output file for the job without blocking: a FIFO that appeared since the
    check fails here (ENXIO without a reader, or refused after the fstat). A new file
    gets 0666 less `umask` (the job's: 0600 under the default 077), as a shell's `>`."""
    old = os.umask(umask) if umask is not None else None
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o666)
    finally:
        if old is not None:
            os.umask(old)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        os.close(fd)
        raise BadRequest(f"output {path} is {kind_of(mode)}, not a regular file", "bad_path")
    os.set_blocking(fd, True)
    return fd
