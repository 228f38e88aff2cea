"""Per-attempt control groups: the limits a job asked for, and what it used.

Why it exists: the scheduler packs several jobs on a host by their `--mem` and
`-c`; only the kernel can hold a job to them. Each attempt gets a cgroup of its
own under a subtree the operator delegated to the agent's account:

    cgroup v1:  /sys/fs/cgroup/{memory,cpu,cpuacct,cpuset}/hpcbatch/<tag>/<attempt>
    cgroup v2:  /sys/fs/cgroup/hpcbatch/<tag>/<attempt>

`<tag>` names this agent's work directory (several clusters, or sandboxes, may
share a host). Memory is limited by memory.limit_in_bytes (v1) or memory.max
(v2), CPU by a CFS quota of the allocated CPUs (cpu.cfs_quota_us, cpu.max) and,
where the controller pinned cores, a cpuset of them (cpuset.cpus). The job's
process joins its cgroup in the forked child before exec (`enter`), so
everything it starts is inside.
At the end `usage` reads what it used (CPU time, peak memory) and whether the
kernel's OOM killer struck (v1 memory.oom_control `oom_kill`, or failcnt with a
SIGKILL; v2 memory.events `oom_kill`): the shepherd, into the exit record.
`remove` kills what is left and removes the group: the agent, once it has
sent the exit event (off the exit's path). Where nothing is delegated the job
runs unconfined and `probe` says why: the host's facts carry it (`limits: not
enforced`).

Both versions take the same path: a `Layout` is a list of (controller, dir)
pairs and the file names differ. Standard library only (uploaded to hosts).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from typing import Any

from hpcbatch.transport.agent import devbpf
from hpcbatch.transport.agent.gpus import denied, deny_rules, gpu_devices

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset")
V2_CONTROLLERS = ("memory", "cpu", "cpuset")
DELEGATED = "hpcbatch"
CFS_PERIOD_US = 100_000
SPARE = "spare-"  # a group made ahead of the launch that takes it (prepare)


class Layout:
    """Where this agent may make cgroups: one base dir per v1 controller, or one (v2)."""

    def __init__(
        self, version: int, bases: dict[str, str], why: str | None, v2_enabled: tuple[str, ...] = ()
    ) -> None:
        self.version = version  # 1, 2, or 0: none usable
        self.bases = bases  # controller -> this agent's dir (v2: "unified" -> dir)
        self.why = why  # why limits are not (fully) enforced, or None
        self.v2_enabled = v2_enabled  # v2: the controllers enabled for our groups
        self.gpus: dict[int, tuple[int, int]] = {}  # GPUs hidden from others: GPU -> numbers

    @property
    def enforced(self) -> bool:
        return self.version != 0 and "memory" in self.controllers

    @property
    def controllers(self) -> list[str]:
        if self.version == 2:
            return [c for c in V2_CONTROLLERS if c in self.v2_enabled]
        return sorted(self.bases)

    def facts(self) -> dict[str, Any]:
        """What `hello` reports as the host's `cgroups` fact."""
        return {
            "version": self.version,
            "enforced": self.enforced,
            "controllers": self.controllers,
            "base": next(iter(self.bases.values()), None),
            "why": self.why,
            "gpu_devices": bool(self.gpus),  # other GPUs denied (v1 devices, v2 BPF; root)
        }


def tag_of(root: str) -> str:
    return "a" + hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:12]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _ensure_dir(path: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)


def _inherit_cpuset(parent: str, child: str) -> None:
    """v1 cpuset: a new group has no CPUs or memory nodes until given its parent's.

    First, while it has no CPUs, it stops asking for a scheduling domain of its own
    (`cpuset.sched_load_balance` 0): with the flag on, every change of its CPUs (here,
    and the job's cores at launch) makes the kernel rebuild the scheduling domains of
    the whole host (rebuild_sched_domains, 2% of the CPU of a 150 jobs/s run in
    `perf`). A group under a balanced parent is balanced by the parent's domain
    whatever its own flag says (Documentation/admin-guide/cgroup-v1/cpusets.rst)."""
    with contextlib.suppress(OSError):
        _write(os.path.join(child, "cpuset.sched_load_balance"), "0")
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not (_read(os.path.join(child, name)) or "").strip():
            _write(os.path.join(child, name), (_read(os.path.join(parent, name)) or "").strip())


