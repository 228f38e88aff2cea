"""The agent's container work: wrapping a launch in its runtime, and the `image` op.

`container_command` turns a launch whose request has a `container` field into
the runtime's command (containers.build) and records what the shepherd needs to
remove the container after a kill or timeout. `ImagePulls` serves the `image`
op, which the controller sends while the job is STARTING: it checks that the
image is on the host and, for a registry image that is not, pulls it, sending
`progress` events (`{"ev": "progress", "attempt", "text"}`) as the pull's
output comes; the output is kept in `<root>/pulls/<attempt>.log` and copied
to the top of the job's stderr at launch. The job itself always runs with
`--pull=never`: an image is fetched once, here, never again by the run.

A job run as its submitter (run_as = "submitter", docs/security.md) runs its
container as that user too. podman, bwrap, ch-run, apptainer and singularity
are exec'd after the switch to the user (runas.become): unprivileged
namespaces, nothing the user could not do at a shell; podman is rootless, in
the user's own image store (`--userns=keep-id`: the job keeps the user's uid
inside too), and its `image` check and pull run as the user. docker cannot:
its daemon is root and its socket root-equivalent, so the docker client stays
root (`keep_root`) and the container runs with `--user uid:gid`, the user's
groups, `--cap-drop ALL` and `--security-opt no-new-privileges`, with only the
job's own directories mounted (a user's `--mount` is refused: the daemon would
bind any host path as root).

Standard library only (uploaded with the agent).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.containers import RUNTIMES, ContainerError, build, host_context
from hpcbatch.transport.agent.podman_state import run_repairing
from hpcbatch.transport.agent.procs import (
    read_json,
    run_cleanup,
    signal_group,
    want,
    want_attempt,
)
from hpcbatch.transport.agent.protocol import BadRequest, ImageReply
from hpcbatch.transport.agent.runas import DEFAULT_UMASK, become, host_env, lookup, user_env
from hpcbatch.transport.agent.tools import code_location

if TYPE_CHECKING:
    from hpcbatch.transport.agent.loop import AgentHost

KINDS = ("oci", "dir", "sif")
PROGRESS_EVERY_S = 1.0
TAIL = 4000


def want_container(req: dict[str, Any]) -> dict[str, Any]:
    """The `container` field of a launch or image request, checked."""
    spec = want(req, "container", dict)
    if spec is None:
        raise BadRequest("field 'container' is required")
    if spec.get("runtime") not in RUNTIMES:
        raise BadRequest(f"container.runtime must be one of {', '.join(RUNTIMES)}")
    if spec.get("kind") not in KINDS:
        raise BadRequest(f"container.kind must be one of {', '.join(KINDS)}")
    for key in ("exe", "image"):
        if not isinstance(spec.get(key), str) or not spec[key] or "\0" in spec[key]:
            raise BadRequest(f"container.{key} must be a non-empty string")
    mounts = spec.get("mounts") or []
    if not isinstance(mounts, list) or not all(
        isinstance(m, str) and m.startswith("/") and "\0" not in m for m in mounts
    ):
        raise BadRequest("container.mounts must be a list of 'SRC:DST[:ro]' strings")
    gpus = spec.get("gpus") or []
    if not isinstance(gpus, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus
    ):
        raise BadRequest("container.gpus must be a list of GPU indices")
    return dict(spec)


def pull_log(agent: AgentHost, attempt: str) -> str:
    return os.path.join(agent.root, "pulls", f"{attempt}.log")


def container_command(
    agent: AgentHost, attempt: str, udir: str, req: dict[str, Any], spec: dict[str, Any]
) -> str:
    """Wrap `spec["argv"]` in the container runtime; return the lines for the job's log.
    `udir` is the job's own attempt directory (`work/` of a job run as its user)."""
    ctr = want_container(req)
    user = spec.get("user")
    ctx = host_context(agent.root, attempt, udir, spec["cwd"], spec["argv"], spec["job_env"],
                       agent_paths(agent), user)  # fmt: skip
    ctx["job_limits"] = req.get("limits") if isinstance(req.get("limits"), dict) else None
    ctx["umask"] = spec.get("umask")
    script = req.get("script")
    ctx["shebang"] = script.partition("\n")[0] if isinstance(script, str) else None
    ctx["stdin"] = bool(req.get("stdin"))
    spec["keep_root"] = for_user(ctr, ctx, user)
    try:
        cmd = build(ctr, ctx)
    except ContainerError as exc:
        raise BadRequest(str(exc)) from None
    spec["argv"] = cmd["argv"]
    spec["env"] = {**spec["env"], **cmd["env"]}
    if spec["keep_root"]:  # the root client gets root's environment, the job's in a file
        write_env_file(ctx["env_file"], cmd["env_file"])
        spec["env"] = host_env(None)
    spec["cleanup"] = cmd["cleanup"]
    spec["always_cleanup"] = cmd["always_cleanup"]
    if user and ctr["runtime"] == "podman":
        spec["cleanup_user"] = user  # its container is in the user's own store
    text = ""
    log = pull_log(agent, attempt)
    try:
        with open(log, errors="replace") as f:
            text = f.read()
        os.unlink(log)
    except OSError:
        pass
    return text + "".join(f"hpcbatch: {line}\n" for line in cmd["notes"])


