"""User paths, touched only in a child process with a deadline.

Why it exists: the agent is one single-threaded loop that also sends the
heartbeats. A user's working directory or output file may sit on a hung
network mount (every `stat` blocks), or be a FIFO (an `open` blocks until
someone opens the other end). Done in the agent, either stops the heartbeats
and the controller cuts the host off with every job on it. So the checks of
`launch` and the reads of `read` run in a forked child that reports one JSON
line through a pipe; the agent waits for it at most `deadline_s` and then
kills it and refuses the request (code `bad_path`), and the host stays up.

Where the job runs as its submitter, the child switches to the user first
(`as_user`), so a path is checked with the user's rights, not the agent's.

Standard library only: uploaded to hosts with the rest of the agent.
"""

from __future__ import annotations

import json
import os
import select
import signal
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
        try:
            if become is not None:
                become()
            out: dict[str, Any] = {"ok": work()}
        except BadRequest as exc:
            out = {"error": str(exc), "code": exc.code}
        except BaseException as exc:  # reported to the agent, which refuses
            out = {"error": f"{what}: {type(exc).__name__}: {exc}", "code": "bad_path"}
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
    try:
        out = json.loads(data)
    except ValueError:
        raise BadRequest(f"{what}: the checking process failed", "bad_path") from None
    if "error" in out:
        raise BadRequest(out["error"], out.get("code", "bad_path"))
    return out["ok"]


def _read_until(fd: int, deadline: float) -> bytes | None:
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


_unreaped: set[int] = set()


def reap(pid: int) -> None:
    """Collect a child that has answered (it exits right after), without waiting on the
    request's path: now if it is gone, else at a later call (with the children still
    pending then). One killed in an uninterruptible wait is collected once it ends."""
    _unreaped.add(pid)
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
