"""The epoch fence on a host: an old controller's requests refused once a newer one spoke.

Why it exists: with active/standby controllers (docs/high-availability.md),
a leader that was paused (SIGSTOP, a frozen VM) can resume holding work it
committed before the pause and send it to the hosts before it notices that
another controller took the lead. The store refuses its writes; this is the
hosts' half of the fence. Every controller takes a new, larger epoch when it
becomes active (the store's lease generation) and every request that
changes something on a host (hello, launch, image, kill, fence, ack, retime)
carries it. The host remembers the highest epoch it has seen in
`<root>/epoch`, so that a restarted agent, or the other controller's agent
process on the same root, knows it too, and refuses a request with a lower
one with the code `stale_epoch`. The check, the update and the op run under
a POSIX lock on `<root>/epoch.lock` (held per process, so a forked shepherd
never inherits it): once the new leader's `hello` has returned, no request
of the old one's can start anything on this host. A request without an
epoch (a tool, an older controller) is not fenced.

Standard library only (uploaded with the agent), Python 3.8+.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.protocol import BadRequest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from hpcbatch.transport.agent.protocol import Handler

FENCED_OPS = ("hello", "launch", "image", "kill", "fence", "ack", "retime", "purge")
"""The ops an epoch guards: everything that starts, stops or forgets an attempt."""


def checked(op: str, epoch: object, seen: int) -> int | None:
    """The epoch the host keeps after a request carrying `epoch` (None: it carries none),
    where it has seen `seen`; raises `stale_epoch` for an older one."""
    if epoch is None:
        return None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise BadRequest(f"epoch must be a non-negative integer, got {epoch!r}")
    if epoch < seen:
        raise BadRequest(
            f"{op} refused: stale controller epoch {epoch}; this host has seen {seen} "
            "(another controller took the lead)",
            "stale_epoch",
        )
    return epoch


class EpochFence:
    """The highest controller epoch this host has seen, kept in `<root>/epoch`."""

    def __init__(self, root: str) -> None:
        self.path = os.path.join(root, "epoch")
        self._lock_fd = os.open(os.path.join(root, "epoch.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        os.set_inheritable(self._lock_fd, False)

    def seen(self) -> int:
        """The highest epoch on disk (0: none yet)."""
        try:
            with open(self.path) as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _store(self, epoch: int) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{epoch}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock_fd, fcntl.LOCK_UN)

    def guard(self, op: str, handler: Handler) -> Handler:
        """`handler`, run only if the request's epoch is not older than the host's."""

        def fenced(req: dict[str, Any]) -> Mapping[str, Any] | None:
            if req.get("epoch") is None:
                return handler(req)
            with self._locked():
                seen = self.seen()
                epoch = checked(op, req["epoch"], seen)
                if epoch is not None and epoch > seen:
                    self._store(epoch)
                return handler(req)

        return fenced

    def install(self, ops: dict[str, Handler]) -> None:
        """Guard the FENCED_OPS of an op table in place."""
        for op in FENCED_OPS:
            if op in ops:
                ops[op] = self.guard(op, ops[op])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)
