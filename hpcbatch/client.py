"""The client side of the controller's API, shared by the CLI and the dashboard.

Standard library only, synchronous and small: `hpcbatch submit` must start in
a few tens of milliseconds, so it cannot pay for asyncio or pydantic imports.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum set-up costs `hpcbatch submit` ~3 ms of start-up
import json

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs ~4 ms
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any


MAX_REQUEST = 16 * 1024 * 1024
"""The controller's limit on one request line (`controller.api.MAX_LINE`)."""


class ClientError(Exception):
    """The controller refused a request (`kind` says how) or could not be reached."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Client:
    """One connection to the controller; requests are answered in order."""

    def __init__(self, path: Path | str, timeout: float | None = 30.0) -> None:
        self.path = path
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except FileNotFoundError:
            self._sock.close()
            raise ClientError(
                "unavailable",
                f"no controller socket at {path}: start one with `hpcbatch controller` "
                "(or set HPCBATCH_SOCKET / HPCBATCH_HOME; a shared cluster's controller, "
                "`hpcbatch controller --system`, is found at /run/hpcbatch/controller.sock)",
            ) from None
        except OSError as exc:
            self._sock.close()
            raise ClientError(
                "unavailable", f"cannot reach the controller at {path}: {exc.strerror or exc}"
            ) from None
        self._buf = b""
        self._next = 0

    def close(self) -> None:
        self._sock.close()

    def _readline(self) -> bytes:
        """One reply line (with its newline), or b"" once the controller has closed.

        Only new data is searched for the newline: a reply of many megabytes (a
        listing of 100,000 jobs) arrives in many chunks and costs linear time.
        """
        end = self._buf.find(b"\n")
        if end < 0:
            parts = [self._buf]
            while True:
                chunk = self._sock.recv(262144)
                if not chunk:
                    line, self._buf = b"".join(parts), b""
                    return line
                parts.append(chunk)
                at = chunk.find(b"\n")
                if at >= 0:
                    self._buf = b"".join(parts)
                    end = len(self._buf) - len(chunk) + at
                    break
        line, self._buf = self._buf[: end + 1], self._buf[end + 1 :]
        return line

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_timeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def _send(self, op: str, args: dict[str, Any]) -> int:
        self._next += 1
        msg = {"id": self._next, "op": op, **args}
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        if len(data) > MAX_REQUEST:
            raise ClientError(
                "too_large",
                f"request too large: {len(data) / 2**20:.1f} MiB "
                f"(the controller takes at most {MAX_REQUEST // 2**20} MiB a request)",
            )
        try:
            self._sock.sendall(data)
        except OSError:  # BrokenPipe, ConnectionReset: the controller closed on us
            # It may have said why before closing (request too large, too many
            # connections): that answer is still to be read.
            try:
                reply = self._recv()
            except (ClientError, OSError):
                raise ClientError(
                    "unavailable", "the controller closed the connection during the request"
                ) from None
            if reply.get("ok"):
                raise ClientError("unavailable", "the controller closed the connection") from None
            kind, error = str(reply.get("kind", "error")), str(reply.get("error", "failed"))
            raise ClientError(kind, error) from None
        return self._next

    def _recv(self) -> dict[str, Any]:
        try:
            line = self._readline()
        except TimeoutError:
            raise ClientError("timeout", "the controller did not answer in time") from None
        if not line:
            raise ClientError("unavailable", "the controller closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result, or raise ClientError."""
        self._send(op, args)
        reply = self._recv()
        if not reply.get("ok"):
            raise ClientError(str(reply.get("kind", "error")), str(reply.get("error", "failed")))
        return reply.get("result")

    def pipeline(
        self, op: str, many: list[dict[str, Any]], window: int = 128
    ) -> list[Any | ClientError]:
        """Send many requests of one kind without waiting for each answer.

        Up to `window` requests are in flight at once (the socket buffers never
        fill both ways), so the controller never waits for this process between
        them. Returns each result in order, or the ClientError of one refused.
        """
        out: list[Any | ClientError] = []
        sent = 0
        while len(out) < len(many):
            while sent < len(many) and sent - len(out) < window:
                self._send(op, many[sent])
                sent += 1
            reply = self._recv()
            if reply.get("ok"):
                out.append(reply.get("result"))
            else:
                kind = str(reply.get("kind", "error"))
                out.append(ClientError(kind, str(reply.get("error", "failed"))))
        return out

    def stream(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        """A streaming operation (`events`): yields its events until the controller ends it."""
        self.set_timeout(None)
        self.call(op, **args)
        while True:
            line = self._readline()
            if not line:
                return
            yield json.loads(line)

    def watch(self) -> Iterator[dict[str, Any]]:
        """Subscribe to controller events; yields them until the connection ends."""
        self.set_timeout(None)
        self.call("watch")
        while True:
            line = self._readline()
            if not line:
                return
            yield json.loads(line)
