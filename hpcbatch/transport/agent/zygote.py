"""Spare cgroups with a shepherd (and, but for root, a job process) waiting in them.

Why it exists: moving a process into a cgroup (a write to `cgroup.procs`) takes
the kernel's cgroup_threadgroup_rwsem for writing, and the first such write
after a quiet spell waits for an RCU grace period: 8-10 ms on the machine the
limits benchmark runs on, most of what limits added to a launch (the rest of
the cgroup work is well under a millisecond). Mounting the hierarchies with
`favordynmods` removes the wait, but that is the operator's choice, not ours.

So the agent makes launches' cgroups ahead (spares: cgroups.prepare), each
with a shepherd that forks the job process at once; the job process moves
itself into the spare, paying the wait while nothing waits on it, and then
blocks. The agent keeps up to four, made at its start and then, once one is
left, again in a batch (one slow join for the batch) after an exit event is
sent (or a while after a launch took one, when no exit comes): not inside
the window of a short job, and a launch takes the oldest, whose job process
has long since joined. A launch renames the spare to the attempt's
name, writes its limits (the process inside is held to them from then on),
and hands the shepherd the launch (the spec as JSON, the output and report
descriptors over the socket, SCM_RIGHTS); the shepherd hands the job process
its part and oversees it exactly as a shepherd forked at launch would
(procs.oversee). A spare the agent drops (its socket closed: a failed launch,
the agent's end, even by SIGKILL) ends its two processes without running
anything and removes its groups.

Such a shepherd is kept across jobs: once its attempt's `exit` record is
written it says so on its socket (the agent learns the end there, not from a
pidfd), and waits for the next spare's groups, into which it forks the next
job process. A Python process's fork, first steps and exit cost about 2 ms of
CPU here (docs/performance.md, "Kept shepherds"); the agent keeps up to IDLE
of them between jobs and lets the others go. A `kill` still reaches the right
job: the agent takes a shepherd back only after it finished that attempt, and
a shepherd clears a signal left from its last attempt when it takes the next.
One that cannot tell its agent of an end (the agent is gone) ends there, so a
later agent, which watches it by pidfd, sees it go.

Where the shepherd is root on Python 3.11+ (a run-as host, or any root agent), no
job process waits ahead: the shepherd itself joins the spare's groups (the slow
join, still paid ahead) and, at the launch, starts the job from there with
Popen (procs.quick_start), whose child is set up in C and born in the groups.
A Python child costs its parent a page fault for every page the parent writes
after the fork, and itself its own and an unmapping at its exec: 870 faults a
job against 100 without a user switch (vfork) and 510 with one
(docs/performance.md, "The job started in C"). Once the start is reported the
shepherd goes back to its own groups, so that what it does until the job ends
is not the job's (CPU, memory, the OOM killer's choice), and the agent finds
only the job's processes in the group it removes. Where Popen cannot (an exec
that fails, a directory the user cannot enter) the shepherd forks start_job
as before, which says why.

Standard library only (uploaded to hosts).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any, NoReturn

from hpcbatch.transport.agent import cgroups
from hpcbatch.transport.agent.fdpass import receive, send
from hpcbatch.transport.agent.forker import Forker
from hpcbatch.transport.agent.loop import AgentHost
from hpcbatch.transport.agent.procs import (
    QUICK,
    detach,
    oversee,
    quick_start,
    read_all,
    set_name,
    shepherd,
    start_job,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class Waiting:
    """A made-ahead shepherd (the forker's child) and the socket that hands it a launch."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.attempt: str | None = None  # the attempt it oversees, once handed one


KEEP = 4  # spares kept: a launch takes the oldest, whose job process joined long ago
IDLE = 4  # shepherds kept between jobs, for the next spares (more are let go)
LOW = 1  # made again in a batch once this few are left: one slow cgroup join per batch
REFILL_S = 0.2  # with no exit to refill after (a burst of long jobs), refill this much later


class Spare:
    """One spare: its groups, and the shepherd waiting in them (None where the fork failed)."""

    def __init__(self, dirs: dict[str, str], waiting: Waiting | None) -> None:
        self.dirs = dirs
        self.waiting = waiting


class Spares:
    """The agent's spare cgroups (and, where it can, the shepherd waiting in each)."""

    def __init__(
        self, host: AgentHost, layout: cgroups.Layout, forker: Forker,
        on_end: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.host = host
        self.layout = layout
        self.forker = forker  # forks the shepherds: not the agent (forker.py says why)
        self.on_end = on_end  # a kept shepherd's attempt ended (or the shepherd did)
        self.ready: list[Spare] = []  # oldest first
        self.idle: list[Waiting] = []  # shepherds whose job ended, kept for the next spares
        self.taken: Waiting | None = None  # in the group of the launch under way
        self.n = 0
        cgroups.clear_spares(layout)
        if layout.enforced:
            host.after(0, self.fill)

    def fill(self) -> None:
        """Spares up to KEEP once LOW or fewer are left, made off any launch's path: at
        the start, after an exit event is sent, or REFILL_S after a launch took one.
        In a batch: the first cgroup join after a quiet spell waits for the RCU grace
        period, and while it waits every fork and exit on the host waits too (the
        kernel's cgroup_threadgroup_rwsem); the joins that follow it do not."""
        if len(self.ready) > LOW:
            return
        while len(self.ready) < KEEP and self.layout.enforced:
            self.n += 1
            try:
                # named by agent too: an ended agent's spares remove themselves
                dirs = cgroups.prepare(self.layout, f"{cgroups.SPARE}{os.getpid()}-{self.n}")
            except OSError:
                return
            waiting = self.reuse(dirs)
            if waiting is None:
                with contextlib.suppress(OSError):
                    waiting = make_waiting(self.forker, dirs)
            self.ready.append(Spare(dirs, waiting))

    def reuse(self, dirs: dict[str, str]) -> Waiting | None:
        """An idle shepherd given the spare's groups (it forks its job process into
        them), or None when none is left: a fork and an exit saved."""
        while self.idle:
            w = self.idle.pop()
            procs = open_procs(dirs)
            try:
                send(w.sock, {"dirs": list(dirs.values())}, procs)
                return w
            except OSError:  # it is gone (killed)
                self.drop(w)
            finally:
                for fd in procs:
                    os.close(fd)
        return None

    def take(self) -> dict[str, str] | None:
        """The oldest spare's groups for a launch with limits (cgroups.create renames
        them), or None when there is none yet (the launch makes its groups itself)."""
        self.drop(self.taken)
        self.taken = None
        if not self.layout.enforced:
            return None
        self.host.after(REFILL_S, self.fill)
        if not self.ready:
            return None
        spare = self.ready.pop(0)
        self.taken = spare.waiting
        return spare.dirs

    def drop(self, w: Waiting | None) -> None:
        """Let a waiting shepherd go (it ends, running nothing; the forker reaps it)."""
        if w is not None:
            w.sock.close()

    def start(self, adir: str, spec: dict[str, Any], out: int, err: int) -> dict[str, Any]:
        """Start the launch's shepherd, the waiting one if its group became the job's:
        its record once the job started (procs.oversee's report). A waiting shepherd is
        kept (`kept` in the record): it says on its socket when the attempt ended, and
        then waits for the next spare; one forked at launch ends with its job."""
        report_r, report_w = os.pipe()
        w, self.taken = self.taken, None
        kept = None
        try:
            if w is not None and spec.get("cgroup"):
                try:
                    send(w.sock, {"adir": adir, "spec": spec}, [out, err, report_w])
                    kept = w
                except OSError:  # it is gone (killed): start one the usual way
                    self.drop(w)
            else:
                self.drop(w)
            if kept is None:
                self.forker.spawn("shepherd", {"adir": adir, "spec": spec}, [out, err, report_w])
        finally:
            os.close(report_w)
        line = read_all(report_r)  # the shepherd reports once the job has started
        try:
            rec = dict(json.loads(line))
        except ValueError:
            self.drop(kept)
            raise RuntimeError("the shepherd failed before starting the job") from None
        if kept is not None:
            kept.attempt = os.path.basename(adir)
            self.host.sel.register(kept.sock, selectors.EVENT_READ, lambda: self.heard(kept))
            rec["kept"] = True
        return rec

    def heard(self, w: Waiting) -> None:
        """A kept shepherd's word: its attempt ended (the `exit` record is written), or its
        socket's end (it died). Kept for the next spare, then the agent told."""
        self.host.sel.unregister(w.sock)
        try:
            got = receive(w.sock)
        except (OSError, ValueError):
            got = None
        attempt, w.attempt = w.attempt, None
        if got is not None and len(self.idle) < IDLE:
            self.idle.append(w)  # before the agent's finish, whose fill reuses it
        else:
            self.drop(w)
        if attempt is not None:
            self.on_end(attempt)


def open_procs(dirs: dict[str, str]) -> list[int]:
    """The groups' cgroup.procs, opened now for the job process that will join them: a
    launch may rename the groups before it does, and an open file follows its group."""
    return [os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY) for d in dirs.values()]


def make_waiting(forker: Forker, dirs: dict[str, str]) -> Waiting:
    procs = open_procs(dirs)
    ours, theirs = socket.socketpair()
    try:
        pid = forker.spawn("waiting", {"dirs": list(dirs.values())}, [theirs.fileno(), *procs])
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
        for fd in procs:
            os.close(fd)
    return Waiting(pid, ours)


def waiting_entry(args: dict[str, Any], fds: list[int]) -> None:
    """The forker's entry for a made-ahead shepherd: its socket, then each group's
    cgroup.procs."""
    _waiting_shepherd(socket.socket(fileno=fds[0]), fds[1:], list(args["dirs"]))


def shepherd_entry(args: dict[str, Any], fds: list[int]) -> None:
    """The forker's entry for a shepherd forked at launch: output, errors, report."""
    out, err, report = fds
    # Its parent is the forker, which lives as long as the agent: while it is still the
    # parent, the agent is there to remove the job's group (procs.oversee).
    shepherd(args["adir"], {**args["spec"], "agent": os.getppid()}, out, err, report)


def _waiting_shepherd(sock: socket.socket, procs: list[int], dirs: list[str]) -> NoReturn:
    """The made-ahead shepherd: fork the job process into the spare, wait for a launch,
    oversee it, say so when it ended; then wait for the next spare's groups, and again.
    Let go (the agent dropped it, or ended, killed even), it removes the spare's groups
    once its job process is gone: a killed agent leaves no empty group behind. A
    shepherd that cannot tell its agent of an end (the agent is gone) ends there: the
    next agent finds the `exit` record and this process gone."""
    try:
        _serve_launches(sock, procs, dirs)
    finally:
        os._exit(0)


def _serve_launches(sock: socket.socket, procs: list[int], dirs: list[str]) -> None:
    """The made-ahead shepherd's launches, one after the other, until it is let go. As
    root on Python 3.11+ it waits in the spare's groups itself and starts each job from
    there in C (procs.quick_start), going back to its own groups after each; else it
    forks a job process into the groups ahead, which waits for the launch."""
    parent = os.getppid()  # the forker: see shepherd_entry
    home: list[int] = []
    cpus = os.sched_getaffinity(0)
    if QUICK and os.geteuid() == 0:
        with contextlib.suppress(OSError):  # else the other way: a job process forked ahead
            home = cgroups.own_procs(dirs)
    wake = detach({sock.fileno(), *procs, *home})
    while True:
        if home:
            inside = True
            try:
                _join(procs)
            except OSError:  # the job process joins them itself, or says why it cannot
                inside = False
            for fd in procs:
                os.close(fd)
        else:
            exec_r, exec_w = os.pipe()  # close-on-exec: EOF without data: exec succeeded
            go, go_job = socket.socketpair()
            job = os.fork()
            if job == 0:
                go.close()
                sock.close()
                os.close(exec_r)
                _waiting_job(go_job, procs, exec_w)
            go_job.close()
            for fd in procs:
                os.close(fd)
            os.close(exec_w)
        got = receive(sock)
        if got is None:  # let go: a waiting job process ends when it reads the end of `go`
            if home:
                _leave(home, cpus)
            else:
                go.close()
                os.close(exec_r)
                os.waitpid(job, 0)
            for path in dirs:  # gone already where a launch took it (renamed)
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            return
        launch, (out_fd, err_fd, report) = got
        started = time.time()
        spec = {**launch["spec"], "agent": parent}
        proc = None
        if home:
            job, exec_r, proc = _start_inside(spec, out_fd, err_fd, inside)
        else:
            with contextlib.suppress(OSError):  # a job process that died says why on exec_r
                send(go, launch["spec"], [out_fd, err_fd])
            go.close()
        leave = (lambda: _leave(home, cpus)) if home else None
        oversee(launch["adir"], spec, out_fd, err_fd, report, wake, job, exec_r, started, leave)
        if proc is not None:
            proc.returncode = 0  # waited for (oversee): Popen must never reap it
        try:
            send(sock, {"ended": os.path.basename(launch["adir"])}, [])
            got = receive(sock)  # the next spare's groups and their cgroup.procs
        except OSError:
            return
        if got is None:
            return
        nxt, procs = got
        dirs = list(nxt["dirs"])


def _join(procs: list[int]) -> None:
    """Move this process into the groups of `procs` (each group's cgroup.procs). Raises
    OSError where the kernel refuses."""
    for fd in procs:
        os.write(fd, str(os.getpid()).encode())


def _leave(home: list[int], cpus: set[int]) -> None:
    """Back to this shepherd's own groups after a job it started from inside the job's,
    out of the job's directory, and back on its own CPUs (`cpus`: a job's pinning, set
    for the child to inherit, stays where no cpuset move resets it)."""
    with contextlib.suppress(OSError):
        _join(home)
    with contextlib.suppress(OSError):
        os.chdir("/")
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)


