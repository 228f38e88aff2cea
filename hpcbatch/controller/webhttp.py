"""A small HTTP/1.1 client for webhook POSTs, keeping connections alive between them,
run on a thread of its own so that the controller's event loop does not carry it.

A webhook for every event makes a POST per job transition: opening and
closing a TCP (and TLS) connection for each would cost the controller more
than the rest of the notification together. Connections are kept per
(host, port, scheme) and reused while the server keeps them open; a reused
connection that turns out closed is replaced once. Only what webhooks need:
POST, a status, a body read by Content-Length or chunks and dropped.

`HttpWorker` runs a pool on its own event loop in a thread: the notifier hands
it a batch of POSTs and awaits one answer for the batch, so the sockets'
system calls (a loopback send does the receiver's TCP work too) and the
parsing happen beside the controller's loop instead of between its steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
MAX_IDLE = 8  # per server


class HttpError(Exception):
    """The server's answer is not HTTP; the message says what came."""


class HttpPool:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, bool], list[Conn]] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST `body` to `url`; the answer's status."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        key = (parts.hostname or "", parts.port or (443 if tls else 80), tls)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}",
                "Content-Type: application/json", f"Content-Length: {len(body)}",
                *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        idle = self._idle.setdefault(key, [])
        if idle:
            conn = idle.pop()
            try:
                return await self._exchange(key, conn, request)
            except (OSError, asyncio.IncompleteReadError, HttpError):
                pass  # closed by the server while idle: once more, on a new connection
        conn = await asyncio.open_connection(
            key[0], key[1], ssl=ssl.create_default_context() if tls else None
        )
        try:
            return await self._exchange(key, conn, request)
        except asyncio.IncompleteReadError as exc:
            raise HttpError(f"{url}: the connection closed before an answer") from exc

    async def _exchange(self, key: tuple[str, int, bool], conn: Conn, request: bytes) -> int:
        reader, writer = conn
        keep = False
        try:
            writer.write(request)
            await writer.drain()
            status = await reader.readline()
            fields = status.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise HttpError(f"not an HTTP answer: {status[:80]!r}")
            keep = fields[0] == b"HTTP/1.1"
            length, chunked = 0, False
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value:
                    chunked = True
                elif name == "connection":
                    keep = "close" not in value
            await (_chunks(reader) if chunked else reader.readexactly(length))
            return int(fields[1])
        finally:
            idle = self._idle.setdefault(key, [])
            if keep and len(idle) < MAX_IDLE:
                idle.append(conn)
            else:
                _close(writer)

    async def close(self) -> None:
        for conns in self._idle.values():
            for _reader, writer in conns:
                _close(writer)
        self._idle.clear()


async def _chunks(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


@dataclass(frozen=True, slots=True)
class Post:
    url: str
    body: bytes
    headers: dict[str, str]


class HttpWorker:
    """An HttpPool on its own loop and thread; `post_many` from the controller's loop."""

    def __init__(self, in_flight: int, timeout_s: float) -> None:
        self._in_flight = in_flight
        self._timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: HttpPool | None = None

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="webhooks", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    async def post_many(self, posts: Sequence[Post]) -> list[int | BaseException]:
        """Each POST's status, or the exception it ended with (a timeout included)."""
        future = asyncio.run_coroutine_threadsafe(self._run(posts), self._start())
        return await asyncio.wrap_future(future)

    async def _run(self, posts: Sequence[Post]) -> list[int | BaseException]:
        if self._pool is None:
            self._pool = HttpPool()
        pool, gate = self._pool, asyncio.Semaphore(self._in_flight)

        async def one(post: Post) -> int:
            async with gate, asyncio.timeout(self._timeout_s):
                return await pool.post(post.url, post.body, post.headers)

        return await asyncio.gather(*(one(p) for p in posts), return_exceptions=True)

    async def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._pool is not None:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._pool.close(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()
        self._loop = self._thread = None
