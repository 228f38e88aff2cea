"""The agent's container work: wrapping a launch in its runtime, and the `image` op.

`container_command` turns a launch whose request has a `container` field into
the runtime's command (containers.build) and records what the shepherd needs to
remove the container after a kill or timeout. `ImagePull` serves the `image`
op, which the controller sends while the job is STARTING: it checks that the
image is on the host and, for a registry image that is not, pulls it, sending
`progress` events (`{"ev": "progress", "attempt", "text"}`) as the pull's
output comes; the output is kept in `<root>/pulls/<attempt>.log` and copied
to the top of the job's stderr at launch. The job itself always runs with
`--pull=never`: an image is fetched once, here, never again by the run.

Standard library only (uploaded with the agent).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import TYPE_CHECKING, Any

from hpcbatch.transport.agent.containers import ContainerError, build, host_context
from hpcbatch.transport.agent.procs import (
    BadRequest,
    read_json,
    signal_group,
    want,
    want_attempt,
)
from hpcbatch.transport.agent.tools import code_location

if TYPE_CHECKING:
    from hpcbatch.transport.agent.hpcbatch_agent import Agent

RUNTIMES = ("podman", "docker", "apptainer", "singularity", "ch-run", "bwrap")
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


def pull_log(agent: Agent, attempt: str) -> str:
    return os.path.join(agent.root, "pulls", f"{attempt}.log")


def container_command(
    agent: Agent, attempt: str, adir: str, req: dict[str, Any], spec: dict[str, Any]
) -> str:
    """Wrap `spec["argv"]` in the container runtime; return the lines for the job's log."""
    ctr = want_container(req)
    ctx = host_context(agent.root, attempt, adir, spec["cwd"], spec["argv"], spec["job_env"],
                       agent_paths(agent))  # fmt: skip
    try:
        cmd = build(ctr, ctx)
    except ContainerError as exc:
        raise BadRequest(str(exc)) from None
    spec["argv"] = cmd["argv"]
    spec["env"] = {**spec["env"], **cmd["env"]}
    spec["cleanup"] = cmd["cleanup"]
    spec["always_cleanup"] = cmd["always_cleanup"]
    text = ""
    log = pull_log(agent, attempt)
    try:
        with open(log, errors="replace") as f:
            text = f.read()
        os.unlink(log)
    except OSError:
        pass
    return text + "".join(f"hpcbatch: {line}\n" for line in cmd["notes"])


def agent_paths(agent: Agent) -> tuple[str, ...]:
    """What the shims in `<root>/bin` need inside a container: the directory, and the
    agent's code they import (the zipapp on hosts)."""
    code = code_location()[1]
    return (agent.bin,) if code.startswith(agent.bin) else (agent.bin, code)


def relayed_command(
    agent: Agent, attempt: str, command: str, env: dict[str, str], cwd: str | None, serial: int
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) for a command relayed into `attempt` (mpirun's orted, srun's
    tasks): inside the attempt's container when it has one, so that every rank of a
    containerised job runs in its image. Outside otherwise."""
    meta = read_json(agent.path(attempt, "meta.json"))
    inner = ["/bin/sh", "-c", command]
    if not isinstance(meta, dict) or not isinstance(meta.get("container"), dict):
        return inner, env
    adir = agent.path(attempt)
    ctx = host_context(agent.root, f"{attempt}-r{serial}", adir, cwd or adir, inner, env,
                       agent_paths(agent))  # fmt: skip
    try:
        cmd = build(want_container(meta), ctx)
    except (ContainerError, BadRequest) as exc:
        raise BadRequest(f"cannot start the relayed command in its container: {exc}") from None
    return cmd["argv"], {**env, **cmd["env"]}


def kill_pull(agent: Agent, attempt: str) -> None:
    pull = agent.pulls.get(attempt)
    if pull is not None:
        pull.cancel()


class ImagePull:
    """One `image` request: present already (reply at once), or pulled (reply at the end)."""

    @classmethod
    def start(cls, agent: Agent, req: dict[str, Any]) -> None:
        attempt = want_attempt(req.get("attempt"))
        spec = want_container(req)
        rid = req["id"]
        kind, image, runtime, exe = spec["kind"], spec["image"], spec["runtime"], spec["exe"]
        if kind == "dir":
            if not os.path.isdir(image):
                raise BadRequest(f"image directory {image} does not exist on this host")
            return agent.send({"id": rid, "ok": True, "present": True, "pulled": False})
        if kind == "sif":
            if not os.path.isfile(image):
                raise BadRequest(f"image file {image} does not exist on this host")
            return agent.send({"id": rid, "ok": True, "present": True, "pulled": False})
        if runtime not in ("podman", "docker"):
            # apptainer/singularity convert docker:// images themselves, cached per user.
            return agent.send({"id": rid, "ok": True, "present": True, "pulled": False})
        check = [exe, "image", "exists", image] if runtime == "podman" else [
            exe, "image", "inspect", "--format", "{{.Id}}", image]  # fmt: skip
        try:
            present = subprocess.run(
                check, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, timeout=60,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise BadRequest(f"cannot run {runtime} to look for the image: {exc}") from None
        if present.returncode == 0:
            return agent.send({"id": rid, "ok": True, "present": True, "pulled": False})
        if attempt in agent.pulls:
            raise BadRequest(f"attempt {attempt} is already pulling its image")
        cls(agent, rid, attempt, [exe, "pull", image], runtime, image)

    def __init__(
        self, agent: Agent, rid: int, attempt: str, argv: list[str], runtime: str, image: str
    ) -> None:
        self.agent, self.rid, self.attempt, self.image = agent, rid, attempt, image
        self.done = self.cancelled = False
        self.sent = 0
        os.makedirs(os.path.dirname(pull_log(agent, attempt)), exist_ok=True)
        self.log = pull_log(agent, attempt)
        with open(self.log, "w") as f:
            f.write(f"hpcbatch: pulling {image} with {runtime}\n")
        out = open(self.log, "a")  # noqa: SIM115 (the child holds it; closed below)
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        except OSError as exc:
            raise BadRequest(f"cannot run {argv[0]}: {exc}") from None
        finally:
            out.close()
        agent.pulls[attempt] = self
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
        self.agent.pulls.pop(self.attempt, None)
        if rc == 0 and not self.cancelled:
            self.agent.send({"id": self.rid, "ok": True, "present": False, "pulled": True})
            return
        why: str | None = "cancelled" if self.cancelled else None
        if why is None:
            lines = [ln for ln in self.tail().splitlines() if ln.strip()]
            why = (lines[-1] if lines else f"exit status {rc}").strip()[:500]
        self.agent.send({"id": self.rid, "ok": False,
                         "error": f"pulling image {self.image} failed: {why}"})  # fmt: skip
