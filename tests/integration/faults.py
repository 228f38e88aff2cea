"""Real faults for the sandbox: a TCP proxy that stalls or resets, sshd killed or stopped.

No root needed. `FaultProxy` listens on 127.0.0.1 in front of one sandbox
host's sshd and forwards bytes both ways; `blackhole()` stops forwarding
(bytes are held, as TCP would retransmit them: when it ends, the connections
carry on unless a side gave up meanwhile), `reset()` kills every connection
with a TCP RST and refuses new ones until `restore()`, `delay` adds latency to
every chunk. It runs its own event loop in a thread, so it serves the same way
whether the controller runs in the test's loop or in another process.
`proxied_inventory` writes an inventory (and a known_hosts with the host's key
for the proxy's address and port: known_hosts entries are per address:port)
that reaches the host through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import struct
import threading
from pathlib import Path

from hpcbatch.sandbox import Sandbox

PROXY_ADDRESS = "127.0.0.1"


class FaultProxy:
    """A TCP proxy to `target` with switchable faults. Use as a context manager."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.delay_s = 0.0
        self._mode = "pass"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ control (any thread)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def mode(self) -> str:
        return self._mode

    def blackhole(self) -> None:
        """Stop forwarding, in both directions, on every connection, new ones too."""
        self._call(self._set, "blackhole")

    def reset(self) -> None:
        """RST every connection; refuse (RST) new ones."""
        self._call(self._set, "reset")

    def restore(self) -> None:
        self._call(self._set, "pass")

    def _call(self, fn: object, *args: object) -> None:
        async def run() -> None:
            fn(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ------------------------------------------------------------------ the proxy (its loop)

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, PROXY_ADDRESS, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            _rst(w)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _set(self, mode: str) -> None:
        assert self._flowing is not None
        self._mode = mode
        if mode == "pass":
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == "reset":
            for w in list(self._conns):
                _rst(w)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "reset":
            _rst(writer)
            return
        assert self._flowing is not None
        await self._flowing.wait()  # a black-holed connect hangs, as with lost SYNs
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        self._conns.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        self._conns.difference_update((writer, up_writer))
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await src.read(65536)
                await self._flowing.wait()  # black-holed: held here, as if unacknowledged
                if self._mode == "reset":
                    return
                if not data:
                    return
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                dst.write(data)
                await dst.drain()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), not a FIN."""
    with contextlib.suppress(OSError):
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def proxied_inventory(
    sb: Sandbox, proxies: dict[str, int], directory: Path, base: Path | None = None
) -> Path:
    """A copy of the sandbox inventory (or `base`, e.g. its users inventory) reaching
    each named host through its proxy port."""
    lines = sb.known_hosts.read_text().splitlines()
    for name in proxies:
        key = " ".join(Path(f"{sb.host(name).host_key}.pub").read_text().split()[:2])
        lines.append(f"[{PROXY_ADDRESS}]:{proxies[name]} {key}")
    known = directory / "known_hosts"
    known.write_text("\n".join(lines) + "\n")
    text = (base or sb.inventory).read_text()
    text = re.sub(r"(?m)^known_hosts = .*$", f'known_hosts = "{known}"', text)
    for name, port in proxies.items():
        host = sb.host(name)
        block = f'name = "{name}"\naddress = "{host.address}"\nport = {host.port}\n'
        assert block in text, f"unexpected sandbox inventory layout for {name}"
        text = text.replace(block, f'name = "{name}"\naddress = "{PROXY_ADDRESS}"\nport = {port}\n')
    path = directory / "inventory.toml"
    path.write_text(text)
    return path


def sshd_tree(sb: Sandbox, name: str) -> list[int]:
    """The host's listening sshd and every sshd process under it."""
    root = int(sb.host(name).pid_file.read_text())
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(p for p, pp in parents.items() if pp == pid and p not in tree)
    out = []
    for pid in tree:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("sshd", "sshd-session"):
                out.append(pid)
    return out


def signal_sshd(sb: Sandbox, name: str, sig: int) -> list[int]:
    """Send `sig` to the host's sshd tree (SIGSTOP freezes its connections; SIGKILL
    is a crash: what ran in the sessions gets the hang-up a real crash gives it)."""
    pids = sshd_tree(sb, name)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    if sig == signal.SIGKILL:
        sb.host(name).pid_file.unlink(missing_ok=True)
    return pids


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
