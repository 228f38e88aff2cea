"""The controller's client API: JSON lines over a Unix socket.

A thin transport. It reads one request per line, finds the operation in the
table the controller built (`Operation`: an argument model and a handler),
and writes one reply; it knows no service. The CLI and the dashboard use the
same operations. The caller's identity is taken from the socket's peer
credentials (SO_PEERCRED), never from the request, so a user can cancel only
their own jobs unless an administrator. `watch` turns the connection into a
stream of the event bus's events, each shown as the read model says its
subscriber may see it.

The socket is shared by every local user of a shared controller, so the
server also keeps one user from taking it (`ApiPolicy`, docs/security.md):
at most `max_connections_per_user` open connections per uid, and a
connection idle for `idle_timeout_s` between requests is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcbatch.controller.apiargs import Operation
from hpcbatch.controller.callers import Admins, ApiError, Caller
from hpcbatch.controller.events import EventBus
from hpcbatch.store.db import StoreError

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024 * 1024
REFUSAL_LOG_S = 60.0
_TOO_LARGE = {
    "ok": False,
    "kind": "too_large",
    "error": f"request too large (the controller takes at most {MAX_LINE // 2**20} MiB a request)",
}


def _busy(limit: int) -> dict[str, Any]:
    return {
        "ok": False,
        "kind": "busy",
        "error": f"too many open connections to the controller from this user (limit {limit}):"
        " close some (other hpcbatch commands, dashboards) and try again",
    }


def peer_uid(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


EventFilter = Callable[[dict[str, Any], Caller], "dict[str, Any] | None"]
"""What one caller may see of an event (the read model's `event_for`); None: nothing."""


@dataclass(frozen=True, slots=True)
class ApiPolicy:
    """Who the callers are and how much of the controller each may hold.

    `max_connections_per_user`: open connections per uid (root and the
    controller's own user are not limited, so an operator can always get in);
    `idle_timeout_s`: a connection waiting this long for its next request is
    closed (a request in progress, a `wait` or a `watch` stream, is not idle).
    """

    admins: Admins = field(default_factory=Admins)
    max_connections_per_user: int = 128
    idle_timeout_s: float = 600.0
    events: EventFilter | None = None


async def _until_eof(reader: asyncio.StreamReader, stream: asyncio.Task[Any]) -> None:
    """Cancel `stream` once the client closes its end (what it sends meanwhile is dropped)."""
    with contextlib.suppress(ConnectionError, ValueError, asyncio.LimitOverrunError):
        while await reader.read(65536):
            pass
    stream.cancel()


UNTIL_EVENTS = frozenset({"wait"})
"""Operations that may take as long as jobs do: a client gone meanwhile ends them."""


class _Gone(Exception):
    """The client closed the connection while its request was in progress."""


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    caller: Caller
    ahead: asyncio.Future[bytes] | None = None
    """The next request line, read while a long operation ran (a pipelining client)."""


async def _unless_gone(work: Awaitable[Any], conn: _Conn) -> Any:
    """`work`'s result; `_Gone` (and `work` cancelled) if the client closes first.

    A `wait` for jobs that run for hours would otherwise keep its connection, and
    its user's place under `max_connections_per_user`, after `hpcbatch wait` was
    killed. The next line is read meanwhile and kept for the loop (`conn.ahead`).
    """
    job = asyncio.ensure_future(work)
    ahead = asyncio.ensure_future(conn.reader.readline())
    try:
        await asyncio.wait((job, ahead), return_when=asyncio.FIRST_COMPLETED)
        if not job.done() and ahead.exception() is None and not ahead.result():
            raise _Gone
        conn.ahead = ahead
        return await job
    except BaseException:
        job.cancel()
        if conn.ahead is not ahead:
            ahead.cancel()
        raise


def _unlimited(uid: int) -> bool:
    return uid == 0 or uid == os.getuid()


# A stream: the handler checks the request (raising ApiError) and returns the task
# that sends its events; the connection ends when that returns.
Send = Callable[[list[dict[str, Any]]], Awaitable[None]]
StreamHandler = Callable[[Mapping[str, Any], Caller], Callable[[Send], Awaitable[None]]]

# Told of each answered request: the operation, "ok" or the error's kind, its seconds.
RequestObserver = Callable[[str, str, float], None]


class ApiServer:
    def __init__(
        self,
        path: Path,
        ops: Mapping[str, Operation[Any]],
        bus: EventBus,
        policy: ApiPolicy | None = None,
    ) -> None:
        self.path = path
        self._ops = dict(ops)
        self._bus = bus
        self.observer: RequestObserver | None = None  # the metrics, when they are on
        self.streams: dict[str, StreamHandler] = {}  # `events`: see controller/changes.py
        self._policy = policy or ApiPolicy()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._per_uid: Counter[int] = Counter()
        self._warned: dict[int, float] = {}  # uid -> when its refusals were last logged

    def add_operations(self, ops: Mapping[str, Operation[Any]]) -> None:
        """More of the table, from a service the composition root builds later."""
        self._ops.update(ops)

    @property
    def policy(self) -> ApiPolicy:
        return self._policy

    def use_policy(self, policy: ApiPolicy) -> None:
        """The inventory read again (`hpcbatch reload`): who the admins are and the limits,
        for connections opened from now on (an open one keeps the caller it was given;
        the idle timeout applies at its next wait)."""
        self._policy = policy

    async def start(self) -> None:
        # A socket directory made here (/run/hpcbatch) is searchable by every user,
        # whatever the umask (the controller's is 077); the socket itself is 0666 and
        # each request is told apart by its peer uid.
        missing = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        for directory in reversed(missing):
            directory.mkdir()
            os.chmod(directory, 0o755)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o666)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        uid = -1
        try:
            uid = peer_uid(writer)
            self._per_uid[uid] += 1
            limit = self._policy.max_connections_per_user
            if self._per_uid[uid] > limit and not _unlimited(uid):
                now = time.monotonic()
                if now - self._warned.get(uid, -REFUSAL_LOG_S) >= REFUSAL_LOG_S:
                    self._warned[uid] = now  # once a minute a user: no flooding the log
                    log.warning("refusing connections from uid %d: %d open (limit %d)",
                                uid, self._per_uid[uid] - 1, limit)  # fmt: skip
                await self._refuse(reader, writer, _busy(limit))
                return
            await self._requests(_Conn(reader, writer, self._policy.admins.caller(uid)))
        except (ConnectionError, asyncio.CancelledError, _Gone):
            pass
        finally:
            if uid >= 0:
                self._per_uid[uid] -= 1
                if self._per_uid[uid] <= 0:
                    del self._per_uid[uid]
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _requests(self, conn: _Conn) -> None:
        """Answer one request per line until the client closes or stays idle too long."""
        while True:
            try:
                async with asyncio.timeout(self._policy.idle_timeout_s):
                    line = await (conn.ahead or conn.reader.readline())
            except TimeoutError:
                log.debug("closed an idle connection of %s", conn.caller.user)
                return
            except (ValueError, asyncio.LimitOverrunError):
                await self._send(conn.writer, _TOO_LARGE)
                return
            conn.ahead = None
            if not line:
                return
            t0 = time.perf_counter()
            op: list[str] = []
            reply = await self._handle(line, conn, op)
            if reply is None:  # the connection became an event stream and ended
                return
            if self.observer is not None and op:
                kind = "ok" if reply["ok"] else str(reply.get("kind"))
                self.observer(op[0], kind, time.perf_counter() - t0)
            await self._send(conn.writer, reply)

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: dict[str, Any]
    ) -> None:
        """Answer the first request with `reply` and close. It is read first: a socket
        closed with unread input is reset, and the client might lose the answer."""
        rid = None
        with contextlib.suppress(TimeoutError, ValueError, asyncio.LimitOverrunError):
            async with asyncio.timeout(1.0):
                line = await reader.readline()
            with contextlib.suppress(ValueError, AttributeError):
                rid = json.loads(line).get("id")
        await self._send(writer, {"id": rid, **reply})

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def _handle(self, line: bytes, conn: _Conn, named: list[str]) -> dict[str, Any] | None:
        """One request's reply; `named` gets the operation's name once it is known."""
        rid: Any = None
        caller = conn.caller
        try:
            try:
                msg = json.loads(line)
            except ValueError:
                raise ApiError("bad_request", "request is not valid JSON") from None
            if not isinstance(msg, dict):
                raise ApiError("bad_request", "request must be a JSON object")
            rid = msg.get("id")
            op = msg.get("op")
            if op == "watch":
                await self._send(conn.writer, {"id": rid, "ok": True, "result": "watching"})
                await self._watch(conn.reader, conn.writer, caller)
                return None
            stream = self.streams.get(op) if isinstance(op, str) else None
            if stream is not None:
                await self._stream(stream, msg, caller, conn.writer, rid)
                return None
            operation = self._ops.get(op) if isinstance(op, str) else None
            if operation is None:
                raise ApiError("bad_request", f"unknown operation {op!r}")
            named.append(str(op))
            if op in UNTIL_EVENTS:
                result = await _unless_gone(operation(str(op), msg, caller), conn)
            else:
                result = await operation(str(op), msg, caller)
            return {"id": rid, "ok": True, "result": result}
        except _Gone:
            raise
        except ApiError as exc:
            return {"id": rid, "ok": False, "kind": exc.kind, "error": exc.message}
        except TimeoutError:
            return {"id": rid, "ok": False, "kind": "timeout", "error": "timed out"}
        except StoreError as exc:
            # Disk full, read-only, I/O error: the change was rolled back, nothing of
            # this request was accepted; what was accepted before is kept.
            log.error("store write failed: %s", exc)
            return {"id": rid, "ok": False, "kind": "unavailable",
                    "error": f"the controller cannot write its store: {exc}"}  # fmt: skip
        except Exception as exc:
            log.exception("API request failed")
            return {"id": rid, "ok": False, "kind": "internal", "error": f"internal error: {exc}"}

    async def _stream(
        self,
        stream: StreamHandler,
        msg: Mapping[str, Any],
        caller: Caller,
        writer: asyncio.StreamWriter,
        rid: Any,
    ) -> None:
        run = stream(msg, caller)  # a refused request is the answer (ApiError)
        await self._send(writer, {"id": rid, "ok": True, "result": "streaming"})

        async def send(events: list[dict[str, Any]]) -> None:
            writer.write(
                b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
            )
            await writer.drain()

        await run(send)

    async def _watch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caller: Caller
    ) -> None:
        queue = self._bus.subscribe()
        events = self._policy.events
        # A stream only writes, so a client that went away would be noticed at the
        # next event only, holding its place (and its user's connection count) until
        # then: its end of input ends the stream at once.
        stream = asyncio.current_task()
        assert stream is not None
        hangup = asyncio.create_task(_until_eof(reader, stream))
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                shown = event if events is None else events(event, caller)
                if shown is not None:
                    await self._send(writer, shown)
        finally:
            hangup.cancel()
            self._bus.unsubscribe(queue)
