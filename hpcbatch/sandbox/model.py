"""The sandbox's data model: its hosts, its layout, and the fixed constants.

Every phase (files, state, processes, bringing up) works on these objects, so
they live apart from all of them and import nothing else of the package.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

SANDBOX_USER = "hpcbatch"
"""The login user when the sandbox is brought up as root."""

ROOT_MARK = "HPCBATCH_SANDBOX_ROOT"
"""`ROOT_MARK=<sandbox root>` is in the environment of every session of a sandbox
host (sshd's SetEnv), and so of what they start: the agent, its detached
shepherds, the jobs. `sandbox down` finds by it what the hosts started, even
what has left the sshd's process tree."""

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
    # Real local users jobs may run as (`up --users`): the hosts then also take root
    # logins, and `users_inventory` runs jobs as their submitter.
    users: tuple[str, ...] = ()

    @property
    def users_inventory(self) -> Path:
        """The inventory whose hosts run jobs as their submitter (agent logged in as root)."""
        return self.root / "inventory-users.toml"

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
    users: tuple[str, ...] = ()


def _new_sandbox(
    root: Path, user: str, hosts: list[SandboxHost], users: tuple[str, ...] = ()
) -> Sandbox:
    return Sandbox(
        root=root,
        user=user,
        users=users,
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
