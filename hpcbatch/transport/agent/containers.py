"""The container command of one attempt, built on the host: argv, environment, cleanup.

The controller decides *which* runtime runs a node's image (core/containers.py);
the agent builds *how*, because only the host knows the attempt directory, the
job's working directory, its own resource limits, the fast-link devices under
/dev/infiniband and the GPU device nodes. `build(spec, ctx)` is a pure
function of the two (golden-tested in tests/unit/test_agent_containers.py);
`host_context` gathers `ctx` on the host.

Every runtime gets the same contract: host network and IPC, the job's working
directory and its attempt directory at the same paths, the user's mounts, the
job's environment (names only on the command line for podman and docker: the
values travel in the client's environment, never in argv), the allocated GPUs,
the fast-link devices, and a name (podman, docker) so that the shepherd can
remove the container for sure when the job is killed.

Standard library only (this module is uploaded with the agent).
"""

from __future__ import annotations

import hashlib
import os
import resource
import stat
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (aliases only for the checker: hosts may run Python 3.8)
    from collections.abc import Callable

    # (name, "dir" | "link" | "other", link target) for the entries of an image directory.
    Entry = tuple[str, str, str]
    Scan = Callable[[str], list[Entry] | None]

GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables of the agent's own session that describe the host, not the job.
HOST_ONLY = frozenset({"PATH", "HOME", "SHELL", "PWD", "OLDPWD", "SHLVL", "_", "TERM",
                       "MAIL", "LOGNAME", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY"})  # fmt: skip
OCI = ("podman", "docker")
SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "zsh"})
APPTAINER = ("apptainer", "singularity")
RUNTIMES = ("podman", "docker", "apptainer", "singularity", "ch-run", "bwrap")
"""The runtimes a job may name (`container.runtime`), probed by `hello`."""


class ContainerError(Exception):
    """The container cannot be started as asked: the message is the attempt's reason."""


def container_name(root: str, attempt: str) -> str:
    """A name unique to this agent's work directory and attempt: `hb-<hash6>-<attempt>`."""
    digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:6]
    return f"hb-{digest}-{attempt}"


def _limit(value: int) -> str:
    return "-1" if value == resource.RLIM_INFINITY or value < 0 else str(value)


