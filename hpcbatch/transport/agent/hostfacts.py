"""What a host is, as the agent's `hello` reports it: CPUs, memory, GPUs
(nvidia-smi), InfiniBand/EFA devices, container runtimes, Python and kernel.

Apart from procs.py because only the agent asks (once per hello), while procs is
imported by every shepherd and job process the forker starts. Standard library
only: it is uploaded to hosts with the rest of the agent.
"""

from __future__ import annotations

import os
import platform
import pwd
import shutil
import socket
import subprocess
from typing import Any

from hpcbatch.transport.agent.containers import RUNTIMES, probe_runtimes

NVIDIA_SMI_ARGS = ("--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader")


def nvidia_smi() -> tuple[str | None, str | None]:
    """(output, error) of nvidia-smi's GPU query; (None, None) when it is not installed."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        proc = subprocess.run(
            [exe, *NVIDIA_SMI_ARGS], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return None, "nvidia-smi timed out after 10 s"
    except OSError as exc:
        return None, f"cannot run nvidia-smi: {exc}"
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip() or out.strip()
        return None, f"nvidia-smi exited with {proc.returncode}: {err[:2000]}"
    return out, None


def host_facts() -> dict[str, Any]:
    ib_dir = "/sys/class/infiniband"
    try:
        ib = sorted(os.listdir(ib_dir))
    except OSError:
        ib = []
    drivers = {d: os.path.realpath(f"{ib_dir}/{d}/device/driver") for d in ib}
    efa = [d for d in ib if "efa" in os.path.basename(drivers[d])]
    memory_mb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_mb = int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = os.environ.get("USER", str(os.getuid()))
    smi, smi_error = nvidia_smi()
    runtimes, versions, unusable = probe_runtimes(
        {n: p for n in RUNTIMES for p in [shutil.which(n)] if p}
    )
    getaffinity = getattr(os, "sched_getaffinity", None)
    return {
        "hostname": socket.gethostname(),
        "cpus": len(getaffinity(0)) if getaffinity else os.cpu_count(),
        "memory_mb": memory_mb,
        "nvidia_smi": smi,
        "nvidia_smi_error": smi_error,
        "infiniband": ib,
        "efa": efa,
        "dev_infiniband": os.path.isdir("/dev/infiniband"),
        "runtimes": runtimes,
        "runtime_versions": versions,
        "runtimes_unusable": unusable,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "user": user,
        "home": os.path.expanduser("~"),
    }