def probe(root: str, fs: str = "/sys/fs/cgroup", dev: str = "/dev") -> Layout:
    """What this agent may do with cgroups under `fs`: never raises."""
    tag = tag_of(root)
    try:
        if os.path.exists(os.path.join(fs, "cgroup.controllers")):
            layout = _probe_v2(fs, tag)
            _probe_device_program(layout, dev)
            return layout
        if os.path.exists(os.path.join(fs, "memory", "memory.limit_in_bytes")):
            layout = _probe_v1(fs, tag)
            _probe_devices(layout, fs, tag, dev)
            return layout
    except OSError as exc:
        return Layout(0, {}, f"cannot set up the delegated cgroup: {exc}")
    return Layout(0, {}, f"no cgroup v1 memory controller or cgroup v2 hierarchy at {fs}")


def _probe_v1(fs: str, tag: str) -> Layout:
    bases: dict[str, str] = {}
    missing: list[str] = []
    for ctrl in V1_CONTROLLERS:
        top = os.path.join(fs, ctrl)
        mine = os.path.join(top, DELEGATED)
        try:
            if not os.path.isdir(mine) and os.access(top, os.W_OK):
                _ensure_dir(mine)  # as root: delegate to ourselves
            if not os.access(mine, os.W_OK):
                missing.append(f"{ctrl} ({mine} is not writable by uid {os.getuid()})")
                continue
            if ctrl == "cpuset":  # the operator may have set it (and kept it root's)
                with contextlib.suppress(OSError):
                    _inherit_cpuset(top, mine)
            bases[ctrl] = os.path.join(mine, tag)  # made by the first `create`
        except OSError as exc:
            missing.append(f"{ctrl} ({exc})")
    why = f"not delegated: {', '.join(missing)}" if missing else None
    if "memory" not in bases:
        return Layout(0, {}, why)
    return Layout(1, bases, why)


def _probe_devices(layout: Layout, fs: str, tag: str, dev: str) -> None:
    """v1 devices: on a host with GPU device files, as root (writing devices.deny takes
    CAP_SYS_ADMIN, which a delegated subtree does not give), hide the others' GPUs."""
    top = os.path.join(fs, "devices")
    gpus = gpu_devices(dev)
    if not layout.enforced or not gpus or os.geteuid() != 0 or not os.path.isdir(top):
        return
    with contextlib.suppress(OSError):
        _ensure_dir(os.path.join(top, DELEGATED))
        layout.bases["devices"] = os.path.join(top, DELEGATED, tag)
        layout.gpus = gpus


def _probe_device_program(layout: Layout, dev: str) -> None:
    """v2: on a host with GPU device files, as root, where the kernel takes a BPF device
    program (devbpf), hide the others' GPUs from each job."""
    gpus = gpu_devices(dev)
    if not layout.enforced or not gpus or os.geteuid() != 0:
        return
    why = devbpf.usable()
    if why is None:
        layout.gpus = gpus
    else:
        layout.why = "; ".join(w for w in (layout.why, f"GPUs not hidden: {why}") if w)


def _probe_v2(fs: str, tag: str) -> Layout:
    mine = os.path.join(fs, DELEGATED)
    if not os.path.isdir(mine) and os.access(fs, os.W_OK):
        _ensure_dir(mine)
    if not os.access(mine, os.W_OK):
        return Layout(0, {}, f"not delegated: {mine} is not writable by uid {os.getuid()}")
    base = os.path.join(mine, tag)
    _ensure_dir(base)
    enabled: list[str] = []
    # Each level passes the controllers down: the delegated dir's parent (done by
    # the operator, or here as root), the delegated dir, and our tag dir.
    for level in (fs, mine, base):
        have = (_read(os.path.join(level, "cgroup.controllers")) or "").split()
        want = [c for c in V2_CONTROLLERS if c in have]
        with contextlib.suppress(OSError):
            _write(os.path.join(level, "cgroup.subtree_control"), " ".join("+" + c for c in want))
        now = [
            c.lstrip("+")
            for c in (_read(os.path.join(level, "cgroup.subtree_control")) or "").split()
        ]
        enabled = [c for c in want if c in now]
    layout = Layout(2, {"unified": base}, None, tuple(enabled))
    if "memory" not in enabled:
        layout.version = 0
        layout.why = f"the memory controller is not enabled for {base} (cgroup.subtree_control)"
    elif len(enabled) < len(V2_CONTROLLERS):
        absent = sorted(set(V2_CONTROLLERS) - set(enabled))
        layout.why = f"controllers not delegated: {', '.join(absent)}"
    return layout


