"""Many simulated hosts in one process: an asyncssh server per host, each with its agent.

Why it exists: a scale test needs thousands of SSH hosts the controller
reaches exactly as real ones (TCP, key exchange, host-key check against
known_hosts, public-key login, the agent upload, an exec channel speaking the
agent protocol), at the cost of a few kilobytes each instead of an sshd and a
Python process per host. Each host listens on its own loopback address (and a
port the kernel picks) and accepts one client key. On a connection it serves
the two commands `HostLink` runs: the upload (`mkdir ... cat > agent-*.pyz
...`: stdin read and dropped, exit 0) and `exec <python> <agent> --root R
--heartbeat S` (a `SimAgent`). Anything else exits 127.

Run as `python -m hpcbatch.transport.sim serve ...` (see `sim.cluster`, which
starts several and writes the keys, known_hosts and inventory). The process
prints one JSON line when listening (`{"ready": true, "hosts": [...]}`), then
answers JSON-line commands on stdin: `blackhole`/`restore` (hosts: names),
`stats`, `quit`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import signal
import socket
import sys
import time
from typing import Any

import asyncssh

from hpcbatch.transport.sim.agent import SimAgent, SimHostState

UPLOAD_PREFIX = "mkdir -p "


class SimHost(SimHostState):
    """A host's durable state plus its listener and current SSH connection."""

    __slots__ = ("address", "conn", "held", "listener", "paused", "port", "silent_since")

    def __init__(self, name: str, address: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.address = address
        self.port = 0
        self.listener: socket.socket | None = None
        self.conn: asyncssh.SSHServerConnection | None = None
        self.held: list[socket.socket] = []  # accepted while black-holed: no handshake yet
        self.paused: list[asyncssh.SSHServerConnection] = []
        self.silent_since: float | None = None


class SimSession(asyncssh.SSHServerSession[bytes]):
    """One SSH channel: the upload, or an agent."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.command = ""
        self.agent: SimAgent | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def session_started(self) -> None:
        chan = self.chan
        assert chan is not None
        if self.command.startswith(UPLOAD_PREFIX):
            return  # data_received drops the file; eof_received answers
        heartbeat = _agent_heartbeat(self.command)
        if heartbeat is None:
            chan.write_stderr(b"sh: the simulated host runs only the hpcbatch agent\n")
            chan.exit(127)
            return
        self.host.connects += 1
        self.agent = SimAgent(self.host, heartbeat, chan.write, lambda: chan.exit(0))

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.agent is not None:
            self.agent.data_received(data)

    def eof_received(self) -> bool:
        assert self.chan is not None
        if self.agent is not None:
            self.agent.stop()  # the controller hung up: the agent exits, jobs go on
        self.chan.exit(0)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.agent is not None:
            self.agent.stop()


def _agent_heartbeat(command: str) -> float | None:
    """The `--heartbeat` of `exec <python> <dir>/agent-<hash>.pyz --root R --heartbeat S`."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if len(words) < 3 or words[0] != "exec" or not words[2].endswith(".pyz"):
        return None
    if "--heartbeat" not in words:
        return 5.0
    try:
        return float(words[words.index("--heartbeat") + 1])
    except (IndexError, ValueError):
        return None


class SimServer(asyncssh.SSHServer):
    """One connection's server side: finds its host by the local address, checks the key."""

    def __init__(self, hosts: SimHosts) -> None:
        self.hosts = hosts
        self.host: SimHost | None = None
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        sockname = conn.get_extra_info("sockname")
        self.host = self.hosts.by_addr.get((sockname[0], sockname[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def begin_auth(self, username: str) -> bool:
        return True

    def auth_completed(self) -> None:
        """The connection becomes the host's current one, and goes silent with it.

        A connection accepted while the host was silent never gets here (it is held
        before the handshake, see `SimHosts._accept`); one that was mid-handshake when
        the host went silent is paused now, with its socket long read from."""
        host = self.host
        if host is None or self.conn is None:
            return
        host.conn = self.conn
        if host.silent:
            _pause(self.conn)
            host.paused.append(self.conn)

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self.hosts.client_key.public_data

    def session_requested(self) -> SimSession | bool:
        if self.host is None:
            return False
        return SimSession(self.host)


def _pause(conn: asyncssh.SSHServerConnection) -> None:
    """Stop reading an established connection's socket: keepalives go unanswered.

    Only ever called on a connection past its authentication, whose transport has long
    been reading: pausing one before the transport's first read is scheduled is undone
    by that first read on CPython 3.11.2 (asyncio's `_add_reader` checked only
    `_closing` until 3.11.3), which is why connections that arrive while a host is
    silent are held before the handshake instead. asyncssh has no public way to reach
    the socket's transport; this is test tooling."""
    transport = getattr(conn, "_transport", None)
    if transport is not None:
        transport.pause_reading()


def _resume(conn: asyncssh.SSHServerConnection) -> None:
    transport = getattr(conn, "_transport", None)
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


class SimHosts:
    """This process's hosts: listeners, black-holing, counters."""

    def __init__(
        self,
        hosts: list[SimHost],
        host_key: asyncssh.SSHKey,
        client_key: asyncssh.SSHKey,
    ) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.by_addr: dict[tuple[str, int], SimHost] = {}
        self.client_key = client_key
        self.options = asyncssh.SSHServerConnectionOptions(
            server_factory=lambda: SimServer(self),
            server_host_keys=[host_key],
            encoding=None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=60.0,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on each host's address; connections are accepted here, not by asyncssh,
        so that a black-holed host can hold a new one before its SSH handshake."""
        self._loop = loop = asyncio.get_running_loop()
        for host in self.hosts.values():
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((host.address, 0))
            lsock.listen(128)
            lsock.setblocking(False)
            host.listener = lsock
            host.port = lsock.getsockname()[1]
            self.by_addr[(host.address, host.port)] = host
            loop.add_reader(lsock.fileno(), self._accept, host)

    def _accept(self, host: SimHost) -> None:
        assert host.listener is not None
        while True:
            try:
                sock, _ = host.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of descriptors: the client retries
            if host.silent:
                host.held.append(sock)  # a dead host: the client's handshake times out
            else:
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        task = asyncio.ensure_future(self._run(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, sock: socket.socket) -> None:
        try:
            await asyncssh.run_server(sock, options=self.options)
        except (OSError, asyncssh.Error):  # TimeoutError is an OSError
            sock.close()  # the client gave up (or never spoke SSH): nothing to keep

    def close(self) -> None:
        for host in self.hosts.values():
            if host.listener is not None:
                if self._loop is not None:
                    self._loop.remove_reader(host.listener.fileno())
                host.listener.close()
                host.listener = None
            for sock in host.held:
                sock.close()
            host.held.clear()
        for task in self._tasks:
            task.cancel()

    def blackhole(self, names: list[str]) -> dict[str, tuple[float, float]]:
        """The hosts go silent: no agent output, no reading (so no keepalive replies).
        Returns, per host, when it went silent and when its agent last sent a line."""
        now = time.time()
        out = {}
        for name in names:
            host = self.hosts[name]
            host.silent = True
            host.silent_since = now
            if host.conn is not None:
                _pause(host.conn)
                host.paused.append(host.conn)
            out[name] = (now, host.last_sent or now)
        return out

    def restore(self, names: list[str]) -> None:
        for name in names:
            host = self.hosts[name]
            host.silent = False
            host.silent_since = None
            for conn in host.paused:
                _resume(conn)
            host.paused.clear()
            held, host.held = host.held, []
            for sock in held:  # the handshake starts now; a client that gave up reads EOF
                self._serve(sock)

    def stats(self) -> dict[str, Any]:
        hosts = self.hosts.values()
        return {
            "hosts": len(self.hosts),
            "agents": sum(1 for h in hosts if h.session is not None),
            "connects": sum(h.connects for h in hosts),
            "launches": sum(h.launches for h in hosts),
            "exits": sum(h.exits for h in hosts),
            "running": sum(h.running() for h in hosts),
        }

    def command(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        names = [str(n) for n in req.get("hosts") or []]
        unknown = [n for n in names if n not in self.hosts]
        if unknown:
            return {"ok": False, "error": f"unknown hosts: {', '.join(unknown[:5])}"}
        if op == "blackhole":
            return {"ok": True, "silent_since": self.blackhole(names)}
        if op == "restore":
            self.restore(names)
            return {"ok": True}
        if op == "stats":
            return {"ok": True, **self.stats()}
        return {"ok": False, "error": f"unknown op {op!r}"}


async def serve(args: argparse.Namespace) -> int:
    host_key = asyncssh.read_private_key(args.host_key)
    client_key = asyncssh.read_public_key(args.client_key)
    hosts = [
        SimHost(
            f"{args.prefix}{i}",
            address_of(i),
            cpus=args.cpus,
            memory_mb=args.memory_mb,
            gpus=args.gpus,
        )
        for i in range(args.first, args.first + args.count)
    ]
    sim = SimHosts(hosts, host_key, client_key)
    await sim.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout
    listed = [{"name": h.name, "address": h.address, "port": h.port} for h in hosts]
    out.write(json.dumps({"ready": True, "hosts": listed}) + "\n")
    out.flush()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stdin_task = asyncio.create_task(_commands(sim, reader, out, stop))
    await stop.wait()
    stdin_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stdin_task
    sim.close()
    return 0


async def _commands(
    sim: SimHosts, reader: asyncio.StreamReader, out: Any, stop: asyncio.Event
) -> None:
    while True:
        line = await reader.readline()
        if not line:
            break  # the parent went away
        try:
            req = json.loads(line)
        except ValueError as exc:
            reply: dict[str, Any] = {"ok": False, "error": f"bad command line: {exc}"}
        else:
            if req.get("op") == "quit":
                break
            reply = sim.command(req if isinstance(req, dict) else {})
        out.write(json.dumps(reply) + "\n")
        out.flush()
    stop.set()


def address_of(index: int) -> str:
    """Host `index`'s loopback address: 127.77.0.1 .. (250 per /24, up to 64,000 hosts)."""
    if not 0 <= index < 250 * 256:
        raise ValueError(f"host index {index} out of range 0..{250 * 256 - 1}")
    return f"127.77.{index // 250}.{index % 250 + 1}"
