"""Changes to a running attempt other than its end: its time limit, its stdin.

`hpcbatch update JOB --time` on a running job reaches the host here: the
shepherd (procs.wait_job) holds the attempt's kill deadline, counted from the
job's start, so the agent writes the new limit to the attempt's `limit` file
and sends the shepherd SIGUSR1; the shepherd reads the file and moves its
deadline (and its `--signal` warning) to it, earlier or later. A job whose
shepherd is gone (an adopted job) has no deadline left to move: `found` false.

`hpcbatch run` forwards its stdin to the job (as srun does): a launch with
`stdin` makes the attempt's `stdin` a FIFO, whose write end the agent opens
(read-write, so neither side waits for the other and the job never sees an
early EOF) before the shepherd starts; the job reads it as its standard input.
The `stdin` op appends bytes to the attempt's buffer, written as the pipe takes
them (the selector says when it is writable again), and `eof` closes the write
end once the buffer is out: the job reads EOF. The reply's `pending` is what is
not in the pipe yet, so the sender can wait before sending more. The write end
lives in this agent: if it exits, the job reads EOF.

Standard library only: uploaded with the rest of the agent.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import selectors
import signal
from collections.abc import Callable
from typing import Any

from hpcbatch.transport.agent.loop import AgentHost
from hpcbatch.transport.agent.procs import alive, want_attempt, write_json
from hpcbatch.transport.agent.protocol import BadRequest, RetimeReply, StdinReply

__all__ = ["JobControlOps"]

MAX_PENDING = 16 << 20  # bytes of stdin kept for a job that does not read them
PIPE_SIZE = 1 << 20  # asked of the kernel for the job's stdin pipe (Linux; 64 KiB if refused)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Python 3.10+ names it


class _Feed:
    """One attempt's stdin: the FIFO's write end and what is not written yet."""

    __slots__ = ("buf", "eof", "fd", "watching")

    def __init__(self, fd: int) -> None:
        # A bytearray: taking written bytes off its front costs nothing (a bytes
        # buffer was copied whole on each write, and a stream crawled).
        self.fd, self.buf, self.eof, self.watching = fd, bytearray(), False, False


class JobControlOps:
    """The agent's job-control ops on running attempts."""

    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.feeds: dict[str, _Feed] = {}

    def ops(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"retime": self.op_retime, "stdin": self.op_stdin}

    # ----------------------------------------------------------------- stdin

    def open_stdin(self, attempt: str, adir: str) -> str:
        """Before the shepherd forks: the attempt's stdin FIFO, its write end held here."""
        path = os.path.join(adir, "stdin")
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        with contextlib.suppress(OSError):  # a larger pipe: fewer wake-ups for a stream
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.feeds[attempt] = _Feed(fd)
        return path

    def op_stdin(self, req: dict[str, Any]) -> StdinReply:
        attempt = want_attempt(req.get("attempt"))
        feed = self.feeds.get(attempt)
        if feed is None or feed.eof:
            raise BadRequest(f"attempt {attempt} takes no more input here", "no_attempt")
        try:
            data = base64.b64decode(str(req.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("data must be base64") from None
        if len(feed.buf) + len(data) > MAX_PENDING:
            raise BadRequest(f"attempt {attempt}: over {MAX_PENDING} bytes of input unread")
        feed.buf += data
        feed.eof = bool(req.get("eof"))
        self._flush(attempt, feed)
        return {"pending": len(feed.buf)}

    def _flush(self, attempt: str, feed: _Feed) -> None:
        while feed.buf:
            try:
                n = os.write(feed.fd, feed.buf[:PIPE_SIZE])
            except BlockingIOError:
                break
            except OSError:
                feed.buf.clear()  # nobody can read it any more
                break
            del feed.buf[:n]
        sel = self.agent.sel
        if feed.buf and not feed.watching:
            sel.register(feed.fd, selectors.EVENT_WRITE, lambda: self._flush(attempt, feed))
            feed.watching = True
        elif not feed.buf and feed.watching:
            sel.unregister(feed.fd)
            feed.watching = False
        if not feed.buf and feed.eof:
            self.close_stdin(attempt)

    def close_stdin(self, attempt: str) -> None:
        """EOF for the job (its input is all out, or the attempt ended)."""
        feed = self.feeds.pop(attempt, None)
        if feed is None:
            return
        if feed.watching:
            self.agent.sel.unregister(feed.fd)
        os.close(feed.fd)

    # ----------------------------------------------------------------- time limit

    def op_retime(self, req: dict[str, Any]) -> RetimeReply:
        attempt = want_attempt(req.get("attempt"))
        timeout = req.get("timeout_s")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise BadRequest(f"timeout_s must be a positive number of seconds or null: {timeout!r}")
        rec = self.agent.running.get(attempt)
        if rec is None or rec.get("adopted"):
            return {"found": False}
        if not alive(rec.get("shepherd"), rec.get("shepherd_start")):
            return {"found": False}
        write_json(self.agent.path(attempt, "limit"), {"timeout_s": timeout})
        try:
            os.kill(rec["shepherd"], signal.SIGUSR1)  # it reads the limit file
        except ProcessLookupError:
            return {"found": False}
        return {"found": True}
