"""The sandbox's public operations: up, down, status, start/stop one host.

Each takes the sandbox lock and combines the phases (bringing up, state,
files, processes); the package re-exports these as `hpcbatch.sandbox.*`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hpcbatch.sandbox.bringup import _check_params, _locked, _prepare_root, _up
from hpcbatch.sandbox.files import _write_client_files
from hpcbatch.sandbox.model import SANDBOX_USER, SSHD, Sandbox, SandboxError, _make_host, _Params
from hpcbatch.sandbox.processes import _kill_trees, _marked, _running_pid, _start, _stop
from hpcbatch.sandbox.state import (
    _hosts_from_state,
    _read_params,
    _read_state,
    _sandbox_from_state,
    _write_state,
)


def default_root() -> Path:
    """Where the sandbox lives unless told otherwise.

    `$HPCBATCH_HOME/sandbox` (default `~/.hpcbatch/sandbox`); as root without
    `HPCBATCH_HOME`, `/var/lib/hpcbatch/sandbox`, since root's home is usually
    closed to the sandbox's login user.
    """
    home = os.environ.get("HPCBATCH_HOME")
    if home:
        return Path(home).expanduser() / "sandbox"
    if os.geteuid() == 0:
        return Path("/var/lib/hpcbatch/sandbox")
    return Path("~/.hpcbatch/sandbox").expanduser()


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a sandbox, as package-ish names to print."""
    missing = []
    if not Path("/proc/self/stat").exists():
        missing.append("Linux /proc (the sandbox finds its processes there)")
    if not os.access(SSHD, os.X_OK):
        missing.append(f"openssh-server ({SSHD})")
    if shutil.which("ssh-keygen") is None:
        missing.append("openssh-client (ssh-keygen)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("sshd")
        except KeyError:
            missing.append("the 'sshd' privilege-separation user (installed with openssh-server)")
        try:
            pwd.getpwnam(SANDBOX_USER)
        except KeyError:
            for tool in ("useradd", "usermod"):
                if shutil.which(tool) is None:
                    missing.append(f"passwd ({tool}, to create the '{SANDBOX_USER}' user)")
    return missing


def sandbox_up(
    root: Path,
    hosts: int = 4,
    gpu_hosts: int = 1,
    gpus_per_host: int = 2,
    base_address: int = 2,
    users: tuple[str, ...] = (),
) -> Sandbox:
    """Bring the sandbox at `root` up and return it.

    Idempotent: when the sandbox already exists with the same shape it is
    returned as is, after restarting any host whose sshd is not running (on its
    old port when still free). A sandbox of another shape is rebuilt when none
    of its hosts is running; otherwise this raises (run `sandbox_down` first).
    """
    params = _Params(hosts, gpu_hosts, gpus_per_host, base_address, tuple(users))
    _check_params(params)
    missing = missing_prerequisites()
    if missing:
        raise SandboxError("cannot start a sandbox, missing: " + ", ".join(missing))
    root = _prepare_root(root)
    with _locked(root):
        return _up(root, params)


def sandbox_down(root: Path) -> None:
    """Stop every sshd of the sandbox at `root`, with its sessions and every process
    its hosts started (`sandbox_processes`); leave the files.

    Finds the hosts from their pid files, so it also works on a half-built or
    reshaped sandbox; a stale pid file (no process, or a process that is not
    this host's sshd) is removed and nothing is killed.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        return
    with _locked(root):
        state = _read_state(root)
        hosts = {h.name: h for h in _hosts_from_state(root, state)} if state else {}
        hosts_dir = root / "hosts"
        if hosts_dir.is_dir():
            for entry in sorted(hosts_dir.iterdir()):
                if entry.is_dir() and entry.name not in hosts:
                    hosts[entry.name] = _make_host(root, entry.name, "", 0, 0, "")
        for host in hosts.values():
            _stop(host, kill_sessions=True)
        # What the hosts started and detached (shepherds, a gang's holders) is no
        # longer in any sshd's tree: found by the mark in its environment.
        _kill_trees(set(_marked(root)))


def sandbox_processes(root: Path | None = None) -> dict[int, Path]:
    """pid -> sandbox root of every live process a sandbox host started (at `root`, or any).

    What `sandbox_down` stops; the test suite checks that none outlives its sandbox.
    """
    return _marked(None if root is None else Path(root).expanduser().absolute())


def sandbox_status(root: Path) -> Sandbox | None:
    """The sandbox at `root` as it is now (a host's `pid` is None when it is down).

    None when no sandbox was ever brought up there.
    """
    root = Path(root).expanduser().absolute()
    state = _read_state(root)
    if state is None:
        return None
    return _sandbox_from_state(root, state)


def start_host(sb: Sandbox, name: str) -> None:
    """Start host `name`'s sshd if it is not running (on its old port when free)."""
    with _locked(sb.root):
        host = sb.host(name)
        host.pid = _running_pid(host)
        if host.pid is not None:
            return
        old_port = host.port
        _start(sb, host)
        if host.port != old_port:
            _write_client_files(sb)
            _write_state(sb, _read_params(sb.root))


def stop_host(sb: Sandbox, name: str, kill_sessions: bool = False) -> None:
    """Stop host `name`'s listening sshd: new connections are refused.

    Connections already open keep working (each has its own sshd process),
    unless `kill_sessions`: then every process of that host's sshd tree is
    killed (per-connection sshds, their shells, agents and jobs), also those
    orphaned by an earlier stop, as if the host had crashed.
    """
    with _locked(sb.root):
        _stop(sb.host(name), kill_sessions=kill_sessions)


@contextlib.contextmanager
def temporary_sandbox(
    hosts: int = 4,
    gpu_hosts: int = 1,
    gpus_per_host: int = 2,
    base_address: int = 2,
    keep: bool = False,
    users: tuple[str, ...] = (),
) -> Iterator[Sandbox]:
    """A sandbox in a fresh /tmp directory, brought down (and removed unless `keep`) on exit.

    The directory gets mode 0755: as root, the login user must reach it.
    """
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield sandbox_up(root, hosts, gpu_hosts, gpus_per_host, base_address, users)
    finally:
        sandbox_down(root)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
