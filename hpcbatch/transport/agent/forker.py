"""A small process that forks the agent's per-launch processes for it.

Why it exists: a fork shares every page of the parent with the child, copy on
write, for as long as the child lives. The agent forked each launch's
shepherd (and, for a job run as its submitter, the child that makes the
user's files), and a shepherd lives as long as its job: so after each fork,
every page the agent wrote was copied first. At 100 launches a second the
agent copied its whole working set again after each one: page faults were
two thirds of the agent's CPU, the agent a third of the machine's, in
`perf record -a` of 2,000 trivial jobs (docs/performance.md, "The forker").

The forker is forked once from the agent, at its start, and does nothing but
fork: its own working set is a few pages. Each request names an entry of the
agent's (a function that never returns, run in the new child) with JSON
arguments and descriptors passed over the socket (SCM_RIGHTS); the answer is
the child's pid. The children are not the agent's: the agent watches them by
pidfd or /proc (never waitpid), and the forker lets the kernel reap them
(SIGCHLD ignored; each child puts the default back before its entry runs).
The forker ends when the agent does (end of file on its socket). One that
died (an administrator's kill, the OOM killer) is replaced at the next
request; one that does not answer in ANSWER_S is killed, and that request
fails, as a failed fork would.

Standard library only (uploaded to hosts), Python 3.8+.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.fdpass import receive, send
from hpcbatch.transport.agent.procs import close_fds, set_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Entry = Callable[[dict[str, Any], list[int]], None]

ANSWER_S = 5.0
"""How long the forker may take to answer a request (it only forks: milliseconds)."""


class Forker:
    """The agent's end: `spawn` a child of the forker that runs one of `entries`."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self.entries = dict(entries)
        self.pid: int | None = None  # the forker's: its children's parent
        self.sock: socket.socket | None = None

    def start(self) -> None:
        """Fork the forker now (the agent's start: before its memory grows)."""
        ours, theirs = socket.socketpair()
        ours.set_inheritable(False)
        pid = os.fork()
        if pid == 0:  # the forker: never returns
            try:
                ours.close()
                _serve(theirs, self.entries)
            finally:
                os._exit(0)
        theirs.close()
        ours.settimeout(ANSWER_S)
        self.pid, self.sock = pid, ours

    def spawn(self, entry: str, args: Mapping[str, Any], fds: Sequence[int] = ()) -> int:
        """A new child of the forker running `entries[entry](args, fds)` (the descriptors
        are copied over: the caller keeps and closes its own); its pid. Raises OSError
        where no child could be made."""
        for tries_left in (1, 0):
            if self.sock is None:
                self.start()
            sock = self.sock
            assert sock is not None
            try:
                send(sock, {"entry": entry, "args": args}, list(fds))
                got = receive(sock)
            except socket.timeout:  # noqa: UP041 (an OSError of its own on 3.8-3.9 hosts)
                self.close()  # stopped or stuck: killed, never resumed; this request fails
                raise OSError(f"the forker did not answer in {ANSWER_S:g} s") from None
            except OSError:
                got = None
            if got is None:  # it died (killed by someone) before answering: a new one
                self.close()
                if tries_left:
                    continue
                raise OSError("the forker ended before answering")
            reply, extra = got
            for fd in extra:
                os.close(fd)
            if "pid" in reply:
                return int(reply["pid"])
            raise OSError(str(reply.get("error") or "the forker could not fork"))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Let the forker go (killed: it may be stopped); its children live on."""
        if self.sock is not None:
            self.sock.close()
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self.pid, self.sock = None, None


def _serve(sock: socket.socket, entries: Mapping[str, Entry]) -> None:
    """The forker: a child per request, until the agent lets it go."""
    set_name("hb-forker")
    signal.set_wakeup_fd(-1)
    handed = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE)
    agents: dict[int, Any] = {sig: signal.getsignal(sig) for sig in handed}  # each child gets
    agents[signal.SIGCHLD] = signal.SIG_DFL
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our children
    with contextlib.suppress(OSError):
        os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # not the agent's channel to the controller
        os.dup2(devnull, fd)
    close_fds({sock.fileno()})
    while True:
        got = receive(sock)
        if got is None:
            return
        req, fds = got
        entry = entries.get(str(req.get("entry"))) if isinstance(req, dict) else None
        pid = None
        if entry is None:
            reply: dict[str, Any] = {"error": f"no entry {req.get('entry')!r} in the forker"}
        else:
            try:
                pid = os.fork()
            except OSError as exc:
                reply = {"error": f"fork: {exc}"}
            else:
                if pid == 0:
                    _child(sock, entry, req.get("args") or {}, fds, agents)
                reply = {"pid": pid}
        for fd in fds:
            os.close(fd)
        send(sock, reply, [])


def _child(
    sock: socket.socket, entry: Entry, args: dict[str, Any], fds: list[int],
    handlers: Mapping[int, Any],
) -> None:  # fmt: skip
    """A new child: the agent's signal handling back (as if the agent had forked it),
    then its entry."""
    code = 127
    try:
        sock.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        entry(args, fds)
        code = 0
    finally:
        os._exit(code)
