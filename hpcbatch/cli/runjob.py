"""`hpcbatch run`'s life after submit, and `hpcbatch attach` (sattach): output live.

`run`: both output streams live, its stdin to the job (srun's `-i`: task 0 by
default), Ctrl-C ends the job.

stdout is followed on the calling thread, stderr on a second thread with its
own connection (a Client is one socket, not shared between threads). On
SIGINT (Ctrl-C) the job this command started is cancelled, as srun ends its
step, and the command exits 130 once the job is final. stdin is read on a third
thread and sent (`job_input`) once the job's main node runs; its end (EOF) is
sent too, so `echo hi | hpcbatch run cat` prints hi and ends.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import sys
import threading
import time
from typing import IO, Any

from hpcbatch.cli.logs import follow
from hpcbatch.client import Client, ClientError


def _follow_stderr(socket: str, job_id: int, done: threading.Event) -> None:
    try:
        with Client(socket, timeout=None) as client:
            follow(client, job_id, "stderr", sys.stderr)
    except (ClientError, OSError):
        pass  # the stdout follower reports a lost controller
    finally:
        done.set()


HIGH_WATER = 8 << 20  # bytes the job's host may hold unread before more is sent
CHUNK = 1 << 18  # bytes of stdin per job_input message at most (larger ones cost more per byte)


def feed_stdin(socket: str, job_id: int) -> None:
    """Send this process's stdin to the job, in the background, until EOF."""
    threading.Thread(target=_feed, args=(socket, job_id), daemon=True).start()


def _feed(socket: str, job_id: int) -> None:
    # The job's end ends this too: its next call is refused (not running), or the
    # process exits with the thread blocked on a read.
    with contextlib.suppress(ClientError, OSError), Client(socket, timeout=None) as client:
        delay = 0.02
        while True:
            data = _read_some()
            fields = {"job_id": job_id, "data": base64.b64encode(data).decode(), "eof": not data}
            got = client.call("job_input", **fields)
            while "waiting" in got:  # not running yet: nothing was sent
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                got = client.call("job_input", **fields)
            while data and got["pending"] > HIGH_WATER:  # the job reads slower than we send
                time.sleep(0.01)
                got = client.call("job_input", job_id=job_id, data="", eof=False)
            if not data:
                return


def _read_some() -> bytes:
    """What stdin has now, up to CHUNK (b"": EOF): one read that waits, then as much as
    is there without waiting, so that a stream goes in few large messages and a line
    typed at a terminal goes at once."""
    data = os.read(0, CHUNK)
    while data and len(data) < CHUNK and select.select([0], [], [], 0)[0]:
        more = os.read(0, CHUNK - len(data))
        if not more:
            break  # EOF: sent with the next (empty) read
        data += more
    return data


def stream_until_final(client: Client, socket: str, job_id: int) -> dict[str, Any]:
    """Follow stdout and stderr until the job is final; its summary. Ctrl-C cancels it."""
    err_done = threading.Event()
    threading.Thread(target=_follow_stderr, args=(socket, job_id, err_done), daemon=True).start()
    try:
        follow(client, job_id, "stdout", sys.stdout)
    except KeyboardInterrupt:
        sys.stderr.write(f"hpcbatch: interrupted: cancelling job {job_id}\n")
        # A new connection: the interrupted call's reply may still be on the old one.
        with Client(socket, timeout=None) as fresh:
            fresh.call("cancel", job_ids=[job_id], reason="run interrupted (Ctrl-C)")
            (final,) = fresh.call("wait", job_ids=[job_id])
        final["interrupted"] = True
        return dict(final)
    (final,) = client.call("wait", job_ids=[job_id])
    err_done.wait(timeout=5.0)
    return dict(final)


class _Prefixed:
    """A text stream that prefixes every complete line (sattach -l style)."""

    def __init__(self, out: IO[str], prefix: str, lock: threading.Lock) -> None:
        self.out, self.prefix, self.lock, self.rest = out, prefix, lock, ""

    def write(self, data: str) -> None:
        *lines, self.rest = (self.rest + data).split("\n")
        if lines:
            with self.lock:
                self.out.write("".join(f"{self.prefix}{line}\n" for line in lines))
                self.out.flush()

    def flush(self) -> None:
        if self.rest:
            self.write("\n")


def _follow_node(
    socket: str, job_id: int, stream: str, node: int, out: IO[str], errors: list[str]
) -> None:
    try:
        with Client(socket, timeout=None) as client:
            follow(client, job_id, stream, out, node=node)
        out.flush()
    except (ClientError, OSError) as exc:
        errors.append(f"node {node} {stream}: {exc}")


def attach(socket: str, job: dict[str, Any], label: bool) -> list[str]:
    """Stream every node's stdout and stderr of a running job until it ends.

    Output is shown from the start of the attempt. With several nodes (or
    `label`), each line is prefixed with its node's index and host.
    """
    attempt = job.get("attempt")
    nodes = sorted({(a["node"], a["host"]) for a in job.get("attempts") or []
                    if a.get("attempt") == attempt})  # fmt: skip
    lock = threading.Lock()
    errors: list[str] = []
    threads = []
    for node, host in nodes or [(0, "")]:
        for stream, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            sink: Any = _Prefixed(out, f"{node} ({host}): ", lock) if label else out
            t = threading.Thread(
                target=_follow_node, args=(socket, job["id"], stream, node, sink, errors),
                daemon=True,
            )  # fmt: skip
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    return errors
