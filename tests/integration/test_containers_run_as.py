"""Containers of jobs run as their submitter, with real runtimes, a root agent and real users.

On a host with `run_as = "submitter"` a containerised job is its user's too
(docs/containers.md, "Multi-user hosts"): bwrap, ch-run and podman (rootless,
in alice's own image store) are exec'd after the switch to alice; docker's
client stays root (its daemon is) and the container runs with `--user`, no
capabilities and only the job's own directories mounted. Each test: a file the
container writes in the job's directories belongs to alice, the job's uid
inside is alice's, and bob's job's private directory stays closed to it.

Runtimes are installed by scripts/install-prereqs.sh: a missing one fails.
Needs root (the agent switches users; dockerd): as another user these skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.transport.agent.procs import run_cleanup
from hpcbatch.transport.agent.runas import host_env, lookup, user_env
from tests.integration import test_agent_run_as as run_as
from tests.integration.dockerd import running_dockerd
from tests.integration.images import busybox_rootfs, busybox_tar
from tests.integration.test_agent_process import Agent, eventually
from tests.integration.test_agent_run_as import owner

# The root agent and the real users of test_agent_run_as.py, shared.
agent = run_as.agent
users = run_as.users

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="jobs run as their submitter only under a root agent, with real users: "
    "needs root (CI runs as root)",
)

SCRIPT = """
id -u > "$HPCBATCH_ATTEMPT_DIR/uid"
umask > "$HPCBATCH_ATTEMPT_DIR/umask"
echo made > made-here
cat "$1/secret" 2>&1 && echo LEAKED || echo bob-closed
grep CapEff /proc/self/status
"""


def exe(runtime: str) -> str:
    path = shutil.which(runtime)
    if path is None:
        pytest.fail(f"{runtime} is missing: scripts/install-prereqs.sh installs it")
    return path


def podman_as(user: str, command: str) -> subprocess.CompletedProcess[str]:
    """A shell command as `user`, with a login's environment (rootless podman's store is
    found from HOME)."""
    home = pwd.getpwnam(user).pw_dir
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", f"HOME={home}", f"USER={user}",
         "PATH=/usr/bin:/bin", "sh", "-c", f"cd / && {command}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def podman_image_of(user: str) -> str:
    """The busybox test image in `user`'s own rootless podman store (imported as them).
    The user's podman state may have been left broken by an earlier run on this machine
    (the test below breaks it on purpose): repaired first, as podman's error says."""
    name = "localhost/hpcbatch-busybox:runas"
    podman_as(user, "podman ps >/dev/null 2>&1 || podman system migrate")
    done = podman_as(
        user, f"podman image exists {name} || podman import --quiet {busybox_tar()} {name}"
    )
    assert done.returncode == 0, done.stderr
    return name


def break_podman_state(user: str, image: str) -> str:
    """Leave `user`'s rootless podman as an OOM kill or a killed cgroup does: a container
    recorded running whose processes (its conmon, its own, the pause process holding the
    user namespace) are gone. Only those are killed, never the user's other processes
    (another run's jobs of the same user). Every podman command of the user then fails,
    naming `system migrate`. The container's id."""
    started = podman_as(user, f"podman run -d --network=host {image} sleep 600")
    assert started.returncode == 0, started.stderr
    cid = started.stdout.split()[-1]
    pids_of = "'{{.State.ConmonPid}} {{.State.Pid}}'"
    state = podman_as(user, f"podman inspect --format {pids_of} {cid}")
    assert state.returncode == 0, state.stderr
    uid = pwd.getpwnam(user).pw_uid
    pids = [int(p) for p in state.stdout.split()]
    for pause in (f"/tmp/podman-run-{uid}/libpod/tmp/pause.pid",
                  f"/run/user/{uid}/libpod/tmp/pause.pid"):  # fmt: skip
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(Path(pause).read_text().strip()))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(100):  # until they are gone (the container's init is conmon's child)
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            break
        time.sleep(0.05)
    broken = podman_as(user, "podman ps")
    assert broken.returncode != 0 and "system migrate" in broken.stderr, broken
    return cid


async def bobs_secret(ag: Agent, root: Path) -> Path:
    """A job of bob's that leaves a private file in its own directory (work/, 0700)."""
    await ag.launch("b.1.0", 'echo bob-private > "$HPCBATCH_ATTEMPT_DIR/secret"', user="bob")
    assert (await ag.exit_event("b.1.0"))["code"] == 0
    work = root / "attempts" / "b.1.0" / "work"
    assert owner(work) == ("bob", 0o700)
    return work


