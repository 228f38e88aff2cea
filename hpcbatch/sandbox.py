"""A sandbox cluster: N real OpenSSH hosts on loopback addresses.

hpcbatch manages hosts it reaches over SSH, so the honest way to try it (and to
test it) is against real sshd processes, not mocks. This module starts one
`/usr/sbin/sshd` per sandbox host, each on its own loopback address
(`node1` = 127.0.0.2, `node2` = 127.0.0.3, ...) with its own host key and
configuration, and writes everything a client needs next to them: a client key,
a `known_hosts` (host-key checking stays on), an `ssh_config` with one alias per
host, and an hpcbatch inventory. All hosts share this machine's filesystem; what
tells them apart is the address, the host key, `HPCBATCH_SANDBOX_HOST` and a
per-host directory first on `PATH` (which holds a fake `nvidia-smi` on the GPU
hosts).

As root the hosts log in a dedicated user, `hpcbatch` (created when missing);
as anyone else they log in the current user. See docs/sandbox.md.

Used by `make demo`, by `hpcbatch sandbox up|down|status`, and by the
integration tests (tests/integration/sandbox_fixture.py). Standard library
only, and Linux only (processes are found through /proc). Run
`python -m hpcbatch.sandbox up|down|status [--root DIR]` for a quick start.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SANDBOX_USER",
    "Sandbox",
    "SandboxError",
    "SandboxHost",
    "default_root",
    "gpu_uuid",
    "main",
    "missing_prerequisites",
    "sandbox_down",
    "sandbox_status",
    "sandbox_up",
    "start_host",
    "stop_host",
    "temporary_sandbox",
]

SANDBOX_USER = "hpcbatch"
"""The login user when the sandbox is brought up as root."""

SSHD = "/usr/sbin/sshd"
"""sshd must be started by absolute path: it re-executes itself per connection."""

KEX = "curve25519-sha256"
"""One key exchange on both sides: saves ~90 ms per connection over negotiation."""

GPU_NAME = "NVIDIA H100 80GB HBM3"
GPU_MEMORY_MIB = 81559
GPU_DRIVER = "550.54.15"
GPU_CUDA = "12.4"

STATE_FILE = "sandbox.json"
STATE_VERSION = 1
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_GPU_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://hpcbatch/sandbox/gpu")


class SandboxError(RuntimeError):
    """The sandbox cannot be brought up, or an operation on it failed."""


# --------------------------------------------------------------------------- the model


@dataclass
class SandboxHost:
    """One sandbox host. `pid` is its listening sshd, None when not running."""

    name: str
    address: str
    port: int
    work_dir: Path
    bin_dir: Path
    gpus: int
    fabric: str
    pid: int | None = None

    @property
    def dir(self) -> Path:
        """`<root>/hosts/<name>`: config, host key, pid file and log of this host."""
        return self.work_dir.parent

    @property
    def config_file(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.dir / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass
class Sandbox:
    """A sandbox cluster rooted at `root`, as found on disk."""

    root: Path
    user: str
    hosts: list[SandboxHost]
    client_key: Path
    known_hosts: Path
    ssh_config: Path
    inventory: Path

    def host(self, name: str) -> SandboxHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise SandboxError(f"sandbox {self.root} has no host {name!r}")

    def ssh_argv(self, name: str, *command: str) -> list[str]:
        """The OpenSSH client command line that runs `command` on host `name`."""
        return ["ssh", "-F", str(self.ssh_config), name, *command]


@dataclass(frozen=True)
class _Params:
    hosts: int
    gpu_hosts: int
    gpus_per_host: int
    base_address: int


def _new_sandbox(root: Path, user: str, hosts: list[SandboxHost]) -> Sandbox:
    return Sandbox(
        root=root,
        user=user,
        hosts=hosts,
        client_key=root / "client_key",
        known_hosts=root / "known_hosts",
        ssh_config=root / "ssh_config",
        inventory=root / "inventory.toml",
    )


def _make_host(
    root: Path, name: str, address: str, port: int, gpus: int, fabric: str
) -> SandboxHost:
    host_dir = root / "hosts" / name
    return SandboxHost(
        name=name,
        address=address,
        port=port,
        work_dir=host_dir / "work",
        bin_dir=host_dir / "bin",
        gpus=gpus,
        fabric=fabric,
    )


def _layout(root: Path, params: _Params) -> list[SandboxHost]:
    """Names, addresses, fabric islands and GPUs of every host (ports not yet chosen)."""
    n = params.hosts
    first_half = (n + 1) // 2
    hosts = []
    for i in range(1, n + 1):
        name = f"node{i}"
        address = f"127.0.0.{params.base_address + i - 1}"
        gpus = params.gpus_per_host if i > n - params.gpu_hosts else 0
        fabric = "island-a" if i <= first_half else "island-b"
        hosts.append(_make_host(root, name, address, 0, gpus, fabric))
    return hosts


def gpu_uuid(host: str, index: int) -> str:
    """The deterministic UUID the fake `nvidia-smi` of `host` reports for GPU `index`."""
    return "GPU-" + str(uuid.uuid5(_GPU_UUID_NAMESPACE, f"{host}/{index}"))


# --------------------------------------------------------------------------- public API


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
) -> Sandbox:
    """Bring the sandbox at `root` up and return it.

    Idempotent: when the sandbox already exists with the same shape it is
    returned as is, after restarting any host whose sshd is not running (on its
    old port when still free). A sandbox of another shape is rebuilt when none
    of its hosts is running; otherwise this raises (run `sandbox_down` first).
    """
    params = _Params(hosts, gpu_hosts, gpus_per_host, base_address)
    _check_params(params)
    missing = missing_prerequisites()
    if missing:
        raise SandboxError("cannot start a sandbox, missing: " + ", ".join(missing))
    root = _prepare_root(root)
    with _locked(root):
        return _up(root, params)


def sandbox_down(root: Path) -> None:
    """Stop every sshd of the sandbox at `root`, with its sessions; leave the files.

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
) -> Iterator[Sandbox]:
    """A sandbox in a fresh /tmp directory, brought down (and removed unless `keep`) on exit.

    The directory gets mode 0755: as root, the login user must reach it.
    """
    root = Path(tempfile.mkdtemp(prefix="hpcbatch-sbx-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield sandbox_up(root, hosts, gpu_hosts, gpus_per_host, base_address)
    finally:
        sandbox_down(root)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- bringing up


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
    sb = _new_sandbox(root, user, _layout(root, params))
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
    return SANDBOX_USER


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


def _make_files(sb: Sandbox) -> None:
    """Keys, directories, fake tools and sshd configs (keys are kept if present)."""
    as_root = os.geteuid() == 0
    pw = pwd.getpwnam(sb.user)
    if not sb.client_key.exists():
        _keygen(sb.client_key, "hpcbatch-sandbox-client")
    authorized = sb.root / "authorized_keys"
    _write(authorized, Path(f"{sb.client_key}.pub").read_text(), 0o644)
    hosts_dir = sb.root / "hosts"
    hosts_dir.mkdir(mode=0o755, exist_ok=True)
    hosts_dir.chmod(0o755)
    python = _python_for_hosts()
    for host in sb.hosts:
        host.dir.mkdir(mode=0o755, exist_ok=True)
        host.dir.chmod(0o755)
        for directory in (host.bin_dir, host.work_dir):
            directory.mkdir(mode=0o755, exist_ok=True)
            directory.chmod(0o755)  # whatever the umask: the login user needs them
        if as_root:
            os.chown(host.work_dir, pw.pw_uid, pw.pw_gid)
        if not host.host_key.exists():
            _keygen(host.host_key, f"hpcbatch-sandbox-{host.name}")
        smi = host.bin_dir / "nvidia-smi"
        if host.gpus:
            _write(smi, _nvidia_smi_script(host), 0o755)
        else:
            smi.unlink(missing_ok=True)
        link = host.bin_dir / "python3"
        if python is not None and not link.is_symlink():
            link.symlink_to(python)
        _write(host.config_file, _sshd_config(sb, host), 0o644)


def _python_for_hosts() -> str | None:
    """A `python3` to put on the hosts' PATH when the system has none (None: it has)."""
    if shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"):
        return None
    return os.path.realpath(sys.executable)


def _keygen(path: Path, comment: str) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _sshd_config(sb: Sandbox, host: SandboxHost) -> str:
    path = f"{host.bin_dir}:/usr/local/bin:/usr/bin:/bin"
    authorized = str(sb.root / "authorized_keys").replace("%", "%%")
    return f"""\
# sshd configuration of sandbox host {host.name}, generated by hpcbatch.sandbox
# (rewritten by every `sandbox up`: edits are lost).
ListenAddress {host.address}:{host.port}
HostKey {host.host_key}
PidFile {host.pid_file}
AuthorizedKeysFile {authorized}
AllowUsers {sb.user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
KexAlgorithms {KEX}
MaxSessions 100
MaxStartups 100:30:200
LoginGraceTime 30
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
PermitUserEnvironment no
Subsystem sftp internal-sftp
SetEnv HPCBATCH_SANDBOX_HOST={host.name} PATH={path}
"""


def _nvidia_smi_script(host: SandboxHost) -> str:
    """A /bin/sh stand-in for nvidia-smi: the queries hpcbatch makes, `-L`, a table."""
    n = host.gpus
    uuids = [gpu_uuid(host.name, i) for i in range(n)]
    per_gpu = "\n".join(
        f'    {i}:index) v="{i}" ;;\n'
        f'    {i}:uuid|{i}:gpu_uuid) v="{uuids[i]}" ;;\n'
        f'    {i}:pci.bus_id|{i}:gpu_bus_id) v="00000000:{0x18 + i:02X}:00.0" ;;'
        for i in range(n)
    )
    listing = "\n".join(f"GPU {i}: {GPU_NAME} (UUID: {uuids[i]})" for i in range(n))
    width = 78

    def row(text: str) -> str:
        return f"| {text:<{width - 4}} |"

    bar = "+" + "-" * (width - 2) + "+"
    table = "\n".join(
        [
            bar,
            row(f"NVIDIA-SMI {GPU_DRIVER}  Driver Version: {GPU_DRIVER}  CUDA Version: {GPU_CUDA}"),
            row("(a fake: hpcbatch sandbox host " + host.name + ")"),
            bar,
            row(f"{'GPU':>3}  {'Name':<24}  {'Memory-Usage':>20}  {'GPU-Util':>8}"),
            bar,
            *(
                row(f"{i:>3}  {GPU_NAME:<24}  {f'0MiB / {GPU_MEMORY_MIB}MiB':>20}  {'0%':>8}")
                for i in range(n)
            ),
            bar,
        ]
    )
    return f"""\
#!/bin/sh
# Fake nvidia-smi of sandbox host {host.name} ({n} x {GPU_NAME}), generated by
# hpcbatch.sandbox. There is no GPU here: it answers the queries hpcbatch makes.
set -u
query="" header=1 units=1 list=0
for arg in "$@"; do
  case "$arg" in
    --query-gpu=*) query="${{arg#--query-gpu=}}" ;;
    --format=*)
      case "$arg" in *noheader*) header=0 ;; esac
      case "$arg" in *nounits*) units=0 ;; esac ;;
    -L|--list-gpus) list=1 ;;
    *) echo "nvidia-smi (hpcbatch sandbox fake): unsupported argument: $arg" >&2; exit 2 ;;
  esac
done

value() {{  # value GPU FIELD: sets v (value) and u (unit), or fails for an unknown field
  u=""
  case "$1:$2" in
{per_gpu}
    *:name|*:gpu_name) v="{GPU_NAME}" ;;
    *:memory.total) v="{GPU_MEMORY_MIB}" u="MiB" ;;
    *:memory.used) v="0" u="MiB" ;;
    *:memory.free) v="{GPU_MEMORY_MIB}" u="MiB" ;;
    *:utilization.gpu|*:utilization.memory) v="0" u="%" ;;
    *:count) v="{n}" ;;
    *:driver_version) v="{GPU_DRIVER}" ;;
    *) return 1 ;;
  esac
}}

if [ -n "$query" ]; then
  fields=$(printf '%s' "$query" | tr ',' ' ')
  line=""
  for f in $fields; do
    value 0 "$f" || {{ echo "Field \\"$f\\" is not a valid field to query." >&2; exit 2; }}
    line="${{line:+$line, }}$f${{u:+ [$u]}}"
  done
  if [ "$header" = 1 ]; then echo "$line"; fi
  i=0
  while [ "$i" -lt {n} ]; do
    line=""
    for f in $fields; do
      value "$i" "$f"
      if [ "$units" = 1 ] && [ -n "$u" ]; then v="$v $u"; fi
      line="${{line:+$line, }}$v"
    done
    echo "$line"
    i=$((i + 1))
  done
elif [ "$list" = 1 ]; then
  cat <<'EOF'
{listing}
EOF
else
  cat <<'EOF'
{table}
EOF
fi
"""


def _write(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically with `mode` (unchanged content: left alone)."""
    with contextlib.suppress(OSError):
        if path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == mode:
            return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _run(argv: list[str]) -> None:
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise SandboxError(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )


# --------------------------------------------------------------------------- client files


def _write_client_files(sb: Sandbox) -> None:
    _write(sb.known_hosts, _known_hosts(sb), 0o644)
    _write(sb.ssh_config, _ssh_config(sb), 0o644)
    _write(sb.inventory, _inventory(sb), 0o644)


def _known_hosts(sb: Sandbox) -> str:
    lines = [f"# Host keys of the hpcbatch sandbox at {sb.root} (generated)."]
    for host in sb.hosts:
        key = " ".join(Path(f"{host.host_key}.pub").read_text().split()[:2])
        if host.port == 22:
            patterns = f"{host.address},{host.name}"
        else:
            patterns = f"[{host.address}]:{host.port},[{host.name}]:{host.port}"
        lines.append(f"{patterns} {key}")
    return "\n".join(lines) + "\n"


def _ssh_config(sb: Sandbox) -> str:
    out = [
        f"# SSH client configuration of the hpcbatch sandbox at {sb.root} (generated).",
        f"# Use: ssh -F {sb.ssh_config} node1",
    ]
    for host in sb.hosts:
        out += [
            "",
            f"Host {host.name}",
            f"    HostName {host.address}",
            f"    Port {host.port}",
            f"    User {sb.user}",
            f"    IdentityFile {sb.client_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {sb.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            f"    KexAlgorithms {KEX}",
            "    BatchMode yes",
            "    LogLevel ERROR",
        ]
    return "\n".join(out) + "\n"


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _inventory(sb: Sandbox) -> str:
    n = len(sb.hosts)
    out = [
        f"# hpcbatch inventory of the sandbox at {sb.root}.",
        "# Generated by hpcbatch.sandbox (`hpcbatch sandbox up`): rewritten on every up.",
        "",
        'default_queue = "batch"',
        "",
        "[defaults]",
        f"user = {_toml(sb.user)}",
        f"identity = {_toml(str(sb.client_key))}",
        f"known_hosts = {_toml(str(sb.known_hosts))}",
    ]
    for host in sb.hosts:
        labels = 'sandbox = "yes", gpu = "yes"' if host.gpus else 'sandbox = "yes"'
        out += [
            "",
            "[[hosts]]",
            f"name = {_toml(host.name)}",
            f"address = {_toml(host.address)}",
            f"port = {host.port}",
            f"work_dir = {_toml(str(host.work_dir))}",
            f"fabric = {_toml(host.fabric)}",
            f"labels = {{ {labels} }}",
        ]
        if host.gpus:
            out.append(f"gpus = {host.gpus}")
    hostlist = "node1" if n == 1 else f"node[1-{n}]"
    out += [
        "",
        "[[compute_environments]]",
        'name = "cpu"',
        f"hosts = [{_toml(hostlist)}]",
    ]
    if any(h.gpus for h in sb.hosts):
        out += ["", "[[compute_environments]]", 'name = "gpu"', 'selector = { gpu = "yes" }']
    out += [
        "",
        "[[queues]]",
        'name = "batch"',
        "priority = 10",
        'compute_environments = ["cpu"]',
    ]
    if any(h.gpus for h in sb.hosts):
        out += [
            "",
            "[[queues]]",
            'name = "gpu"',
            "priority = 20",
            'compute_environments = ["gpu"]',
        ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- state file


def _write_state(sb: Sandbox, params: _Params) -> None:
    state = {
        "version": STATE_VERSION,
        "user": sb.user,
        "params": {
            "hosts": params.hosts,
            "gpu_hosts": params.gpu_hosts,
            "gpus_per_host": params.gpus_per_host,
            "base_address": params.base_address,
        },
        "hosts": [
            {
                "name": h.name,
                "address": h.address,
                "port": h.port,
                "gpus": h.gpus,
                "fabric": h.fabric,
            }
            for h in sb.hosts
        ],
    }
    _write(sb.root / STATE_FILE, json.dumps(state, indent=2) + "\n", 0o644)


def _read_state(root: Path) -> dict[str, object] | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SandboxError(f"unreadable sandbox state {root / STATE_FILE}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SandboxError(f"{root / STATE_FILE} is not a sandbox state this version reads")
    return state


def _state_params(state: dict[str, object]) -> _Params:
    p = state["params"]
    assert isinstance(p, dict)
    return _Params(
        int(p["hosts"]), int(p["gpu_hosts"]), int(p["gpus_per_host"]), int(p["base_address"])
    )


def _read_params(root: Path) -> _Params:
    state = _read_state(root)
    if state is None:
        raise SandboxError(f"no sandbox at {root}")
    return _state_params(state)


def _hosts_from_state(root: Path, state: dict[str, object]) -> list[SandboxHost]:
    entries = state["hosts"]
    assert isinstance(entries, list)
    return [
        _make_host(
            root,
            str(e["name"]),
            str(e["address"]),
            int(e["port"]),
            int(e["gpus"]),
            str(e["fabric"]),
        )
        for e in entries
    ]


def _sandbox_from_state(root: Path, state: dict[str, object]) -> Sandbox:
    hosts = _hosts_from_state(root, state)
    for host in hosts:
        host.pid = _running_pid(host)
    return _new_sandbox(root, str(state["user"]), hosts)


# --------------------------------------------------------------------------- processes


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


def _kill_trees(roots: set[int]) -> None:
    """SIGKILL `roots` and all their descendants, frozen first so none escapes by forking."""
    spared = {os.getpid(), 1}
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


# --------------------------------------------------------------------------- command line


def _describe(sb: Sandbox) -> str:
    lines = [f"sandbox {sb.root} (login user {sb.user}), {len(sb.hosts)} hosts:"]
    for h in sb.hosts:
        state = f"up (pid {h.pid})" if h.pid is not None else "down"
        gpus = f"  {h.gpus} GPUs" if h.gpus else ""
        lines.append(
            f"  {h.name:<8} {h.address + ':' + str(h.port):<22} {state:<16} {h.fabric}{gpus}"
        )
    lines += [
        f"ssh:       ssh -F {sb.ssh_config} {sb.hosts[0].name}",
        f"inventory: {sb.inventory}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m hpcbatch.sandbox up|down|status [--root DIR] [--hosts N] ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m hpcbatch.sandbox",
        description="A sandbox cluster of real sshd hosts on loopback addresses.",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--root", type=Path, default=None, help=f"sandbox directory (default: {default_root()})"
    )
    parser.add_argument("--hosts", type=int, default=4, help="number of hosts (up)")
    parser.add_argument("--gpu-hosts", type=int, default=1, help="hosts with fake GPUs (up)")
    parser.add_argument("--gpus-per-host", type=int, default=2, help="fake GPUs per GPU host")
    parser.add_argument(
        "--base-address", type=int, default=2, help="node1 listens on 127.0.0.BASE (up)"
    )
    args = parser.parse_args(argv)
    root: Path = args.root if args.root is not None else default_root()
    try:
        if args.action == "up":
            sb = sandbox_up(root, args.hosts, args.gpu_hosts, args.gpus_per_host, args.base_address)
            print(_describe(sb))
        elif args.action == "down":
            sandbox_down(root)
            print(f"sandbox {root}: down")
        else:
            status = sandbox_status(root)
            if status is None:
                print(f"no sandbox at {root}")
                return 1
            print(_describe(status))
            return 0 if all(h.pid is not None for h in status.hosts) else 3
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
