"""A small process that forks the agent's per-launch processes for it.

Why it exists: a fork shares every page of the parent with the child, copy on
write, for as long as the child lives. The agent forked each launch's
shepherd (and, for a job run as its submitter, the child that makes the
user's files), and a shepherd lives as long as its job: so after each fork,
every page the agent wrote was copied first. At 100 launches a second the
agent copied its whole working set again after each one: page faults were
two thirds of the agent's CPU, the agent a third of the machine's, in
`perf record -a` of 2,000 trivial jobs (docs/performance.md, "The forker").

The forker is started once by the agent, at its start, as a program of its
own (`python3 -I -S`, this module's `main`): not a fork of the agent, so it
and every process it forks hold only what they import (the shepherd's and the
user's helper's modules), about half the agent's memory. A fork copies its
parent's page tables, and a child that then runs Python copies each page it
writes to and unmaps them all at its exec: those costs follow the size of the
parent (docs/performance.md, "A forker of its own"). Each request names an
entry (a function that never returns, run in the new child; the forker
imports the entries it is given at its start as "module:function") with
JSON arguments and descriptors passed over the socket (SCM_RIGHTS); the
answer is the child's pid. The children are not the agent's: the agent
watches them by pidfd or /proc (never waitpid), and the forker lets the
kernel reap them (SIGCHLD ignored; each child gets Python's usual signal
handling back before its entry runs). The forker ends when the agent does
(end of file on its socket). One that died (an administrator's kill, the
OOM killer) is replaced at the next request; one that does not answer in
ANSWER_S is killed, and that request fails, as a failed fork would.

Standard library only (uploaded to hosts), Python 3.8+.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.fdpass import receive, send
from hpcbatch.transport.agent.procs import close_fds, set_name

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    Entry = Callable[[dict[str, Any], list[int]], None]

ANSWER_S = 5.0
"""How long the forker may take to answer a request (it only forks: milliseconds)."""
START_S = 30.0
"""How long a new forker may take to say it is ready (a Python start: tens of ms)."""
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
"""What holds the `hpcbatch` package: the agent's zipapp on a host, the tree in tests."""
BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); import {m}; {m}.main(sys.argv[2:])"
)


class Forker:
    """The agent's end: `spawn` a child of the forker that runs one of `entries`
    (name -> "module:function", imported by the forker from `ROOT` and `path`)."""

    def __init__(self, entries: Mapping[str, str], path: Sequence[str] = ()) -> None:
        self.entries = dict(entries)
        self.path = [ROOT, *path]
        self.answer_s = ANSWER_S
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        """The forker's: its children's parent."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the forker and wait until it is ready (its imports done). Raises
        OSError where it could not start."""
        ours, theirs = socket.socketpair()
        try:
            code, path, fd = BOOT.format(m=__name__), json.dumps(self.path), str(theirs.fileno())
            argv = [sys.executable, "-I", "-S", "-c", code, path, fd, json.dumps(self.entries)]
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )  # fmt: skip
        finally:
            theirs.close()
        self.sock = ours
        ours.settimeout(START_S)
        try:
            got = receive(ours)
        except OSError as exc:
            self.close()
            raise OSError(f"the forker did not start: {exc}") from None
        if got is None or "ready" not in got[0]:
            self.close()
            why = str(got[0].get("error")) if got else "it ended"
            raise OSError(f"the forker did not start: {why}")
        ours.settimeout(self.answer_s)

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
                raise OSError(f"the forker did not answer in {self.answer_s:g} s") from None
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
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        self.proc, self.sock = None, None


def main(argv: list[str]) -> None:
    """The forker's program: `FD ENTRIES` (its socket, the entries as JSON)."""
    sock = socket.socket(fileno=int(argv[0]))
    entries: dict[str, Entry] = {}
    try:
        for name, where in json.loads(argv[1]).items():
            module, _, function = where.partition(":")
            entries[name] = getattr(__import__(module, fromlist=[function]), function)
    except Exception as exc:  # said to the agent, which fails the start with it
        send(sock, {"error": f"{type(exc).__name__}: {exc}"}, [])
        return
    send(sock, {"ready": os.getpid()}, [])
    try:
        _serve(sock, entries)
    finally:  # at once, as a fork of the agent did: a shepherd whose agent ended tells by
        os._exit(0)  # its parent's end (procs.oversee), the sooner the better


def _serve(sock: socket.socket, entries: Mapping[str, Entry]) -> None:
    """The forker: a child per request, until the agent lets it go."""
    set_name("hb-forker")
    changed = (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE)
    usual: dict[int, Any] = {sig: signal.getsignal(sig) for sig in changed}  # each child gets
    usual[signal.SIGCHLD] = signal.SIG_DFL
    for sig in changed:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our children
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # nothing of the agent's: its stderr only served the start-up
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
                    _child(sock, entry, req.get("args") or {}, fds, usual)
                reply = {"pid": pid}
        for fd in fds:
            os.close(fd)
        send(sock, reply, [])


def _child(
    sock: socket.socket, entry: Entry, args: dict[str, Any], fds: list[int],
    handlers: Mapping[int, Any],
) -> None:  # fmt: skip
    """A new child: Python's usual signal handling back, then its entry."""
    code = 127
    try:
        sock.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        entry(args, fds)
        code = 0
    finally:
        os._exit(code)