def build(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    """The command that runs `ctx["inner"]` (the job's argv) inside the container.

    spec (from the controller): runtime, exe, kind (oci|dir|sif), image, mounts
    (`SRC:DST[:ro]`), gpus (allocated indices).
    ctx (from the host): name, cwd, attempt_dir, inner, env (the job's own
    variables), uid, limits (name -> (soft, hard)), fast_links (device paths),
    nvidia (GPU device paths), scan (bwrap only: lists an image directory),
    umask (the job's; podman's --umask, a shell's `umask` for docker) and
    shebang (the script's `#!` line, which names a shell for docker's umask).

    Returns argv, env (variables to set or override in the client's
    environment), cleanup (argv lists run after a kill or timeout, or always for
    docker), notes (lines for the job's log).
    """
    runtime = spec["runtime"]
    builders = {"podman": _oci, "docker": _oci, "apptainer": _apptainer,
                "singularity": _apptainer, "ch-run": _charliecloud, "bwrap": _bwrap}  # fmt: skip
    if runtime not in builders:
        raise ContainerError(f"unknown container runtime {runtime!r}")
    out = builders[runtime](spec, ctx)
    out["notes"] = _notes(spec, ctx, out.get("notes", []))
    return out


def _mounts(spec: dict[str, Any], ctx: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only): the working and attempt directories, the agent's
    shims (hpcbatch-rsh, srun: what mpirun inside calls), then the user's."""
    seen = set()
    out = []
    shims = [(p, p, True) for p in ctx.get("agent_paths") or []]
    for src, dst, ro in [(ctx["cwd"], ctx["cwd"], False),
                         (ctx["attempt_dir"], ctx["attempt_dir"], False)] + shims + [
        _split_mount(m) for m in spec.get("mounts") or []
    ]:  # fmt: skip
        if dst not in seen:
            seen.add(dst)
            out.append((src, dst, ro))
    return out


def _guest_path(ctx: dict[str, Any]) -> str:
    """PATH inside: the agent's shims first (as outside), then the usual directories."""
    return ":".join([*((ctx.get("bin") and [ctx["bin"]]) or []), GUEST_PATH])


def _split_mount(text: str) -> tuple[str, str, bool]:
    parts = text.split(":")
    ro = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        ro = parts.pop() == "ro"
    return parts[0], parts[-1], ro


def _gpu_env(spec: dict[str, Any]) -> str:
    """CUDA_VISIBLE_DEVICES inside an OCI container, which sees only its GPUs: 0..n-1."""
    return ",".join(str(i) for i in range(len(spec.get("gpus") or [])))


def _resource_flags(runtime: str, ctx: dict[str, Any]) -> list[str]:
    """The job's memory and CPU limits as the runtime's flags, where the container
    leaves the job's cgroup: docker (its daemon's) and podman as root (its own). Rootless
    podman's container stays in the job's cgroup, which holds it already."""
    limits = ctx.get("job_limits") or {}
    if not (runtime == "docker" or ctx.get("uid") == 0):
        return []
    flags: list[str] = []
    if limits.get("memory_bytes"):
        mem = int(limits["memory_bytes"])
        flags += [f"--memory={mem}", f"--memory-swap={mem}"]
    if limits.get("cpus"):
        flags.append(f"--cpus={float(limits['cpus']):g}")
    return flags


def _oci(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    runtime, exe, name = spec["runtime"], spec["exe"], ctx["name"]
    argv = [exe, "run"]
    # podman keeps the exit code with --rm (and removes the container before it
    # returns); docker's --rm can lose it, so docker's container is removed after.
    if runtime == "podman":
        argv += ["--rm", "--log-driver=none"]
    argv += ["--name", name, "--pull=never", "--network=host"]
    if ctx.get("stdin"):  # `hpcbatch run`'s input: the client passes it to the container
        argv.append("--interactive")
    notes: list[str] = []
    if ctx.get("mqueue", True):
        argv.append("--ipc=host")
    else:
        # --ipc=host needs the host's /dev/mqueue; without it, share /dev/shm at least
        # (where MPI and NCCL keep their shared memory).
        argv += ["--volume", "/dev/shm:/dev/shm"]
        notes.append("no /dev/mqueue on this host: private IPC namespace, host /dev/shm shared")
    # The container keeps its own PID namespace: killing its first process then ends
    # every process in it (with the host's, a job's children could outlive the container
    # where rootless podman has no cgroup to kill). An init (catatonit, docker-init)
    # forwards TERM to the job, which a PID 1 shell would ignore, and reaps zombies.
    if runtime == "docker" or ctx.get("init"):
        argv.append("--init")
    argv += ["--workdir", ctx["cwd"]]
    if runtime == "docker" and ctx.get("uid"):
        # The daemon runs as root: files the job writes must belong to its user.
        argv += ["--user", f"{ctx['uid']}:{ctx.get('gid', ctx['uid'])}"]
    if runtime == "docker" and ctx.get("groups") is not None:
        # For a job run as its submitter (a root client): the user's groups, and nothing
        # that could make the container's process more than the user.
        argv += [a for g in ctx["groups"] if g != ctx.get("gid") for a in ("--group-add", str(g))]
        argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if runtime == "podman" and ctx.get("keep_id"):
        argv.append("--userns=keep-id")  # rootless: the job is the user inside too
    if runtime == "podman" and ctx.get("umask") is not None:
        argv.append(f"--umask={ctx['umask']:04o}")  # podman's own default is 0022
    # A root runtime applies its own defaults (podman as root: 1048576 open files), which
    # the host may not allow: give the agent's own limits, as a job without a container
    # has. Rootless podman inherits them already (and may not set nproc at all).
    limits = (ctx.get("limits") or {}) if runtime == "docker" or ctx.get("uid") == 0 else {}
    for res in ("nofile", "nproc"):
        if res in limits:
            soft, hard = limits[res]
            argv += ["--ulimit", f"{res}={_limit(soft)}:{_limit(hard)}"]
    argv += _resource_flags(runtime, ctx)
    links = list(ctx.get("fast_links") or [])
    if links:
        for dev in links:
            argv += ["--device", dev]
        memlock = _memlock(runtime, ctx, notes)
        argv += ["--ulimit", f"memlock={memlock}:{memlock}"]
    gpus = list(spec.get("gpus") or [])
    if gpus and runtime == "podman":
        for i in gpus:
            argv += ["--device", f"nvidia.com/gpu={i}"]  # CDI: only these GPUs
    elif gpus:
        argv += ["--gpus", '"device=' + ",".join(str(i) for i in gpus) + '"']
    for src, dst, ro in _mounts(spec, ctx):
        argv += ["--volume", f"{src}:{dst}" + (":ro" if ro else "")]
    env = {k: v for k, v in ctx["env"].items() if k not in HOST_ONLY}
    env["PATH"] = _guest_path(ctx)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = _gpu_env(spec)
    env_file = None
    if ctx.get("env_file"):
        # A root docker client for a user's job: the job's variables (the user's to choose:
        # LD_PRELOAD, DOCKER_HOST...) must not reach that client's environment, so they go
        # in a root-owned file the client reads (no multi-line values in that format).
        env_file, left_out = env_file_text(env)
        argv += ["--env-file", ctx["env_file"]]
        env = {}
        if left_out:
            notes.append(f"not passed (multi-line values): {' '.join(left_out)}")
    for key in sorted(env):
        argv += ["--env", key]  # the value comes from the client's environment
    inner = ctx["inner"]
    if runtime == "docker" and ctx.get("umask") is not None:
        inner = _with_umask(ctx, notes)
    argv += [spec["image"], *inner]
    cleanup = (
        [[exe, "rm", "--force", "--time", "0", name]]
        if runtime == "podman"
        else [[exe, "rm", "--force", name]]
    )
    return {"argv": argv, "env": env, "cleanup": cleanup, "always_cleanup": runtime == "docker",
            "notes": notes, "env_file": env_file}  # fmt: skip


def _with_umask(ctx: dict[str, Any], notes: list[str]) -> list[str]:
    """docker has no `--umask`: the job's command run by a shell that sets the job's
    umask first and execs it, a shell the command needs in the image anyway (`umask_shell`).
    Without one the image's umask stays, and the job's log says so."""
    shell = umask_shell(ctx["inner"], ctx.get("shebang"))
    if shell is None:
        notes.append(
            "docker has no --umask and the job's command is not run by a shell: the "
            "container keeps the image's umask"
        )
        return list(ctx["inner"])
    return [*shell, "-c", f'umask {ctx["umask"]:04o} && exec "$@"', "sh", *ctx["inner"]]


def umask_shell(inner: list[str], shebang: str | None) -> list[str] | None:
    """A shell the command `inner` needs in its image in any case: its own first word when
    that is a shell (a script without `#!` runs as `/bin/sh script`, a relayed command as
    `/bin/sh -c`), else the script's `#!` shell (`#!/bin/bash`, `#!/usr/bin/env bash`);
    None when no shell is known to be there (`#!/usr/bin/python3`)."""
    if inner and os.path.basename(inner[0]) in SHELLS:
        return [inner[0]]
    words = shebang[2:].split() if shebang and shebang.startswith("#!") else []
    if words and os.path.basename(words[0]) in SHELLS:
        return [words[0]]
    if len(words) == 2 and os.path.basename(words[0]) == "env" and words[1] in SHELLS:
        return words
    return None


def env_file_text(env: dict[str, str]) -> tuple[str, list[str]]:
    """`--env-file` lines for `env`; the names left out (values on several lines)."""
    lines, left_out = [], []
    for key in sorted(env):
        value = env[key]
        if "\n" in value or "\r" in value or not key.strip() or key != key.strip():
            left_out.append(key)
        else:
            lines.append(f"{key}={value}\n")
    return "".join(lines), left_out


def _memlock(runtime: str, ctx: dict[str, Any], notes: list[str]) -> str:
    """Unlimited locked memory for RDMA, where the runtime may grant it."""
    hard = (ctx.get("limits") or {}).get("memlock", (-1, -1))[1]
    if runtime == "docker" or ctx.get("uid") == 0 or _limit(hard) == "-1":
        return "-1"
    notes.append(
        f"memlock is limited to {hard} bytes on this host (a rootless container cannot "
        "raise it): RDMA may fail; ask the administrator for 'memlock unlimited' in limits.conf"
    )
    return _limit(hard)


def _apptainer(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    image = spec["image"]
    if spec["kind"] == "oci":
        image = "docker://" + image
    argv = [spec["exe"], "exec", "--pwd", ctx["cwd"]]
    for src, dst, ro in _mounts(spec, ctx):
        argv += ["--bind", f"{src}:{dst}" + (":ro" if ro else "")]
    if spec.get("gpus"):
        argv.append("--nv")  # CUDA_VISIBLE_DEVICES (host numbering) picks the GPUs
    argv += [image, *ctx["inner"]]
    return {"argv": argv, "env": {}, "cleanup": [], "always_cleanup": False}


def _charliecloud(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    argv = [spec["exe"]]
    scan = ctx.get("scan")
    missing = []
    home, user = ctx.get("home"), ctx.get("user")
    for src, dst, _ro in _mounts(spec, ctx):  # (ch-run 0.31 binds are read-write)
        at_home = dst == home == src and home == f"/home/{user}"
        if at_home and (scan is None or _exists(scan, spec["image"], "/home")):
            if "--home" not in argv:
                argv.append("--home")  # ch-run's own bind of $HOME at /home/$USER
            continue
        # ch-run binds host /tmp itself; elsewhere it cannot create a mount point
        # in a read-only image.
        if dst == "/tmp" or dst.startswith("/tmp/"):
            continue
        if scan is not None and not _exists(scan, spec["image"], dst):
            if dst in (ctx.get("agent_paths") or []):
                continue  # no hpcbatch-rsh/srun inside, then: only MPI needs them
            missing.append(dst)
        argv += ["-b", f"{src}:{dst}"]
    if missing:
        raise ContainerError(
            f"ch-run cannot create mount points in the read-only image {spec['image']}: "
            f"{', '.join(missing)} missing there (create them in the image, or use bwrap)"
        )
    argv += ["-c", ctx["cwd"], spec["image"], "--", *ctx["inner"]]
    env = {"PATH": _guest_path(ctx)}
    return {"argv": argv, "env": env, "cleanup": [], "always_cleanup": False}


def _exists(scan: Scan, image: str, guest: str) -> bool:
    here = image
    for part in [p for p in guest.split("/") if p]:
        entries = scan(here)
        match = [e for e in entries or [] if e[0] == part]
        if not match or match[0][1] == "other":
            return False
        here = os.path.join(here, part)
    return True


def _bwrap(spec: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    image = spec["image"]
    scan = ctx["scan"]
    mounts = _mounts(spec, ctx)
    extra = ["/tmp", "/proc", "/sys", "/dev"]
    argv = [spec["exe"], "--die-with-parent"]
    argv += _bwrap_tree(scan, image, "/", [m[1] for m in mounts] + extra)
    argv += ["--bind", "/proc", "/proc", "--ro-bind", "/sys", "/sys", "--dev", "/dev",
             "--bind", "/dev/shm", "/dev/shm", "--bind", "/tmp", "/tmp"]  # fmt: skip
    for dev in list(ctx.get("fast_links") or []) + list(ctx.get("nvidia") or []):
        argv += ["--dev-bind", dev, dev]
    for src, dst, ro in mounts:
        if dst != "/tmp":
            argv += ["--ro-bind" if ro else "--bind", src, dst]
    argv += ["--chdir", ctx["cwd"], *ctx["inner"]]
    env = {"PATH": _guest_path(ctx)}
    return {"argv": argv, "env": env, "cleanup": [], "always_cleanup": False}


def _bwrap_tree(scan: Scan, image: str, guest: str, targets: list[str]) -> list[str]:
    """Arguments that lay `image` out as the root, leaving room for every mount target.

    bwrap's root is an empty tmpfs. Each entry of the image is bound in
    read-only, except those on the way to a target that the image lacks: those
    directories are rebuilt as tmpfs directories holding binds of their own
    entries, so the target's mount point can be created there.
    """
    entries = scan(image)
    if entries is None:
        raise ContainerError(f"image directory {image} does not exist or cannot be read")
    inside = [t for t in targets if t != guest]
    below: dict[str, list[str]] = {}
    for t in inside:
        rest = t[len(guest) :].lstrip("/") if guest != "/" else t.lstrip("/")
        first = rest.split("/", 1)[0]
        below.setdefault(first, []).append(t)
    args: list[str] = []
    for name, kind, link in sorted(entries):
        path = os.path.join(guest, name)
        source = os.path.join(image, name)
        if kind == "link":
            args += ["--symlink", link, path]
        elif (
            kind == "dir"
            and name in below
            and not all(
                _exists(scan, image, t[len(guest) :] if guest != "/" else t) for t in below[name]
            )
        ):
            args += ["--dir", path]
            args += _bwrap_tree(scan, source, path, below[name])
        else:
            args += ["--ro-bind", source, path]
    return args


def _notes(spec: dict[str, Any], ctx: dict[str, Any], extra: list[str]) -> list[str]:
    runtime = spec["runtime"]
    lines = [f"container: {runtime} running {spec['image']} as {ctx['name']}"]
    gpus = spec.get("gpus") or []
    if gpus:
        how = {"podman": "CDI devices", "docker": "--gpus", "apptainer": "--nv",
               "singularity": "--nv"}.get(runtime, "host device nodes")  # fmt: skip
        lines.append(f"GPUs passed: {','.join(map(str, gpus))} ({how})")
    links = list(ctx.get("fast_links") or [])
    if links:
        lines.append(f"fast-link devices passed: {' '.join(links)}")
    elif ctx.get("fast_link_names"):
        lines.append("fast links on this host but no /dev/infiniband: none passed")
    else:
        lines.append("fast-link devices passed: none (no /dev/infiniband on this host)")
    return lines + extra


# --------------------------------------------------------------------------- host side


def scan_dir(path: str) -> list[Entry] | None:
    """The entries of a directory as `build` wants them; None if it is not one."""
    try:
        names = os.listdir(path)
    except OSError:
        return None
    out: list[Entry] = []
    for name in names:
        full = os.path.join(path, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            out.append((name, "link", os.readlink(full)))
        elif stat.S_ISDIR(st.st_mode):
            out.append((name, "dir", ""))
        else:
            out.append((name, "other", ""))
    return out


def devices(directory: str) -> list[str]:
    """Character devices under `directory` (e.g. /dev/infiniband: uverbsN, rdma_cm)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    out = []
    for name in names:
        full = os.path.join(directory, name)
        try:
            if stat.S_ISCHR(os.stat(full).st_mode):
                out.append(full)
        except OSError:
            continue
    return out


def nvidia_nodes() -> list[str]:
    """The NVIDIA device nodes (/dev/nvidia0, nvidiactl, nvidia-uvm...)."""
    return [d for d in devices("/dev") if os.path.basename(d).startswith("nvidia")]


def host_context(
    root: str,
    attempt: str,
    adir: str,
    cwd: str,
    inner: list[str],
    env: dict[str, str],
    agent_paths: tuple[str, ...] = (),
    user: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `build` needs from this host; `user`: the job's account where it runs as its
    submitter (runas.lookup), else the agent's own."""
    limits = {
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "nproc": resource.getrlimit(resource.RLIMIT_NPROC),
        "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK),
    }
    try:
        ib_names = os.listdir("/sys/class/infiniband")
    except OSError:
        ib_names = []
    return {
        "name": container_name(root, attempt),
        "bin": os.path.join(root, "bin"),
        "home": user["home"] if user else os.path.expanduser("~"),
        "user": user["name"] if user else os.environ.get("USER", ""),
        "agent_paths": [p for p in agent_paths if os.path.exists(p)],
        "cwd": cwd,
        "attempt_dir": adir,
        "inner": inner,
        "env": env,
        "uid": user["uid"] if user else os.getuid(),
        "gid": user["gid"] if user else os.getgid(),
        "limits": limits,
        "fast_links": devices("/dev/infiniband"),
        "fast_link_names": sorted(ib_names),
        "nvidia": nvidia_nodes(),
        "mqueue": os.path.isdir("/dev/mqueue"),
        "init": any(
            os.access(p, os.X_OK) for p in ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")
        ),
        "scan": scan_dir,
    }


def probe_runtimes(found: dict[str, str]) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(usable runtimes: name -> path, versions, unusable: name -> why) among those on PATH.

    The version commands run in parallel (a few tens of ms each). docker counts only
    where its daemon's socket is reachable: a client alone runs nothing.
    """
    usable, versions, unusable = dict(found), {}, {}
    env = {**os.environ, "USER": os.environ.get("USER") or str(os.getuid())}  # ch-run needs it
    procs = {}
    for name, path in found.items():
        try:
            procs[name] = subprocess.Popen(
                [path, "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        except OSError as exc:
            unusable[name] = f"cannot run {path}: {exc}"
    for name, proc in procs.items():
        try:
            out = proc.communicate(timeout=10)[0].decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            unusable[name] = f"{name} --version did not answer within 10 s"
            continue
        versions[name] = out.splitlines()[0][:200] if out else ""
        if proc.returncode != 0:
            unusable[name] = f"{name} --version exited with {proc.returncode}: {out[:200]}"
    if "docker" in found and "docker" not in unusable:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        sock = host[len("unix://") :] if host.startswith("unix://") else None
        if sock is not None and not os.access(sock, os.R_OK | os.W_OK):
            unusable["docker"] = f"no usable docker daemon socket at {sock}"
    for name in unusable:
        usable.pop(name, None)
    return usable, versions, unusable
