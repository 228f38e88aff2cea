"""Bringing a sandbox up: checks on the root and the login user, then the whole up.

Validates the parameters and the root directory, serialises operations on one
sandbox with a lock file, makes sure the login user exists and can reach the
root (as root), and runs `_up`: files, state, client files, sshds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

from hpcbatch.sandbox.files import _make_files, _run, _write_client_files
from hpcbatch.sandbox.model import (
    SANDBOX_USER,
    Sandbox,
    SandboxError,
    SandboxHost,
    _layout,
    _new_sandbox,
    _Params,
)
from hpcbatch.sandbox.processes import _pick_port, _running_pid, _start
from hpcbatch.sandbox.state import _read_state, _sandbox_from_state, _state_params, _write_state
from hpcbatch.sandbox.users import ensure_users
from hpcbatch.transport.agent import cgroups


def _check_params(p: _Params) -> None:
    if p.hosts < 1:
        raise SandboxError(f"a sandbox needs at least one host, not {p.hosts}")
    if not 0 <= p.gpu_hosts <= p.hosts:
        raise SandboxError(f"gpu_hosts must be between 0 and {p.hosts}, not {p.gpu_hosts}")
    if p.gpu_hosts and p.gpus_per_host < 1:
        raise SandboxError(f"gpus_per_host must be at least 1, not {p.gpus_per_host}")
    if p.base_address < 1 or p.base_address + p.hosts - 1 > 254:
        raise SandboxError(
            f"addresses 127.0.0.{p.base_address}..{p.base_address + p.hosts - 1} "
            "are not all usable loopback host addresses (1..254)"
        )


def _prepare_root(root: Path) -> Path:
    root = Path(root).expanduser().absolute()
    bad = [c for c in " \t\n\"'#%\\" if c in str(root)]
    if bad:
        raise SandboxError(
            f"sandbox root {root} contains {bad[0]!r}; sshd and ssh config files "
            "cannot quote it reliably: choose a plainer path"
        )
    missing = [d for d in [root, *root.parents] if not d.exists()]
    for directory in reversed(missing):  # whatever the umask: as root, others must enter
        directory.mkdir(exist_ok=True)
        directory.chmod(0o755)
    st = root.stat()
    if st.st_uid != os.geteuid():
        raise SandboxError(f"sandbox root {root} is owned by uid {st.st_uid}, not by you")
    if os.geteuid() == 0 and stat.S_IMODE(st.st_mode) & 0o055 != 0o055:
        # The login user reads authorized_keys and works under root.
        root.chmod(stat.S_IMODE(st.st_mode) | 0o755)
    return root


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise up/down/start/stop on one sandbox (between processes too)."""
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _up(root: Path, params: _Params) -> Sandbox:
    user = _login_user()
    if os.geteuid() == 0:
        _check_traversable(root, user)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privsep directory
    state = _read_state(root)
    old: dict[str, SandboxHost] = {}
    if state is not None:
        existing = _sandbox_from_state(root, state)
        old = {h.name: h for h in existing.hosts}
        if _state_params(state) != params or existing.user != user:
            running = [h.name for h in existing.hosts if h.pid is not None]
            if running:
                raise SandboxError(
                    f"a sandbox of another shape is up at {root} ({len(existing.hosts)} "
                    f"hosts, user {existing.user}; running: {', '.join(running)}): "
                    "bring it down first"
                )
    if params.users:
        ensure_users(list(params.users))
    sb = _new_sandbox(root, user, _layout(root, params), params.users)
    for host in sb.hosts:
        prev = old.get(host.name)
        if prev is not None and prev.address == host.address:
            host.pid = _running_pid(host)
            host.port = prev.port
        if host.pid is None:
            host.port = _pick_port(host.address, host.port or None)
    _make_files(sb)
    _write_state(sb, params)
    _write_client_files(sb)
    ports = [h.port for h in sb.hosts]
    for host in sb.hosts:
        if host.pid is None:
            _start(sb, host)
    if ports != [h.port for h in sb.hosts]:  # a port was taken meanwhile: re-picked
        _write_state(sb, params)
        _write_client_files(sb)
    return sb


def _login_user() -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()).pw_name
    try:
        pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        _run(["useradd", "-m", "-s", "/bin/sh", SANDBOX_USER])
        _run(["usermod", "-p", "*", SANDBOX_USER])
    else:
        if _password_locked(SANDBOX_USER):
            # sshd without PAM refuses even key logins to a '!'-locked account.
            _run(["usermod", "-p", "*", SANDBOX_USER])
    _delegate_cgroups(SANDBOX_USER)
    return SANDBOX_USER


def _delegate_cgroups(user: str) -> None:
    """As an operator would (docs/accounting.md): give the login user, whose agents run
    the jobs, a cgroup subtree per controller, so per-job limits hold. Where the kernel
    refuses (a container without cgroup access) jobs run unconfined and the hosts'
    facts say `limits: not enforced`."""
    entry = pwd.getpwnam(user)
    with contextlib.suppress(OSError):
        cgroups.delegate(entry.pw_uid, entry.pw_gid)


def _password_locked(user: str) -> bool:
    try:
        with open("/etc/shadow") as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == user and len(fields) > 1:
                    return fields[1].startswith("!")
    except OSError:
        pass
    return False


def _check_traversable(root: Path, user: str) -> None:
    """Raise unless `user` can reach `root` (sshd reads authorized_keys as that user)."""
    pw = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, pw.pw_gid))
    for directory in [root, *root.parents]:
        st = directory.stat()
        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise SandboxError(
                f"the sandbox's login user {user!r} cannot enter {directory} "
                f"(mode {stat.S_IMODE(st.st_mode):04o}), so it cannot reach {root}: "
                f"choose a root that user can reach, or `chmod o+x {directory}`"
            )