def alice_dir(root: Path) -> Path:
    """alice's working directory for the job (hers, 0700)."""
    path = root.parent / "alice-cwd"
    path.mkdir(mode=0o700)
    uid, gid = pwd.getpwnam("alice").pw_uid, pwd.getpwnam("alice").pw_gid
    os.chown(path, uid, gid)
    return path


async def run_as_alice(
    ag: Agent, root: Path, attempt: str, container: dict[str, Any], bob_work: Path
) -> tuple[dict[str, Any], str, Path]:
    cwd = alice_dir(root)
    await ag.ok("image", attempt=attempt, container=container, user="alice")
    await ag.launch(
        attempt, SCRIPT, args=[str(bob_work)], user="alice", cwd=str(cwd), umask=0o027,
        container=container,
    )  # fmt: skip
    done = await ag.exit_event(attempt, within=120)
    out = await ag.read_all(attempt)
    return done, out, cwd


async def relayed_rank_is_alices(
    ag: Agent, root: Path, attempt: str, container: dict[str, Any]
) -> None:
    """A command relayed into a running containerised attempt of alice's (an MPI rank,
    through hpcbatch-rsh) runs in the image, as alice."""
    # The release file is in the job's own directory: mounted in every runtime's container.
    release = root / "attempts" / attempt / "work" / "release"
    await ag.launch(
        attempt, 'while [ ! -e "$HPCBATCH_ATTEMPT_DIR/release" ]; do sleep 0.05; done',
        user="alice", container=container,
    )  # fmt: skip
    await eventually(lambda: (root / "attempts" / attempt / "pid").exists())
    key = f"rank-{attempt}"
    await ag.ok(
        "rspawn", key=key, attempt=attempt, command="id -u; cat /etc/hpcbatch-test-image; umask"
    )
    end = await ag.event(lambda e: e.get("ev") == "rexit" and e["key"] == key, 60)
    out = b"".join(
        base64.b64decode(e["data"]) for e in ag.events if e.get("ev") == "rout" and e["key"] == key
    ).decode()
    # The launch had no umask: the job's is 077, the rank's too, whatever the runtime.
    alice = str(pwd.getpwnam("alice").pw_uid)
    assert end["code"] == 0 and out.split() == [alice, "busybox", "0077"], (
        out, end,
    )  # fmt: skip
    release.touch()
    assert (await ag.exit_event(attempt, within=30))["code"] == 0


def check_alices(root: Path, attempt: str, out: str, cwd: Path, umask: str) -> None:
    work = root / "attempts" / attempt / "work"
    alice = pwd.getpwnam("alice").pw_uid
    assert (work / "uid").read_text().strip() == str(alice), out
    assert (work / "umask").read_text().strip() == umask, out
    for made in (cwd / "made-here", work / "uid"):
        assert made.stat().st_uid == alice, made  # written by alice's container: hers
    assert "bob-closed" in out and "LEAKED" not in out and "bob-private" not in out, out
    assert "CapEff:\t0000000000000000" in out, out  # nothing more than alice
    assert owner(work / "stdout") == ("alice", 0o640)  # umask 027 from the request


@pytest.mark.parametrize("runtime", ["bwrap", "ch-run"])
async def test_unprivileged_runtimes_run_as_the_user(
    runtime: str, agent: tuple[Agent, Path]
) -> None:
    ag, root = agent
    bob_work = await bobs_secret(ag, root)
    container = {"runtime": runtime, "exe": exe(runtime), "kind": "dir",
                 "image": str(busybox_rootfs())}  # fmt: skip
    done, out, cwd = await run_as_alice(ag, root, "a.1.0", container, bob_work)
    assert done["code"] == 0, out + await ag.read_all("a.1.0", "stderr")
    check_alices(root, "a.1.0", out, cwd, "0027")
    await relayed_rank_is_alices(ag, root, "a.9.0", container)


