"""A job's GPUs on its host: the device cgroup that hides the others, and their use.

Why it exists: `CUDA_VISIBLE_DEVICES` only asks CUDA to show a job its GPUs;
a job can still open the others' `/dev/nvidiaN`. Where the host allows it (a root
agent: the kernel wants CAP_SYS_ADMIN), the attempt's cgroup denies every GPU
device but the job's own: cgroup v1 through its devices controller
(`deny_rules`), cgroup v2, which has no devices file, through a BPF device
program attached to the group (devbpf.py).

What the job's GPUs did is sampled from `nvidia-smi` on the agent's heartbeat
(`GpuSampler`), only on hosts that have it, without blocking the agent: the
query runs as a child whose output the agent's selector reads. At the attempt's
end its mean utilisation and peak memory fill the usage record's `gpu_util` and
`gpu_mem_peak_bytes`. GPU device N is `/dev/nvidiaN`, the GPU `nvidia-smi`
numbers N (the order both use on a host whose GPUs were not renumbered).

Standard library only (uploaded to hosts).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import stat
import subprocess
from typing import Any

QUERY = ("--query-gpu=index,utilization.gpu,memory.used", "--format=csv,noheader,nounits")
MIB = 1024 * 1024
_DEVICE = re.compile(r"nvidia([0-9]+)")


def gpu_devices(dev: str = "/dev") -> dict[int, tuple[int, int]]:
    """The host's GPU device files: GPU index -> (major, minor) of `/dev/nvidiaN`."""
    out: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(dev):
            m = _DEVICE.fullmatch(name)
            if m is None:
                continue
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(dev, name))
                if stat.S_ISCHR(st.st_mode):
                    out[int(m.group(1))] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return out


def denied(devices: dict[int, tuple[int, int]], assigned: Any) -> list[tuple[int, int]]:
    """The (major, minor) of every GPU not in `assigned` (the launch's `limits.gpus`);
    none when the launch does not say (an older controller)."""
    if assigned is None:
        return []
    if not isinstance(assigned, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) for g in assigned
    ):
        raise ValueError(f"limits.gpus must be a list of GPU indexes, got {assigned!r}")
    return [numbers for index, numbers in sorted(devices.items()) if index not in assigned]


def deny_rules(devices: dict[int, tuple[int, int]], assigned: Any) -> list[str]:
    """cgroup v1's `devices.deny` lines hiding every GPU not in `assigned`."""
    return [f"c {major}:{minor} rwm" for major, minor in denied(devices, assigned)]


def parse_query(text: str) -> dict[int, tuple[float | None, int | None]]:
    """`nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,
    nounits` -> GPU index -> (utilisation %, memory used in bytes). A figure the GPU does
    not report (`[N/A]`, `[Not Supported]`) is None; a line of another shape (an error
    message) is skipped."""
    out: dict[int, tuple[float | None, int | None]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0].isdigit():
            continue
        util, mem = _number(parts[1]), _number(parts[2])
        out[int(parts[0])] = (util, None if mem is None else int(mem * MIB))
    return out


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class GpuUse:
    """One attempt's GPUs and what was seen of them so far."""

    __slots__ = ("gpus", "mem_peak", "now", "samples", "util_sum")

    def __init__(self, gpus: list[int]) -> None:
        self.gpus = gpus
        self.samples = 0
        self.util_sum = 0.0
        self.mem_peak: int | None = None
        self.now: dict[str, float] = {}  # the last sample: live usage on the heartbeat

    def note(self, seen: dict[int, tuple[float | None, int | None]]) -> None:
        utils = [seen[g][0] for g in self.gpus if g in seen and seen[g][0] is not None]
        mems = [seen[g][1] for g in self.gpus if g in seen and seen[g][1] is not None]
        self.now = {}
        if utils:
            self.samples += 1
            mean = sum(u for u in utils if u is not None) / len(utils)
            self.util_sum += mean
            self.now["gpu_util"] = round(mean, 1)
        if mems:
            total = sum(m for m in mems if m is not None)
            self.mem_peak = max(self.mem_peak or 0, total)
            self.now["gpu_mem_bytes"] = float(total)

    def usage(self) -> dict[str, Any]:
        """The usage record's GPU fields: mean utilisation (%), peak memory (bytes)."""
        out: dict[str, Any] = {}
        if self.samples:
            out["gpu_util"] = round(self.util_sum / self.samples, 1)
        if self.mem_peak is not None:
            out["gpu_mem_peak_bytes"] = self.mem_peak
        return out


class GpuSampler:
    """Samples the running attempts' GPUs with one `nvidia-smi` query per heartbeat."""

    def __init__(self, sel: selectors.BaseSelector, smi: str | None = None) -> None:
        self.sel = sel
        self.smi = smi if smi is not None else shutil.which("nvidia-smi")
        self.jobs: dict[str, GpuUse] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = b""

    def track(self, attempt: str, limits: Any) -> None:
        """A launched attempt: sample its GPUs (`limits.gpus`) if it has any."""
        gpus = limits.get("gpus") if isinstance(limits, dict) else None
        if self.smi and isinstance(gpus, list) and gpus:
            self.jobs[attempt] = GpuUse([g for g in gpus if isinstance(g, int)])

    def live(self) -> dict[str, dict[str, float]]:
        """Each running attempt's GPUs as last sampled: mean utilisation (%) and memory in
        use (bytes), for the heartbeat's live usage (from the previous heartbeat's query)."""
        return {attempt: dict(use.now) for attempt, use in self.jobs.items() if use.now}

    def take(self, attempt: str) -> dict[str, Any]:
        """An ended attempt's GPU usage fields ({} if it had no GPUs or none were seen)."""
        use = self.jobs.pop(attempt, None)
        return use.usage() if use is not None else {}

    def poll(self) -> None:
        """Start a query if an attempt with GPUs runs and none is under way."""
        if not self.jobs or self.proc is not None or not self.smi:
            return
        try:
            self.proc = subprocess.Popen(
                [self.smi, *QUERY], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, close_fds=True,
            )  # fmt: skip
        except OSError:
            self.smi = None  # gone since the agent started: stop trying
            return
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.sel.register(self.proc.stdout.fileno(), selectors.EVENT_READ, self.on_output)

    def on_output(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        try:
            chunk = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if chunk:
            self.out += chunk if len(self.out) < 1 << 20 else b""
            return
        self.sel.unregister(proc.stdout.fileno())
        proc.stdout.close()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.proc, text, self.out = None, self.out.decode(errors="replace"), b""
        seen = parse_query(text)
        for use in self.jobs.values():
            use.note(seen)
