"""One host's persistent SSH connection and the host agent running over it.

A `HostLink` connects (host-key checking always on, whatever the ssh_config
says), uploads the agent if the host lacks this version (content-addressed
file name), starts it over an SSH channel and then carries JSON-lines
requests and events until the connection drops; it then reconnects with
exponential backoff and jitter. Whoever owns
the link hears about it through a `LinkListener`. The controller's links live
in a `pool.HostPool`. Only the transport imports asyncssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import asyncssh

from hpcbatch.transport.agent.protocol import HelloReply
from hpcbatch.transport.agent_archive import archive

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SshTarget:
    """How to reach one host. `address` None means: let the ssh_config resolve `name`."""

    name: str
    address: str | None
    port: int | None
    user: str | None
    identity: str | None
    known_hosts: str | None
    ssh_config: str | None
    work_dir: str
    python: str = "python3"
    namespace: str = "default"  # the agent's root is <work_dir>/<namespace>
    # "submitter": jobs run as their users, who must pass through work_dir and the
    # agent's root to their own attempt directories (0711: through, never list).
    run_as: str = "login"

    def describe(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.address or self.name}{port}"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    connect_timeout_s: float = 10.0
    keepalive_s: float = 5.0
    keepalive_count: int = 3
    heartbeat_s: float = 5.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 60.0
    # Hosts connecting at once (handshake, upload, hello), and the longest one holds
    # its place (a dead host's connect waits for its timeout): see `pool.HostPool`.
    max_connecting: int = 64
    connect_slot_s: float = 2.0


@dataclass(slots=True)
class LinkStats:
    """What the metrics read of a link: request round trips and connections made."""

    requests: int = 0
    rtt_sum_s: float = 0.0
    last_rtt_s: float = 0.0
    connects: int = 0


@dataclass(slots=True)
class Fencing:
    """The controller's epoch, sent with every request (agent/epoch.py), and what to do
    when a host refuses it as stale: another controller took the lead (one per pool)."""

    epoch: int = 0  # 0: none sent (a controller that has not taken the lead yet)
    on_stale: Callable[[str], None] | None = None

    def refused(self, code: str, text: str) -> None:
        if code == "stale_epoch" and self.on_stale is not None:
            self.on_stale(text)


class HostUnavailable(ConnectionError):
    """The host's agent is not connected; the request was not delivered."""


class AgentError(RuntimeError):
    """The agent answered `ok: false`. `code` is the reply's error code (protocol.ErrorCode:
    decide on it, never on the words); `message` the agent's words alone."""

    def __init__(self, text: str, code: str = "internal", message: str | None = None) -> None:
        super().__init__(text)
        self.code = code
        self.message = text if message is None else message


class HostKeyUnchecked(ConnectionError):
    """The host's key would not be checked (the ssh_config turns checking off): refused."""


class LinkListener(Protocol):
    async def link_up(self, link: HostLink, hello: HelloReply) -> None: ...

    async def link_down(self, link: HostLink, reason: str) -> None: ...

    def agent_event(self, link: HostLink, event: dict[str, Any]) -> None: ...


# asyncssh's chacha20-poly1305 builds three cipher contexts per packet in Python: twice
# the CPU per message of AES-GCM (600 vs 300 us per echoed line, both ends in one process),
# which at thousands of hosts is most of the controller's idle CPU (heartbeats). Both are
# OpenSSH defaults; the rest of asyncssh's list stays as the fallback.
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


def agent_source() -> bytes:
    """The agent as uploaded: a deterministic zipapp of hpcbatch.transport.agent."""
    return archive()


def agent_digest(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:16]


class KnownHostsCache:
    """known_hosts files parsed once per version of the file (path -> (stat stamp, parsed)).

    Given a path, asyncssh reads and parses the whole file on every connection,
    decoding every key in it. With a line per host, connecting N hosts costs
    O(N^2): 75 ms of CPU per connection at 1,000 hosts, so that the
    controller could not connect them all (each handshake timed out behind
    the others). Matching against the parsed file is a dictionary lookup. One
    cache is shared by the links of a `HostPool`.
    """

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[tuple[int, int, int], asyncssh.SSHKnownHosts]] = {}

    def get(self, path: str) -> asyncssh.SSHKnownHosts | str:
        """`path`'s known_hosts, parsed again only when the file changes. An
        unreadable or malformed file is handed to asyncssh as the path, which
        fails the connection with its usual error."""
        path = os.path.expanduser(path)
        try:
            st = os.stat(path)
        except OSError:
            return path
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._parsed.get(path)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, asyncssh.read_known_hosts(path))
            except (OSError, ValueError, asyncssh.Error):
                return path
            self._parsed[path] = cached
        return cached[1]


