"""Docker jobs whose image is pulled from a registry, on the sshd sandbox.

The fixtures start what a site would run: Debian's `dockerd` (unless one is
running already) and Debian's `docker-registry` on a loopback port, to which a
busybox image built here is pushed and then removed from the daemon, so that
the job's STARTING phase must pull it (dockerd treats 127.0.0.0/8 registries as
insecure: plain HTTP). A fake `/dev/infiniband/uverbs0` exists while the job
starts, so that the fast-link devices reach the `docker run` (and rootless
`podman run`) command line. The GPU job runs on the sandbox's fake GPU host:
docker has no GPU driver there and refuses, which shows the `--gpus` it was
given. All of this needs root (docker's daemon, the device node): as another
user these tests skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import resource
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import SANDBOX_USER, Sandbox
from tests.integration.dockerd import docker, running_dockerd, wait_started
from tests.integration.images import busybox_tar, podman_image
from tests.integration.test_containers import _meta

pytestmark = pytest.mark.sshd

IB = Path("/dev/infiniband")


_docker = docker
_wait = wait_started


@pytest.fixture(scope="module")
def dockerd(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running docker daemon the sandbox's login user may use (started here if none)."""
    with running_dockerd(tmp_path_factory.mktemp("dockerd")):
        # The login user's new ssh sessions get the group (the socket is root:docker).
        subprocess.run(["usermod", "-aG", "docker", sandbox.user], check=True)
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def registry_image(dockerd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A busybox image in a local registry, and not in the daemon's store."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.fail("docker-registry is missing: scripts/install-prereqs.sh installs it")
    where = tmp_path_factory.mktemp("registry")
    port = _free_port()
    config = where / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {where / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = where / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait("docker-registry", lambda: _answers(f"http://127.0.0.1:{port}/v2/"), proc, log)
        image = f"127.0.0.1:{port}/hpcbatch/busybox:{uuid.uuid4().hex[:8]}"
        for argv in (["import", str(busybox_tar()), image], ["push", image], ["rmi", image]):
            done = _docker(*argv)
            assert done.returncode == 0, f"docker {argv[0]}: {done.stderr}"
        yield image
        _docker("rmi", "--force", image)
    finally:
        proc.terminate()
        proc.wait(30)


def _docker_inventory(sandbox: Sandbox, where: Path, runtime: str = "docker") -> Path:
    text = sandbox.inventory.read_text()
    for ce in ("cpu", "gpu"):
        head = f'[[compute_environments]]\nname = "{ce}"\n'
        text = text.replace(head, f'{head}container_runtimes = ["{runtime}"]\n')
    path = where / f"inventory-{runtime}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def fake_fast_link() -> Iterator[Path]:
    """`/dev/infiniband/uverbs0` as a character device (that of /dev/null) for a while."""
    if IB.exists():
        pytest.fail(f"{IB} exists on this machine: the fake fast link would mix with it")
    node = IB / "uverbs0"
    IB.mkdir()
    try:
        null = os.stat("/dev/null").st_rdev
        os.mknod(node, 0o666 | stat.S_IFCHR, null)
        node.chmod(0o666)
        yield node
    finally:
        node.unlink(missing_ok=True)
        IB.rmdir()


async def test_image_pulled_from_a_registry_then_run_with_docker(
    sandbox: Sandbox, controller_factory: Any, registry_image: str, tmp_path: Path
) -> None:
    c, api = await controller_factory(inventory=_docker_inventory(sandbox, tmp_path))
    assert all("docker" in (h.facts.runtimes if h.facts else {}) for h in c.cluster.hosts.values())
    seen: list[str] = []
    events = c.bus.subscribe()

    async def watch() -> None:
        while True:
            event = await events.get()
            if event is not None and event.get("event") == "job":
                job = event["job"]
                if job["state"] == "STARTING" and job["reason"]:
                    seen.append(job["reason"])

    watcher = asyncio.create_task(watch())
    script = "#!/bin/sh\ncat /etc/hpcbatch-test-image\nid -u\n"
    try:
        job = await api.submit(image=registry_image, script=script)
        (done,) = await api.wait(job, timeout=120)
    finally:
        watcher.cancel()
        c.bus.unsubscribe(events)
    host = done["hosts"][0]
    err = await api.logs(job, "stderr")
    assert done["state"] == "SUCCEEDED", (done, err)
    # STARTING showed the pull; its output heads the job's stderr.
    assert f"pulling image on {host}: pulling {registry_image}" in seen, seen
    assert err.startswith(f"hpcbatch: pulling {registry_image} with docker\n"), err
    # It ran in the pulled image (its marker file), as the job's user (--user), not root.
    assert (await api.logs(job)).split() == ["busybox", str(pwd.getpwnam(SANDBOX_USER).pw_uid)]
    argv = _meta(sandbox, host, f"{job}.1.0")["argv"]
    assert argv[:2] == [shutil.which("docker", path=_host_path(sandbox, host)), "run"], argv
    assert "--pull=never" in argv and registry_image in argv
    assert "--device" not in argv


@pytest.mark.parametrize("runtime", ["docker", "podman"])
async def test_fast_link_devices_reach_the_container(
    runtime: str,
    sandbox: Sandbox,
    controller_factory: Any,
    registry_image: str,
    tmp_path: Path,
) -> None:
    """A host with /dev/infiniband: its devices and as much locked memory as may be had
    (RDMA) are asked of the runtime. docker's daemon (root) is asked for unlimited,
    which needs CAP_SYS_RESOURCE; a daemon in an unprivileged container lacks it, and
    docker refuses with its own words. Rootless podman keeps the host's hard limit."""
    image = registry_image if runtime == "docker" else podman_image(sandbox)
    inventory = _docker_inventory(sandbox, tmp_path, runtime)
    _c, api = await controller_factory(inventory=inventory)
    script = "#!/bin/sh\nls -l /dev/infiniband\n"
    with fake_fast_link():
        job = await api.submit(image=image, script=script)
        (done,) = await api.wait(job, timeout=120)
    err = await api.logs(job, "stderr")
    argv = _meta(sandbox, done["hosts"][0], f"{job}.1.0")["argv"]
    assert argv[1] == "run" and argv[0].endswith(f"/{runtime}"), argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == ["/dev/infiniband/uverbs0"], argv
    memlock = [a for a in argv if a.startswith("memlock=")]
    assert "hpcbatch: fast-link devices passed: /dev/infiniband/uverbs0" in err, err
    if runtime == "docker":
        assert memlock == ["memlock=-1:-1"], argv
    else:
        hard = _hard_memlock()
        assert memlock == [f"memlock={hard}:{hard}"], argv
    if runtime == "docker" and not _can_raise_memlock():
        assert done["state"] == "FAILED", (done, err)
        assert "error setting rlimit type 8: operation not permitted" in err, err
        return
    assert done["state"] == "SUCCEEDED", (done, err)
    (line,) = (await api.logs(job)).splitlines()[-1:]
    assert line.startswith("crw") and line.endswith(" uverbs0"), line


def _hard_memlock() -> str:
    """The hard RLIMIT_MEMLOCK the sandbox's sshd (started by this process) passes on
    to the agent, as the agent writes it (-1: unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    return "-1" if hard == resource.RLIM_INFINITY else str(hard)


def _can_raise_memlock() -> bool:
    """Whether a root process here may lift RLIMIT_MEMLOCK (docker's daemon may too)."""
    probe = "import resource as r; r.setrlimit(r.RLIMIT_MEMLOCK, (-1, -1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


async def test_docker_gets_the_jobs_gpus(
    sandbox: Sandbox, controller_factory: Any, registry_image: str, tmp_path: Path
) -> None:
    c, api = await controller_factory(inventory=_docker_inventory(sandbox, tmp_path))
    holder = await api.submit(queue="gpu", gpus=1, script="#!/bin/sh\nsleep 60\n")
    (running,) = await api("jobs", ids=[holder])
    while running["state"] != "RUNNING":
        await asyncio.sleep(0.05)
        (running,) = await api("jobs", ids=[holder])
    held = c.jobs.live(holder).attempts[0].gpus
    job = await api.submit(queue="gpu", gpus=1, image=registry_image, script="#!/bin/sh\ntrue\n")
    (done,) = await api.wait(job, timeout=120)
    await api("cancel", job_ids=[holder])
    await api.wait(holder)
    (other,) = {0, 1} - set(held)
    argv = _meta(sandbox, done["hosts"][0], f"{job}.1.0")["argv"]
    gpus = [argv[i + 1] for i, a in enumerate(argv) if a == "--gpus"]
    assert gpus == [f'"device={other}"'], argv
    err = await api.logs(job, "stderr")
    assert f"hpcbatch: GPUs passed: {other} (--gpus)" in err, err
    # The fake GPUs have no driver: docker itself refuses the request it was given.
    assert done["state"] == "FAILED" and "could not select device driver" in err, (done, err)


def _host_path(sandbox: Sandbox, host: str) -> str:
    return f"{sandbox.host(host).bin_dir}:/usr/local/bin:/usr/bin:/bin"