def for_user(ctr: dict[str, Any], ctx: dict[str, Any], user: dict[str, Any] | None) -> bool:
    """Set `ctx` up for a container of a job run as its submitter; whether the runtime's
    client must stay root (docker: see the module's docstring)."""
    if not user:
        return False
    if ctr["runtime"] == "podman":
        ctx["keep_id"] = True
    if ctr["runtime"] != "docker":
        return False
    if ctr.get("mounts"):
        raise BadRequest(
            "docker runs containers through a root daemon: on a multi-user host only the "
            "job's own directories are mounted and --mount is refused "
            f"({', '.join(ctr['mounts'])}); use podman, bwrap or ch-run, which mount as you"
        )
    groups = user.get("groups")  # runas.lookup's (an older record's: looked up now)
    if not isinstance(groups, list):
        groups = os.getgrouplist(user["name"], user["gid"])
    ctx["groups"] = sorted(set(groups))
    ctx["env_file"] = os.path.join(os.path.dirname(ctx["attempt_dir"]), f"{ctx['name']}.env")
    return True


def write_env_file(path: str, text: str) -> None:
    """The job's variables for a root docker client: root's, 0600, in the root-owned
    attempt directory (the user cannot write, nor read, it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def remove_container(meta: dict[str, Any]) -> None:
    """After killing a job found without its shepherd: remove its container (as its user
    for rootless podman)."""
    who = meta.get("cleanup_user")
    env = {**host_env(who), **user_env(who)} if who else dict(os.environ)
    run_cleanup(meta["cleanup"], env, who)


def agent_paths(agent: AgentHost) -> tuple[str, ...]:
    """What the shims in `<root>/bin` need inside a container: the directory, and the
    agent's code they import (the zipapp on hosts)."""
    code = code_location()[1]
    return (agent.bin,) if code.startswith(agent.bin) else (agent.bin, code)


def relayed_command(
    agent: AgentHost, attempt: str, command: str, env: dict[str, str], cwd: str | None, serial: int
) -> tuple[list[str], dict[str, str], bool]:
    """(argv, environment, keep_root) for a command relayed into `attempt` (mpirun's orted,
    srun's tasks): inside the attempt's container when it has one, so that every rank of a
    containerised job runs in its image. Outside otherwise. keep_root: the client must not
    become the job's user (docker's; the container runs as the user)."""
    meta = read_json(agent.path(attempt, "meta.json"))
    inner = ["/bin/sh", "-c", command]
    if not isinstance(meta, dict) or not isinstance(meta.get("container"), dict):
        return inner, env, False
    user = meta.get("run_as") if isinstance(meta.get("run_as"), dict) else None
    adir = env.get("HPCBATCH_ATTEMPT_DIR") or agent.path(attempt)
    ctx = host_context(agent.root, f"{attempt}-r{serial}", adir, cwd or adir, inner, env,
                       agent_paths(agent), user)  # fmt: skip
    ctx["umask"] = meta.get("umask", DEFAULT_UMASK)  # as the job's own (want_umask)
    try:
        ctr = want_container(meta)
        keep_root = for_user(ctr, ctx, user)
        cmd = build(ctr, ctx)
    except (ContainerError, BadRequest) as exc:
        raise BadRequest(f"cannot start the relayed command in its container: {exc}") from None
    if keep_root:
        write_env_file(ctx["env_file"], cmd["env_file"])
        return cmd["argv"], host_env(None), True
    return cmd["argv"], {**env, **cmd["env"]}, False


def as_user(user: dict[str, Any] | None) -> dict[str, Any]:
    """subprocess arguments that run a command as `user` (None: as the agent), with the
    user's HOME (rootless podman's store is found from it)."""
    if user is None:
        return {}
    return {"env": {**host_env(user), **user_env(user)}, "preexec_fn": lambda: become(user),
            "cwd": "/"}  # fmt: skip