def delegate(uid: int, gid: int, fs: str = "/sys/fs/cgroup") -> list[str]:
    """As root (the operator, or the sandbox): make `hpcbatch` under each controller and
    hand it to the agent's account. Returns what was delegated; raises OSError."""
    done: list[str] = []
    if os.path.exists(os.path.join(fs, "cgroup.controllers")):
        have = (_read(os.path.join(fs, "cgroup.controllers")) or "").split()
        want = " ".join("+" + c for c in V2_CONTROLLERS if c in have)
        _write(os.path.join(fs, "cgroup.subtree_control"), want)
        mine = os.path.join(fs, DELEGATED)
        _ensure_dir(mine)
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(mine, name) if name else mine, uid, gid)
        return [mine]
    for ctrl in V1_CONTROLLERS:
        top = os.path.join(fs, ctrl)
        if not os.path.isdir(top):
            continue
        mine = os.path.join(top, DELEGATED)
        _ensure_dir(mine)
        if ctrl == "cpuset":
            _inherit_cpuset(top, mine)
        for name in ("", "cgroup.procs", "tasks"):
            os.chown(os.path.join(mine, name) if name else mine, uid, gid)
        done.append(mine)
    return done


# --------------------------------------------------------------------------- one attempt


def prepare(layout: Layout, name: str) -> dict[str, str]:
    """Make empty groups `name` (one per v1 controller, a v1 cpuset given its parent's
    CPUs and memory nodes): a spare, made ahead so that a launch only renames it (mkdir
    of a memory cgroup can take milliseconds on a busy host)."""
    dirs: dict[str, str] = {}
    try:
        for ctrl, base in layout.bases.items():
            if layout.version == 1 and not os.path.isdir(base):
                _ensure_dir(base)
                if ctrl == "cpuset":
                    _inherit_cpuset(os.path.dirname(base), base)
            path = os.path.join(base, name)
            _ensure_dir(path)
            dirs[ctrl] = path
            if ctrl == "cpuset" and layout.version == 1:
                _inherit_cpuset(base, path)  # no CPUs until given some: nothing could join
    except OSError:
        remove({"version": layout.version, "dirs": dirs})
        raise
    return dirs


def clear_spares(layout: Layout) -> None:
    """Remove spare groups an earlier agent left (empty: nothing ran in them)."""
    for base in layout.bases.values():
        with contextlib.suppress(OSError):
            for name in os.listdir(base):
                if name.startswith(SPARE):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(base, name))


def create(
    layout: Layout, attempt: str, limits: dict[str, Any], spare: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """Make the attempt's cgroup with its limits (from `spare`, renamed, if given); the
    shepherd's `cgroup` spec, or None where this host enforces nothing.

    `limits`: `memory_bytes` (None: no limit), `cpus` (the CFS quota), `cores` (the
    core numbers the controller gave it, optional: a cpuset of `host_cpus(cores)`).
    Raises OSError if the kernel refuses, ValueError for bad core numbers.
    """
    if not layout.enforced:
        return None
    cpus = host_cpus(limits.get("cores"))
    dirs: dict[str, str] = {}
    try:
        if spare:
            for ctrl, path in spare.items():
                dirs[ctrl] = os.path.join(os.path.dirname(path), attempt)
                os.rename(path, dirs[ctrl])
        else:
            dirs = prepare(layout, attempt)
        if layout.version == 1:
            _limits_v1(dirs, limits, cpus, layout.gpus)
        else:
            _limits_v2(dirs["unified"], layout.controllers, limits, cpus)
            hidden = denied(layout.gpus, limits.get("gpus")) if layout.gpus else []
            if hidden:
                devbpf.restrict(dirs["unified"], hidden)
    except OSError:
        remove({"version": layout.version, "dirs": dirs})
        raise
    return {"version": layout.version, "dirs": dirs, "memory_bytes": limits.get("memory_bytes")}


def host_cpus(cores: Any) -> list[int]:
    """The host CPUs behind the controller's core numbers: core i is the i-th CPU this
    agent may use (its affinity; the same count it reported as the host's `cpus`), so
    the numbers match on a plain host and stay valid inside a cpuset or a container.
    Raises ValueError for anything but a list of core numbers."""
    if not cores:
        return []
    if not isinstance(cores, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cores
    ):
        raise ValueError(f"limits.cores must be a list of core numbers, got {cores!r}")
    mine = sorted(os.sched_getaffinity(0))
    out: list[int] = []
    for c in cores:
        cpu = mine[c % len(mine)]  # more cores declared than there are: they share
        if cpu not in out:
            out.append(cpu)
    return out


def cpu_list(cpus: list[int]) -> str:
    """`2,3` -> the kernel's list format (cpuset.cpus, Cpus_allowed_list): `2-3`."""
    runs: list[str] = []
    for cpu in sorted(cpus):
        if runs and runs[-1].split("-")[-1] == str(cpu - 1):
            runs[-1] = f"{runs[-1].split('-')[0]}-{cpu}"
        else:
            runs.append(str(cpu))
    return ",".join(runs)


def cpu_env(cpus: list[int]) -> dict[str, str]:
    """What a pinned job is told of its CPUs, as Slurm's task/affinity tells it."""
    if not cpus:
        return {}
    mask = hex(sum(1 << c for c in cpus))
    return {
        "HPCBATCH_CPUS": ",".join(str(c) for c in cpus),
        "SLURM_CPU_BIND": f"quiet,mask_cpu:{mask}",
        "SLURM_CPU_BIND_TYPE": "mask_cpu:",
        "SLURM_CPU_BIND_LIST": mask,
        "SLURM_CPU_BIND_VERBOSE": "quiet",
    }


def _limits_v1(
    dirs: dict[str, str], limits: dict[str, Any], cpus: list[int], gpus: dict[int, tuple[int, int]]
) -> None:
    mem = limits.get("memory_bytes")
    if mem:
        _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), str(int(mem)))
        memsw = os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # no escaping the limit into swap
            with contextlib.suppress(OSError):
                _write(memsw, str(int(mem)))
    quota = float(limits.get("cpus") or 0)
    pinned = bool(cpus) and "cpuset" in dirs and len(cpus) <= quota  # no more to hold
    if quota and "cpu" in dirs and not pinned:  # a new group's period is CFS_PERIOD_US
        _write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), str(int(quota * CFS_PERIOD_US)))
    if cpus and "cpuset" in dirs:
        _write(os.path.join(dirs["cpuset"], "cpuset.cpus"), cpu_list(cpus))
    if "devices" in dirs:
        for rule in deny_rules(gpus, limits.get("gpus")):  # the kernel takes one a write
            _write(os.path.join(dirs["devices"], "devices.deny"), rule)