async def test_podman_runs_rootless_as_the_user(agent: tuple[Agent, Path]) -> None:
    ag, root = agent
    bob_work = await bobs_secret(ag, root)
    image = await asyncio.to_thread(podman_image_of, "alice")
    # bob's directory is mounted on purpose: alice's rootless container still cannot read it.
    container = {"runtime": "podman", "exe": exe("podman"), "kind": "oci", "image": image,
                 "mounts": [f"{bob_work}:{bob_work}:ro"]}  # fmt: skip
    done, out, cwd = await run_as_alice(ag, root, "a.2.0", container, bob_work)
    err = await ag.read_all("a.2.0", "stderr")
    assert done["code"] == 0, out + err
    check_alices(root, "a.2.0", out, cwd, "0027")
    await relayed_rank_is_alices(ag, root, "a.9.0", container)
    assert "--userns=keep-id" in json.loads((root / "attempts/a.2.0/meta.json").read_text())["argv"]
    # An image that only root's store has is not alice's: the `image` op looks as alice.
    missing = await ag.call(
        "image", attempt="a.3.0", user="alice",
        container={**container, "image": "localhost/not-in-alices-store:1"},
    )  # fmt: skip
    assert not missing["ok"] and "pulling image" in missing["error"], missing


async def test_a_users_broken_podman_state_is_repaired_before_their_job(
    agent: tuple[Agent, Path],
) -> None:
    """alice's rootless podman left broken (its processes killed under it) does not fail
    her next containerised job: the agent's image check repairs it, as alice, and says so
    at the top of the job's stderr; a killed job's container is removed as alice even so."""
    ag, _ = agent
    image = await asyncio.to_thread(podman_image_of, "alice")
    await asyncio.to_thread(break_podman_state, "alice", image)
    container = {"runtime": "podman", "exe": exe("podman"), "kind": "oci", "image": image}
    await ag.ok("image", attempt="a.6.0", container=container, user="alice")
    await ag.launch("a.6.0", "id -u", user="alice", container=container)
    done = await ag.exit_event("a.6.0", within=120)
    err = await ag.read_all("a.6.0", "stderr")
    assert done["code"] == 0, err
    assert (await ag.read_all("a.6.0")).split() == [str(pwd.getpwnam("alice").pw_uid)]
    assert "hpcbatch: repaired podman's state (podman system migrate" in err, err
    # Broken again: removing a killed job's container (the shepherd's cleanup, as alice)
    # repairs it too, and removes the container.
    name = await asyncio.to_thread(break_podman_state, "alice", image)
    alice = lookup("alice", socket.gethostname())
    env = {**host_env(alice), **user_env(alice)}
    await asyncio.to_thread(run_cleanup, [[exe("podman"), "rm", "--force", name]], env, alice)
    listed = await asyncio.to_thread(podman_as, "alice", "podman ps -a --format '{{.ID}}'")
    assert listed.returncode == 0, listed.stderr
    assert name[:12] not in listed.stdout, listed.stdout


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with running_dockerd(tmp_path_factory.mktemp("dockerd")):
        yield


@pytest.fixture(scope="module")
def docker_image(dockerd: None) -> Iterator[str]:
    name = f"hpcbatch-busybox-runas:{int(time.time())}"
    done = subprocess.run(
        ["docker", "import", str(busybox_tar()), name], capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    yield name
    subprocess.run(["docker", "rmi", "--force", name], capture_output=True, check=False)


async def test_docker_runs_the_container_as_the_user(
    agent: tuple[Agent, Path], docker_image: str
) -> None:
    ag, root = agent
    bob_work = await bobs_secret(ag, root)
    container = {"runtime": "docker", "exe": exe("docker"), "kind": "oci", "image": docker_image}
    # A user's mount would be made by the root daemon: refused, naming it.
    refused = await ag.call(
        "launch", attempt="a.4.0", script="true", user="alice",
        container={**container, "mounts": ["/etc:/host-etc:ro"]},
    )  # fmt: skip
    assert not refused["ok"] and "--mount is refused" in refused["error"], refused
    assert "/etc:/host-etc:ro" in refused["error"]
    done, out, cwd = await run_as_alice(ag, root, "a.5.0", container, bob_work)
    err = await ag.read_all("a.5.0", "stderr")
    assert done["code"] == 0, out + err
    # docker has no --umask: a shell the job runs under anyway (a script without #!: sh)
    # sets the job's umask before it execs the job.
    check_alices(root, "a.5.0", out, cwd, "0027")
    assert owner(cwd / "made-here") == ("alice", 0o640)  # made in the container: 027
    await relayed_rank_is_alices(ag, root, "a.9.0", container)
    # The job's variables reached the container through a root-only file, not the client.
    env_files = list((root / "attempts" / "a.5.0").glob("*.env"))
    assert len(env_files) == 1 and owner(env_files[0]) == ("root", 0o600)
