"""An asyncio client of the controller's Unix-socket API, for the dashboard.

`hpcbatch.client` is synchronous on purpose (the CLI must start fast); the
dashboard lives in an event loop and needs two kinds of connection: one for
requests (answered in order, one at a time) and one turned into an event
stream by the `watch` op. Only the JSON-lines protocol is shared with the
controller: this module imports nothing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from hpcbatch.client import ClientError

MAX_LINE = 16 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0


async def _open(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    except FileNotFoundError:
        raise ClientError("unavailable", f"no controller socket at {path}") from None
    except OSError as exc:
        raise ClientError(
            "unavailable", f"cannot reach the controller at {path}: {exc.strerror or exc}"
        ) from None


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


def _line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class _Closed(Exception):
    """The connection ended before a reply."""


class DashApi:
    """Requests over one lazily (re)opened connection; events over `watch()`."""

    def __init__(self, path: Path, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    async def call(self, op: str, **args: Any) -> Any:
        """One request; its result, or ClientError (`unavailable` when the link broke).

        A caller cancelled while waiting (a worker replaced by a newer one) leaves
        its reply unread on the connection, so the connection is dropped then: the
        next request must never read an answer meant for another.
        """
        async with self._lock:
            # The controller closes a connection left idle (its `idle_timeout_s`)
            # without reading from it: on a reused connection the request was not
            # seen, so it is asked again once on a new one.
            tries = 2 if self._conn is not None else 1
            for left in range(tries - 1, -1, -1):
                try:
                    raw, rid = await self._exchange(op, args)
                    break
                except _Closed:
                    if not left:
                        raise ClientError(
                            "unavailable", "the controller closed the connection"
                        ) from None
            reply: dict[str, Any] = json.loads(raw)
            if reply.get("id") != rid:
                await self._drop()
                raise ClientError("internal", f"reply {reply.get('id')} to request {rid}")
        if not reply.get("ok"):
            raise ClientError(str(reply.get("kind", "error")), str(reply.get("error", "failed")))
        return reply.get("result")

    async def _exchange(self, op: str, args: dict[str, Any]) -> tuple[bytes, int]:
        """Send one request and read its reply line; `_Closed` if the connection was
        closed before any answer came."""
        if self._conn is None:
            self._conn = await _open(self.path)
        reader, writer = self._conn
        self._next += 1
        rid = self._next
        try:
            writer.write(_line({"id": rid, "op": op, **args}))
            await writer.drain()
            raw = await asyncio.wait_for(reader.readline(), self.timeout)
        except TimeoutError:
            await self._drop()
            raise ClientError("timeout", f"the controller did not answer {op!r}") from None
        except (BrokenPipeError, ConnectionResetError):
            await self._drop()
            raise _Closed from None
        except (OSError, ConnectionError, ValueError) as exc:
            await self._drop()
            raise ClientError("unavailable", f"lost the controller: {exc}") from None
        except BaseException:
            await self._drop()
            raise
        if not raw:
            await self._drop()
            raise _Closed
        return raw, rid

    async def subscribe(self) -> EventStream:
        """Open an event stream; returns once the controller has subscribed it."""
        reader, writer = await _open(self.path)
        try:
            writer.write(_line({"id": 0, "op": "watch"}))
            await writer.drain()
            first = await asyncio.wait_for(reader.readline(), self.timeout)
            if not first or not json.loads(first).get("ok"):
                raise ClientError("unavailable", "the controller refused to stream events")
        except (OSError, ConnectionError, TimeoutError) as exc:
            await _close(writer)
            raise ClientError("unavailable", f"lost the controller: {exc}") from None
        except BaseException:
            await _close(writer)
            raise
        return EventStream(reader, writer)

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await _close(conn[1])

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class EventStream:
    """The controller's pushed events, one JSON object each, until the connection ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def next(self) -> dict[str, Any]:
        try:
            raw = await self._reader.readline()
        except (OSError, ConnectionError, ValueError) as exc:
            raise ClientError("unavailable", f"lost the controller: {exc}") from None
        if not raw:
            raise ClientError("unavailable", "the controller closed the event stream")
        event: dict[str, Any] = json.loads(raw)
        return event

    async def close(self) -> None:
        await _close(self._writer)
