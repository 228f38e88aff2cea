"""The agent's event loop: one selector for stdin, sockets, pidfds and timers.

Why it exists apart from the agent: the agent's parts (the shepherds' watch,
`exec` runs, image pulls, the rsh relay) all wait on the same loop and send
on the same channel, but none of them needs the agent's attempts to do it.
`EventLoop` is that loop and channel: JSON lines in on stdin (dispatched by
`protocol.serve_line` to the op table), JSON lines out on stdout, callbacks
on readable descriptors, timers, and process ends (pidfds where the kernel
has them, polling where not). `AgentHost` is what the parts may use of the
agent, so that they depend on this module, not on the agent's.

Standard library only (uploaded with the agent), Python 3.8+.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
from typing import TYPE_CHECKING, Any, Protocol

from hpcbatch.transport.agent.procs import alive, on_nothing
from hpcbatch.transport.agent.protocol import serve_line

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from hpcbatch.transport.agent.protocol import Handler


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


class EventLoop:
    """Stdin requests, stdout replies and events, descriptors, timers, process ends."""

    def __init__(self, use_pidfd: bool = True) -> None:
        self.use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self.sel: selectors.BaseSelector = selectors.DefaultSelector()
        self.polled: list[Watch] = []
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.ops: dict[str, Handler] = {}
        self.inbuf = b""
        self.stopping = False
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, on_nothing)
        self.sel.register(wake_r, selectors.EVENT_READ, lambda: os.read(wake_r, 4096))
        self.sel.register(0, selectors.EVENT_READ, self.on_stdin)

    def loop(self) -> None:
        """Run until `stopping`: stdin closed, or a `shutdown` request."""
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

    def send(self, obj: Mapping[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        while data:
            data = data[os.write(1, data) :]

    def on_stdin(self) -> None:
        chunk = os.read(0, 65536)
        if not chunk:
            self.stopping = True  # the controller hung up: jobs keep running
            return
        self.inbuf += chunk
        *lines, self.inbuf = self.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                serve_line(line, self.ops, self.send)
                if self.stopping:
                    return
        if len(self.inbuf) > 64 * 1024 * 1024:
            self.inbuf = b""
            self.send({"ev": "error", "error": "request line longer than 64 MiB: dropped"})

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


class AgentHost(Protocol):
    """What the agent's parts (ctrops, relay, tools) use of the agent."""

    root: str
    bin: str
    sel: selectors.BaseSelector
    running: dict[str, dict[str, Any]]

    def send(self, obj: Mapping[str, Any]) -> None: ...

    def after(self, delay: float, fn: Callable[[], None]) -> None: ...

    def watch(
        self, pid: int, start: int | None, child: bool, on_end: Callable[[], None]
    ) -> None: ...

    def path(self, attempt: str, *names: str) -> str: ...