def _limits_v2(path: str, controllers: list[str], limits: dict[str, Any], cpus: list[int]) -> None:
    mem = limits.get("memory_bytes")
    if mem:
        _write(os.path.join(path, "memory.max"), str(int(mem)))
        swap = os.path.join(path, "memory.swap.max")
        if os.path.exists(swap):
            with contextlib.suppress(OSError):
                _write(swap, "0")
    quota = float(limits.get("cpus") or 0)
    pinned = bool(cpus) and "cpuset" in controllers and len(cpus) <= quota
    if quota and "cpu" in controllers and not pinned:
        _write(os.path.join(path, "cpu.max"), f"{int(quota * CFS_PERIOD_US)} {CFS_PERIOD_US}")
    if cpus and "cpuset" in controllers:
        _write(os.path.join(path, "cpuset.cpus"), cpu_list(cpus))


def enter(cgroup: dict[str, Any] | None, cpus: list[int] | None = None) -> None:
    """In the job's child, before exec: move this process into the attempt's cgroup, and
    onto its pinned CPUs (where no cpuset holds it, the affinity alone does)."""
    if cgroup:
        pid = str(os.getpid())
        for path in cgroup["dirs"].values():
            _write(os.path.join(path, "cgroup.procs"), pid)
    if cpus:
        os.sched_setaffinity(0, cpus)