def _start_inside(
    spec: dict[str, Any], out_fd: int, err_fd: int, inside: bool
) -> tuple[int, int, subprocess.Popen[bytes] | None]:
    """Start the job from this shepherd, in the job's groups: in C where it can, else a
    forked job process as start_job (which joins the groups itself where this shepherd
    could not). The job, the exec errors' pipe, the Popen (None for a fork)."""
    exec_r, exec_w = os.pipe()
    proc = quick_start({**spec, "cgroup": None}, out_fd, err_fd) if inside else None
    if proc is not None:
        os.close(exec_w)
        return proc.pid, exec_r, proc
    job = os.fork()
    if job == 0:
        os.close(exec_r)
        start_job({**spec, "cgroup": None if inside else spec.get("cgroup")}, out_fd,
                  err_fd, exec_w)  # fmt: skip
    os.close(exec_w)
    return job, exec_r, None


def _waiting_job(go: socket.socket, procs: list[int], exec_w: int) -> NoReturn:
    """The made-ahead job process: into the spare's groups now, exec on the launch."""
    try:
        set_name("hb-job")
        try:
            _join(procs)
        except OSError as exc:
            os.write(exec_w, f"cannot join the job's cgroup: {exc}".encode(errors="replace"))
            os._exit(127)
        got = receive(go)
        go.close()
        if got is None:
            os._exit(0)
        spec, (out_fd, err_fd) = got
        start_job({**spec, "cgroup": None}, out_fd, err_fd, exec_w)  # already inside
    finally:
        os._exit(127)