class ImagePulls:
    """The `image` op: one pull at most per attempt, stopped by the attempt's `kill`."""

    def __init__(self, agent: AgentHost) -> None:
        self.agent = agent
        self.active: dict[str, ImagePull] = {}  # attempt -> its pull

    def cancel(self, attempt: str) -> None:
        pull = self.active.get(attempt)
        if pull is not None:
            pull.cancel()

    def start(self, req: dict[str, Any]) -> None:
        """Reply at once when the image is present; else start a pull that replies at its end."""
        attempt = want_attempt(req.get("attempt"))
        spec = want_container(req)
        rid = req["id"]
        # A rootless podman's images are its user's: look and pull as them (docker's are
        # its root daemon's).
        name = want(req, "user", str) if spec["runtime"] == "podman" else None
        user = lookup(name, socket.gethostname()) if name else None
        run = as_user(user)
        kind, image, runtime, exe = spec["kind"], spec["image"], spec["runtime"], spec["exe"]
        if kind == "dir":
            if not os.path.isdir(image):
                raise BadRequest(f"image directory {image} does not exist on this host")
            return self.reply(rid, {"present": True, "pulled": False})
        if kind == "sif":
            if not os.path.isfile(image):
                raise BadRequest(f"image file {image} does not exist on this host")
            return self.reply(rid, {"present": True, "pulled": False})
        if runtime not in ("podman", "docker"):
            # apptainer/singularity convert docker:// images themselves, cached per user.
            return self.reply(rid, {"present": True, "pulled": False})
        check = [exe, "image", "exists", image] if runtime == "podman" else [
            exe, "image", "inspect", "--format", "{{.Id}}", image]  # fmt: skip
        try:
            # podman's own state, left broken by dead processes, is repaired first
            # (podman_state): else each of the user's containerised jobs would fail.
            present, repaired = run_repairing(check, run, 60) if runtime == "podman" else (
                subprocess.run(check, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=60, **run), None)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise BadRequest(f"cannot run {runtime} to look for the image: {exc}") from None
        if repaired is not None:
            self.agent.send({"ev": "progress", "attempt": attempt, "text": repaired})
            log = pull_log(self.agent, attempt)  # copied to the top of the job's stderr
            os.makedirs(os.path.dirname(log), exist_ok=True)
            with open(log, "a") as f:
                f.write(f"hpcbatch: {repaired}\n")
        if present.returncode == 0:
            return self.reply(rid, {"present": True, "pulled": False})
        if attempt in self.active:
            raise BadRequest(f"attempt {attempt} is already pulling its image")
        ImagePull(self, rid, attempt, [exe, "pull", image], runtime, image, run)

    def reply(self, rid: int, reply: ImageReply) -> None:
        self.agent.send({"id": rid, "ok": True, **reply})


class ImagePull:
    """One image being pulled for an attempt: progress events, then the reply."""

    def __init__(
        self, pulls: ImagePulls, rid: int, attempt: str, argv: list[str], runtime: str,
        image: str, run: dict[str, Any],
    ) -> None:  # fmt: skip
        agent = self.agent = pulls.agent
        self.pulls, self.rid, self.attempt, self.image = pulls, rid, attempt, image
        self.done = self.cancelled = False
        self.sent = 0
        os.makedirs(os.path.dirname(pull_log(agent, attempt)), exist_ok=True)
        self.log = pull_log(agent, attempt)
        with open(self.log, "a") as f:  # after a repair's line (ImagePulls.start), if any
            f.write(f"hpcbatch: pulling {image} with {runtime}\n")
        out = open(self.log, "a")  # noqa: SIM115 (the child holds it; closed below)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                **run,
            )  # fmt: skip
        except OSError as exc:
            raise BadRequest(f"cannot run {argv[0]}: {exc}") from None
        finally:
            out.close()
        pulls.active[attempt] = self
        agent.send({"ev": "progress", "attempt": attempt, "text": f"pulling {image}"})
        agent.watch(self.proc.pid, None, True, self.on_exit)
        agent.after(PROGRESS_EVERY_S, self.tick)

    def tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - TAIL))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tick(self) -> None:
        if self.done:
            return
        lines = [ln.strip() for ln in self.tail().replace("\r", "\n").splitlines() if ln.strip()]
        if lines and len(lines) != self.sent:
            self.sent = len(lines)
            self.agent.send({"ev": "progress", "attempt": self.attempt, "text": lines[-1][:200]})
        self.agent.after(PROGRESS_EVERY_S, self.tick)

    def cancel(self) -> None:
        if not self.done:
            self.cancelled = True
            signal_group(self.proc.pid, signal.SIGTERM)
            self.agent.after(5.0, lambda: signal_group(self.proc.pid, signal.SIGKILL))

    def on_exit(self) -> None:
        rc = self.proc.wait()
        self.done = True
        self.pulls.active.pop(self.attempt, None)
        if rc == 0 and not self.cancelled:
            self.pulls.reply(self.rid, {"present": False, "pulled": True})
            return
        why: str | None = "cancelled" if self.cancelled else None
        if why is None:
            lines = [ln for ln in self.tail().splitlines() if ln.strip()]
            why = (lines[-1] if lines else f"exit status {rc}").strip()[:500]
        self.agent.send({"id": self.rid, "ok": False,
                         "error": f"pulling image {self.image} failed: {why}"})  # fmt: skip
