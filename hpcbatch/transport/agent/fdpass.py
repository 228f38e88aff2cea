"""Messages with open descriptors between the agent's processes, over a Unix socket.

Why it exists: the agent hands work to processes of its own (the forker, a
made-ahead shepherd, a user's helper) and gets descriptors back from them
(the job's outputs, opened by the user's own process). Each message is a
length, then a JSON value; the descriptors ride with the length (SCM_RIGHTS),
so a message of any size arrives whole, with its descriptors, or not at all.
No dependency on the rest of the agent: every process of it may use this.

Standard library only (uploaded to hosts), Python 3.8+.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

_HEADER = struct.Struct("!Q")
MAX_FDS = 16
"""The most descriptors one message carries."""
MAX_BYTES = 1 << 26
"""The largest message taken (64 MiB, as the agent's request lines): a longer one is a
broken peer's."""


def send(sock: socket.socket, obj: Any, fds: Sequence[int]) -> None:
    """One message: a length, then `obj` as JSON; `fds` ride with the length."""
    data = json.dumps(obj).encode()
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    sock.sendmsg([_HEADER.pack(len(data))], rights if fds else [])
    sock.sendall(data)


def receive(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """What `send` sent, or None at end of file (the sender let us go)."""
    msg, ancillary, _flags, _addr = sock.recvmsg(_HEADER.size, socket.CMSG_SPACE(MAX_FDS * 4))
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds += list(got)
    while msg and len(msg) < _HEADER.size:
        more = sock.recv(_HEADER.size - len(msg))
        if not more:
            break
        msg += more
    if len(msg) < _HEADER.size:
        for fd in fds:
            os.close(fd)
        return None
    (size,) = _HEADER.unpack(msg)
    if size > MAX_BYTES:
        for fd in fds:
            os.close(fd)
        return None
    data = b""
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None
        data += chunk
    return json.loads(data), fds