def own_procs(dirs: list[str]) -> list[int]:
    """This process's own groups' cgroup.procs, opened for writing, in the hierarchies
    of `dirs` (groups of ours, under `<mount>/hpcbatch/<tag>`): where a shepherd goes
    back to after a job it started from inside the job's groups. Raises OSError."""
    with open("/proc/self/cgroup") as f:
        mine = [line.rstrip("\n").split(":", 2) for line in f]
    fds: list[int] = []
    try:
        for d in dirs:
            at = d.find(os.sep + DELEGATED + os.sep)
            mount = d[:at]  # v1: the controller's mount (its name); v2: the hierarchy's
            name = os.path.basename(mount)
            path = next((p for _, c, p in mine if name in c.split(",")), None)
            if path is None and os.path.exists(os.path.join(mount, "cgroup.controllers")):
                path = next((p for _, c, p in mine if not c), None)
            if at < 0 or path is None:
                raise OSError(f"cannot tell this process's own group for {d}")
            fds.append(os.open(mount + path.rstrip("/") + "/cgroup.procs", os.O_WRONLY))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def usage(cgroup: dict[str, Any]) -> dict[str, Any]:
    """CPU time (s), peak memory (bytes) and whether the OOM killer struck, so far."""
    dirs: dict[str, str] = cgroup["dirs"]
    out: dict[str, Any] = {}
    if cgroup["version"] == 1:
        acct = dirs.get("cpuacct")
        if acct:
            # cpuacct.usage is the scheduler's exact runtime; the user/system split
            # (usage_user/usage_sys, stat) is sampled at ticks, which a busy host skews:
            # keep the exact total, split in the sampled proportion.
            total = _int(_read(os.path.join(acct, "cpuacct.usage")))
            user = _int(_read(os.path.join(acct, "cpuacct.usage_user")))
            system = _int(_read(os.path.join(acct, "cpuacct.usage_sys")))
            if total is not None and user is not None and system is not None:
                share = user / (user + system) if user + system else 1.0
                out["cpu_user_s"] = total * share / 1e9
                out["cpu_sys_s"] = total * (1 - share) / 1e9
        mem = dirs["memory"]
        out["mem_peak_bytes"] = _int(_read(os.path.join(mem, "memory.max_usage_in_bytes")))
        out["mem_bytes"] = _int(_read(os.path.join(mem, "memory.usage_in_bytes")))
        out["oom_kills"] = _keyed(_read(os.path.join(mem, "memory.oom_control")), "oom_kill")
        out["failcnt"] = _int(_read(os.path.join(mem, "memory.failcnt")))
    else:
        path = dirs["unified"]
        stat = _read(os.path.join(path, "cpu.stat"))
        user_us, system_us = _keyed(stat, "user_usec"), _keyed(stat, "system_usec")
        if user_us is not None and system_us is not None:
            out["cpu_user_s"] = user_us / 1e6
            out["cpu_sys_s"] = system_us / 1e6
        out["mem_peak_bytes"] = _int(_read(os.path.join(path, "memory.peak")))
        out["mem_bytes"] = _int(_read(os.path.join(path, "memory.current")))
        out["oom_kills"] = _keyed(_read(os.path.join(path, "memory.events")), "oom_kill")
    return out


def sample(cgroup: dict[str, Any]) -> dict[str, float] | None:
    """A running attempt's CPU seconds so far and memory now: two small reads, cheap
    enough for every heartbeat. None once the group is gone."""
    dirs: dict[str, str] = cgroup["dirs"]
    if cgroup["version"] == 1:
        cpu_ns = _int(_read(os.path.join(dirs.get("cpuacct", ""), "cpuacct.usage")))
        mem = _int(_read(os.path.join(dirs["memory"], "memory.usage_in_bytes")))
        cpu = None if cpu_ns is None else cpu_ns / 1e9
    else:
        usec = _keyed(_read(os.path.join(dirs["unified"], "cpu.stat")), "usage_usec")
        mem = _int(_read(os.path.join(dirs["unified"], "memory.current")))
        cpu = None if usec is None else usec / 1e6
    if cpu is None and mem is None:
        return None
    return {"cpu_s": cpu or 0.0, "mem_bytes": float(mem or 0)}


def leftover_usage(cg: Any) -> dict[str, Any]:
    """A lost attempt's usage (its shepherd died): what its cgroup saw; then remove it."""
    used: dict[str, Any] = {}
    if isinstance(cg, dict) and cg.get("dirs"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used = {**usage(cg), "source": "cgroup"}
            used.pop("oom_kills", None)
            used.pop("failcnt", None)
        remove(cg)
    return used


def oom_killed(seen: dict[str, Any], sig: int | None) -> bool:
    """Whether the memory limit ended the job: the kernel counted an OOM kill, or (older
    v1 kernels without `oom_kill`) the limit was hit and the job died of SIGKILL."""
    if seen.get("oom_kills"):
        return True
    return seen.get("oom_kills") is None and bool(seen.get("failcnt")) and sig == signal.SIGKILL


def remove(cgroup: dict[str, Any] | None, tries: int = 1) -> bool:
    """Kill whatever is left in the attempt's cgroup and remove it (best effort); whether
    it is gone. A killed process stays in the group until its parent reaps it (relayed
    commands are the agent's children), so one try does not wait: the agent tries
    again a while later."""
    if not cgroup:
        return True
    dirs: dict[str, str] = cgroup["dirs"]
    for path in dirs.values():
        for line in (_read(os.path.join(path, "cgroup.procs")) or "").split():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(line), signal.SIGKILL)
    gone = True
    for path in dirs.values():
        for n in range(tries):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                if n + 1 == tries:
                    gone = False
                else:
                    time.sleep(0.01)
    return gone


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def _keyed(text: str | None, key: str) -> int | None:
    """The value of `key` in a `key value` per line file (memory.events, cpu.stat)."""
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return _int(parts[1])
    return None