def _between(work_dir: str, namespace: str) -> list[str]:
    """The directories between work_dir and the agent's root (c-<cluster>), quoted."""
    parts = namespace.split("/")[:-1]
    return [_remote_path(f"{work_dir.rstrip('/')}/{'/'.join(parts[: i + 1])}")
            for i in range(len(parts))]  # fmt: skip


def _remote_path(path: str) -> str:
    """Quote a remote path for sh, keeping a leading `~/` meaning the login's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class HostLink:
    """A supervised connection to one host's agent. Start with `start()`, end with `close()`."""

    def __init__(
        self,
        target: SshTarget,
        listener: LinkListener,
        *,
        settings: LinkSettings | None = None,
        source: bytes | None = None,
        gate: asyncio.Semaphore | None = None,
        known_hosts: KnownHostsCache | None = None,
        fencing: Fencing | None = None,
    ) -> None:
        self.target = target
        self.fencing = fencing if fencing is not None else Fencing()
        self.name = target.name
        self._listener = listener
        self._settings = settings or LinkSettings()
        self._source = source if source is not None else agent_source()
        self._digest = agent_digest(self._source)
        self._gate = gate
        self._known_hosts = known_hosts if known_hosts is not None else KnownHostsCache()
        self._conn: asyncssh.SSHClientConnection | None = None
        self._proc: asyncssh.SSHClientProcess[str] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._kick = asyncio.Event()
        self.connected = False
        self._drop_reason: str | None = None
        self.last_error: str | None = None
        self.last_seen: float = 0.0
        self.stats = LinkStats()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    def kick(self) -> None:
        """Retry a connection now instead of waiting out the backoff."""
        self._kick.set()

    async def close(self, *, shutdown_agent: bool = False) -> None:
        """Stop reconnecting and close the connection; jobs keep running on the host."""
        self._closing = True
        self._kick.set()
        if shutdown_agent and self.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.request("shutdown"), 2.0)
        if self._conn is not None:
            self._conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()

    async def drop(self, reason: str | None = None) -> None:
        """Close the current connection (the link reconnects by itself); `reason` is
        what the listener hears in `link_down`."""
        self._drop_reason = reason
        if self._conn is not None:
            self._conn.close()

    # ------------------------------------------------------------------ requests

    async def request(
        self, op: str, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send one request to the agent and wait for its reply."""
        proc = self._proc
        if proc is None or not self.connected:
            raise HostUnavailable(f"{self.name}: not connected ({self.last_error or 'connecting'})")
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        t0 = time.perf_counter()
        try:
            proc.stdin.write(json.dumps({"id": rid, "op": op, **self._epoch(), **fields}) + "\n")
            reply = await asyncio.wait_for(fut, timeout or self._settings.request_timeout_s)
            rtt = time.perf_counter() - t0
            stats = self.stats
            stats.requests += 1
            stats.rtt_sum_s += rtt
            stats.last_rtt_s = rtt
        except (OSError, asyncssh.Error) as exc:
            raise HostUnavailable(f"{self.name}: {exc}") from exc
        except TimeoutError as exc:
            raise HostUnavailable(f"{self.name}: agent did not answer {op} in time") from exc
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok", False):
            error = str(reply.get("error", "failed"))
            code = str(reply.get("code") or "internal")  # an older agent sends no code
            self.fencing.refused(code, f"{self.name}: {op}: {error}")
            raise AgentError(f"{self.name}: {op}: {error}", code, error)
        return reply

    def _epoch(self) -> dict[str, int]:
        epoch = self.fencing.epoch
        return {"epoch": epoch} if epoch else {}

    def post(self, op: str, **fields: Any) -> bool:
        """Send a request without waiting: the agent sends no reply (negative id), only
        an `error` event if it fails. For relay traffic, which must keep its order and
        must not wait on round trips. False if the agent is not connected."""
        proc = self._proc
        if proc is None or not self.connected:
            return False
        try:
            proc.stdin.write(json.dumps({"id": -1, "op": op, **fields}) + "\n")
        except (OSError, asyncssh.Error):
            return False
        return True

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        delay = self._settings.backoff_min_s
        while not self._closing:
            reason = "connection closed"
            try:
                hello = await self._gated_connect()
                delay = self._settings.backoff_min_s
                self.stats.connects += 1
                self.connected = True
                self.last_error = None
                reader = asyncio.create_task(self._read_loop())
                try:
                    await self._listener.link_up(self, hello)
                    reason = await reader
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
            except asyncio.CancelledError:
                raise
            except asyncssh.HostKeyNotVerifiable as exc:
                reason = (
                    f"host key of {self.name} ({self.target.describe()}) is not trusted by "
                    f"{self.target.known_hosts or '~/.ssh/known_hosts'} "
                    f"(missing or changed): refused ({exc.reason})"
                )
            except HostKeyUnchecked as exc:
                reason = str(exc)
            except asyncssh.PermissionDenied as exc:
                reason = f"SSH login to {self.target.describe()} refused: {exc.reason}"
            except (OSError, asyncssh.Error, TimeoutError, HostUnavailable, AgentError) as exc:
                reason = f"cannot reach {self.target.describe()}: {_describe_exc(exc)}"
            except Exception as exc:  # the link must survive anything and keep retrying
                log.exception("link %s failed", self.name)
                reason = f"unexpected error: {exc!r}"
            if self._drop_reason is not None:
                reason, self._drop_reason = self._drop_reason, None
            was_connected = self.connected
            self.connected = False
            self.last_error = reason
            self._fail_pending(reason)
            self._teardown()
            await self._listener.link_down(self, reason)
            if self._closing:
                break
            if was_connected:
                delay = self._settings.backoff_min_s
            sleep = delay * (0.5 + random.random())
            delay = min(delay * 2, self._settings.backoff_max_s)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), sleep)

    async def _gated_connect(self) -> HelloReply:
        gate = self._gate
        if gate is None:
            return await self._connect()
        await gate.acquire()
        task = asyncio.create_task(self._connect(), name=f"connect-{self.name}")
        try:
            await asyncio.wait({task}, timeout=self._settings.connect_slot_s)
        except BaseException:
            task.cancel()
            raise
        finally:
            gate.release()
        return await task

    async def _connect(self) -> HelloReply:
        t = self.target
        s = self._settings
        options: dict[str, Any] = {
            "connect_timeout": s.connect_timeout_s,
            "keepalive_interval": s.keepalive_s,
            "keepalive_count_max": s.keepalive_count,
            "agent_path": None,
            "encryption_algs": list(ENCRYPTION_ALGS),
        }
        if t.known_hosts is not None:
            options["known_hosts"] = self._known_hosts.get(t.known_hosts)
        if t.identity is not None:
            options["client_keys"] = [t.identity]
        if t.user is not None:
            options["username"] = t.user
        if t.port is not None:
            options["port"] = t.port
        if t.ssh_config is not None:
            options["config"] = [t.ssh_config]
        if t.known_hosts is None:
            await self._check_host_keys_on(options)
        conn = await asyncio.wait_for(
            asyncssh.connect(t.address or t.name, **options), s.connect_timeout_s + 5
        )
        self._conn = conn
        base = _remote_path(t.work_dir)
        root = _remote_path(f"{t.work_dir.rstrip('/')}/{t.namespace}")
        script = f"{base}/agent-{self._digest}.pyz"
        # The file's name is its hash, but a name proves nothing: the content is hashed
        # before each start, and a file that differs (rewritten by a job, truncated) is
        # replaced by the controller's copy.
        full = hashlib.sha256(self._source).hexdigest()
        dirs = [base, *_between(t.work_dir, t.namespace), root]
        mode = "711" if t.run_as == "submitter" else "700"
        upload = (
            f"mkdir -p {root} && chmod {mode} {' '.join(dirs)} && "
            f'{{ [ "$(sha256sum < {script} 2>/dev/null | cut -c1-64)" = {full} ] || '
            f"{{ cat > {script}.$$ && mv -f {script}.$$ {script}; }}; }}"
        )
        result = await asyncio.wait_for(
            conn.run(upload, input=self._source, encoding=None, check=False),
            s.request_timeout_s,
        )
        if result.exit_status != 0:
            err = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else ""
            raise AgentError(f"uploading the agent failed: {err.strip()}")
        command = (
            f"exec {shlex.quote(t.python)} {script} --root {root} --heartbeat {s.heartbeat_s:g}"
        )
        self._proc = await conn.create_process(command, encoding="utf-8")
        return await asyncio.wait_for(self._first_reply(), s.request_timeout_s)

    async def _check_host_keys_on(self, options: dict[str, Any]) -> None:
        """Refuse to connect when the ssh_config would turn host-key checking off.

        Without a known_hosts file of the inventory's, asyncssh takes the one the
        ssh_config names for this host (`UserKnownHostsFile`, default
        ~/.ssh/known_hosts), and `UserKnownHostsFile none` there means: accept any
        key. OpenSSH would still check against nothing and refuse (unless
        `StrictHostKeyChecking no` says otherwise); hpcbatch refuses whatever
        the ssh_config says. The options are resolved as `connect` resolves them.
        """
        t = self.target
        # As `asyncssh.connect` passes them: no `config` means the user's ~/.ssh/config.
        kwargs = {"config": (), **options, "host": t.address or t.name}
        construct = getattr(asyncssh.SSHClientConnectionOptions, "construct", None)
        if construct is not None:
            resolved = await construct(**kwargs)
        else:  # older asyncssh: the same, built in this thread
            resolved = asyncssh.SSHClientConnectionOptions(**kwargs)
        if resolved.known_hosts is None:
            raise HostKeyUnchecked(
                f"host key of {self.name} ({t.describe()}) cannot be checked: the ssh_config "
                f"({t.ssh_config or '~/.ssh/config'}) says `UserKnownHostsFile none` for it, "
                "which turns host-key checking off; hpcbatch never connects to a host whose "
                "key it cannot check: set known_hosts in the inventory (or a file in that "
                "UserKnownHostsFile): refused"
            )

    async def _first_reply(self) -> HelloReply:
        """Send `hello` and read lines until its reply (the read loop is not running yet)."""
        assert self._proc is not None
        self._proc.stdin.write(json.dumps({"id": 0, "op": "hello", **self._epoch()}) + "\n")
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                err = ""
                with contextlib.suppress(Exception):
                    err = (await asyncio.wait_for(self._proc.stderr.read(), 1.0)).strip()
                raise AgentError(f"the agent exited at start: {err[-500:] or 'no output'}")
            msg = json.loads(line)
            if msg.get("id") == 0:
                if not msg.get("ok"):
                    code = str(msg.get("code") or "internal")
                    self.fencing.refused(code, f"{self.name}: hello: {msg.get('error')}")
                    raise AgentError(f"hello failed: {msg.get('error')}", code)
                self.last_seen = asyncio.get_running_loop().time()
                return cast(HelloReply, msg)

    async def _read_loop(self) -> str:
        assert self._proc is not None
        stdout = self._proc.stdout
        loop = asyncio.get_running_loop()
        while True:
            try:
                line = await stdout.readline()
            except (OSError, asyncssh.Error) as exc:
                return f"connection lost: {_describe_exc(exc)}"
            if not line:
                return "agent channel closed"
            self.last_seen = loop.time()
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("%s: agent sent a malformed line: %r", self.name, line[:200])
                continue
            rid = msg.get("id")
            if rid is not None:
                fut = self._pending.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif "ev" in msg:
                try:
                    self._listener.agent_event(self, msg)
                except Exception:
                    log.exception("%s: handling agent event %r failed", self.name, msg)

    def _fail_pending(self, reason: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(HostUnavailable(f"{self.name}: {reason}"))
        self._pending.clear()

    def _teardown(self) -> None:
        self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
