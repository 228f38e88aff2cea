"""A sandbox cluster: N real OpenSSH hosts on loopback addresses.

hpcbatch manages hosts it reaches over SSH, so the honest way to try it (and to
test it) is against real sshd processes, not mocks. This package starts one
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

The package is split by phase: `model` (hosts, layout, constants), `files`
(keys, sshd configs, fake nvidia-smi, client files), `state` (sandbox.json),
`processes` (sshd, ports, process trees), `bringup` (checks and the whole up),
`api` (the public operations re-exported here) and `command` (the CLI).
"""

from __future__ import annotations

from hpcbatch.sandbox.api import (
    default_root,
    missing_prerequisites,
    sandbox_down,
    sandbox_processes,
    sandbox_status,
    sandbox_up,
    start_host,
    stop_host,
    temporary_sandbox,
)
from hpcbatch.sandbox.command import main
from hpcbatch.sandbox.model import GPU_CUDA as GPU_CUDA
from hpcbatch.sandbox.model import GPU_DRIVER as GPU_DRIVER
from hpcbatch.sandbox.model import GPU_MEMORY_MIB as GPU_MEMORY_MIB
from hpcbatch.sandbox.model import GPU_NAME as GPU_NAME
from hpcbatch.sandbox.model import KEX as KEX
from hpcbatch.sandbox.model import SANDBOX_USER, Sandbox, SandboxError, SandboxHost, gpu_uuid
from hpcbatch.sandbox.model import SSHD as SSHD
from hpcbatch.sandbox.model import START_TIMEOUT_S as START_TIMEOUT_S
from hpcbatch.sandbox.model import STATE_FILE as STATE_FILE
from hpcbatch.sandbox.model import STATE_VERSION as STATE_VERSION
from hpcbatch.sandbox.model import STOP_TIMEOUT_S as STOP_TIMEOUT_S

# Helpers the integration tests reach as `hpcbatch.sandbox._name`.
from hpcbatch.sandbox.processes import _accepts as _accepts
from hpcbatch.sandbox.processes import _alive as _alive
from hpcbatch.sandbox.processes import _socket_holders as _socket_holders

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
    "sandbox_processes",
    "sandbox_status",
    "sandbox_up",
    "start_host",
    "stop_host",
    "temporary_sandbox",
]
