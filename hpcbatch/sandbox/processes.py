"""The sandbox's processes: starting and stopping sshd, finding and killing them.

Ports are picked here, a host's sshd is started and waited for, and stopping
with its sessions finds every process holding the host's socket through /proc
and kills their process trees; `_marked` finds, through /proc too, what the
hosts started and detached from those trees (Linux only).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from hpcbatch.sandbox.files import _sshd_config, _write
from hpcbatch.sandbox.model import (
    ROOT_MARK,
    SANDBOX_USER,
    SSHD,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    Sandbox,
    SandboxError,
    SandboxHost,
)


def _pick_port(address: str, preferred: int | None) -> int:
    """`preferred` if free on `address`; else 22 as root if free; else any free port."""
    candidates = [preferred] if preferred else []
    if os.geteuid() == 0:
        candidates.append(22)
    for candidate in candidates:
        if _port_free(address, candidate):
            return candidate
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


def _start(sb: Sandbox, host: SandboxHost) -> None:
    """Start `host`'s sshd and wait until it accepts connections.

    If its port was taken meanwhile (a race with another sandbox or program), a
    new port is picked and `host.port` updated; the caller rewrites client files.
    """
    for attempt in range(5):
        if attempt:
            host.port = _pick_port(host.address, None)
        _write(host.config_file, _sshd_config(sb, host), 0o644)
        host.pid_file.unlink(missing_ok=True)
        offset = host.log_file.stat().st_size if host.log_file.exists() else 0
        with open(host.log_file, "ab") as log:
            try:
                proc = subprocess.run(
                    [SSHD, "-f", str(host.config_file), "-E", str(host.log_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    timeout=30,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise SandboxError(f"cannot run {SSHD} for {host.name}: {exc}") from exc
        if proc.returncode == 0:
            break
        text = _log_tail(host.log_file, offset)
        if "Address already in use" in text or "Cannot bind any address" in text:
            continue
        raise SandboxError(
            f"sshd of sandbox host {host.name} ({host.address}:{host.port}) exited "
            f"with status {proc.returncode}; {host.log_file} says:\n{text}"
        )
    else:
        raise SandboxError(f"no free port for sandbox host {host.name} on {host.address}")
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        host.pid = _running_pid(host)
        if host.pid is not None and _accepts(host.address, host.port):
            return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"sshd of sandbox host {host.name} did not accept connections on "
                f"{host.address}:{host.port} within {START_TIMEOUT_S:.0f} s; "
                f"{host.log_file} says:\n{_log_tail(host.log_file, offset)}"
            )
        time.sleep(0.02)


def _accepts(address: str, port: int) -> bool:
    """True if an SSH server answers on `address:port` (it sends its banner first)."""
    try:
        with socket.create_connection((address, port), timeout=2.0) as conn:
            return conn.recv(256).startswith(b"SSH-")
    except OSError:
        return False


def _log_tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read it: {exc})"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(nothing)"


def _stop(host: SandboxHost, kill_sessions: bool) -> None:
    pid = _running_pid(host)
    if kill_sessions:
        roots = _socket_holders(host.address, host.port) if host.port else set()
        if pid is not None:
            roots.add(pid)
        _kill_trees(roots)
    elif pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # sshd removes its pid file and exits
        if not _wait_dead({pid}, STOP_TIMEOUT_S):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_dead({pid}, STOP_TIMEOUT_S)
    host.pid_file.unlink(missing_ok=True)
    host.pid = None


def _running_pid(host: SandboxHost) -> int | None:
    """The pid in `host`'s pid file if that process is alive and is its sshd."""
    try:
        pid = int(host.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or not _alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    # The listener's title is "sshd: /usr/sbin/sshd -f <config> ... [listener] ...".
    return pid if str(host.config_file) in cmdline else None


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (PID 1 may never reap the sandbox's)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return data[data.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _wait_dead(pids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = int(fields[1])
    return table


def _socket_holders(address: str, port: int) -> set[int]:
    """Processes holding a TCP socket whose local end is `address:port`.

    These are the host's listener and its per-connection sshds, even orphaned
    ones (whose listener was stopped and whose parent is no longer it).
    """
    inodes = set()
    packed = socket.inet_aton(address)
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    for line in lines:
        fields = line.split()
        local_ip, local_port = fields[1].split(":")
        if int(local_port, 16) == port and struct.pack("=I", int(local_ip, 16)) == packed:
            inodes.add(f"socket:[{fields[9]}]")
    holders: set[int] = set()
    if not inodes:
        return holders
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.scandir(f"/proc/{entry.name}/fd")
        except OSError:
            continue
        with fds:
            for fd in fds:
                try:
                    if os.readlink(fd.path) in inodes:
                        holders.add(int(entry.name))
                        break
                except OSError:
                    continue
    return holders


def _login_uid() -> int | None:
    """The uid the sandbox hosts log in as (None: that user does not exist)."""
    if os.geteuid() != 0:
        return os.geteuid()
    try:
        return pwd.getpwnam(SANDBOX_USER).pw_uid
    except KeyError:
        return None


def _marked(root: Path | None = None) -> dict[int, Path]:
    """pid -> sandbox root of the live processes the hosts of a sandbox started.

    Found by `ROOT_MARK` in their environment (of the sandbox at `root`, or of
    any), also those that left their session's process tree (setsid, double
    fork). Only the login user's processes count, never this process or its
    ancestors (a `sandbox down` typed in a sandbox host's shell).
    """
    uid = _login_uid()
    if uid is None:
        return {}
    spared = _ancestors()
    prefix = f"{ROOT_MARK}=".encode()
    found: dict[int, Path] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            if entry.stat().st_uid != uid or not _alive(int(entry.name)):
                continue
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(prefix):
                marked = Path(os.fsdecode(var[len(prefix) :]))
                if root is None or marked == root:
                    found[int(entry.name)] = marked
                break
    return found


def _ancestors() -> set[int]:
    """This process and its ancestors, up to PID 1."""
    parents = _parents()
    chain = {os.getpid(), 1}
    pid = os.getpid()
    while pid in parents and parents[pid] not in chain:
        pid = parents[pid]
        chain.add(pid)
    return chain


def _kill_trees(roots: set[int]) -> None:
    """SIGKILL `roots` and all their descendants, frozen first so none escapes by forking."""
    spared = _ancestors()
    stopped: set[int] = set()
    for _ in range(100):
        parents = _parents()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        tree: set[int] = set()
        todo = [p for p in roots | stopped if p in parents]
        while todo:
            pid = todo.pop()
            if pid in tree or pid in spared:
                continue
            tree.add(pid)
            todo.extend(children.get(pid, []))
        new = tree - stopped
        if not new:
            break
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= new
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    _wait_dead(stopped, STOP_TIMEOUT_S)
