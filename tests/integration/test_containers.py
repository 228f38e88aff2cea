"""Containerised jobs on the sandbox, with real runtimes and images built here (no registry).

Runtimes that scripts/install-prereqs.sh installs (podman with runc, bwrap,
ch-run) must be present: their tests fail, never skip, when one is missing.
The sandbox's login user is not root, so podman runs rootless (its own store,
into which the test image is imported). Each test pins the runtime through the
compute environment's `container_runtimes`, as an operator would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hpcbatch.sandbox import Sandbox
from tests.integration.conftest import until
from tests.integration.images import busybox_rootfs, podman_image

pytestmark = [pytest.mark.sshd]

RUNTIMES = ("bwrap", "ch-run", "podman")
SCRIPT = """#!/bin/sh
echo "data=$(cat /work/in.txt)"
echo "job=$HPCBATCH_JOB_ID slurm=$SLURM_JOB_ID aws=$AWS_BATCH_JOB_ID attempt=$HPCBATCH_ATTEMPT"
echo "mine=$MY_VAR"
echo "pwd=$(pwd)"
if [ -e /usr/bin/python3 ]; then echo fs=host; else echo fs=image; fi
test -f "$HPCBATCH_ATTEMPT_DIR/env.json" && echo attempt-dir=ok
echo "args=$*"
echo written > out.txt
echo to-stderr >&2
exit 3
"""


def need(runtime: str) -> str:
    path = shutil.which(runtime)
    if path is None:
        pytest.fail(f"{runtime} is missing: scripts/install-prereqs.sh installs it")
    return path


def inventory_with(sandbox: Sandbox, where: Path, cpu: list[str], gpu: list[str]) -> Path:
    """The sandbox's inventory with each compute environment's container runtimes set."""
    text = sandbox.inventory.read_text()
    for ce, runtimes in (("cpu", cpu), ("gpu", gpu)):
        listed = ", ".join(f'"{r}"' for r in runtimes)
        head = f'[[compute_environments]]\nname = "{ce}"\n'
        text = text.replace(head, f"{head}container_runtimes = [{listed}]\n")
    path = where / f"inventory-{uuid.uuid4().hex[:8]}.toml"
    path.write_text(text)
    return path


@pytest.fixture
def shared_dir(sandbox: Sandbox) -> Callable[[str], Path]:
    """Directories the sandbox's login user can write, under the sandbox root (in /tmp)."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = sandbox.root / "ctr" / f"{name}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        path.parent.chmod(0o755)
        path.chmod(0o777)
        made.append(path)
        return path

    yield make  # type: ignore[misc]
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def image_for(runtime: str, sandbox: Sandbox) -> str:
    need(runtime)
    if runtime == "podman":
        return podman_image(sandbox)
    return str(busybox_rootfs())


def podman_containers(sandbox: Sandbox) -> set[str]:
    """Names of the login user's podman containers (running or stopped) made by hpcbatch."""
    proc = subprocess.run(
        sandbox.ssh_argv("node1", "podman ps -a --format '{{.Names}}'"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return {n for n in proc.stdout.split() if n.startswith("hb-")}


def processes_with(marker: str) -> list[str]:
    proc = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [ln for ln in proc.stdout.splitlines() if marker in ln and "ps -eo" not in ln]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_containerised_job(
    runtime: str,
    sandbox: Sandbox,
    controller_factory: Any,
    shared_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    image = image_for(runtime, sandbox)
    before = podman_containers(sandbox) if runtime == "podman" else set()
    work, data = shared_dir("work"), shared_dir("data")
    (data / "in.txt").write_text("from-the-host\n")
    inv = inventory_with(sandbox, tmp_path, [runtime], [runtime])
    _, api = await controller_factory(inventory=inv)
    job = await api.submit(
        script=SCRIPT,
        args=["a b", "c"],
        image=image,
        mounts=[f"{data}:/work:ro"],
        workdir=str(work),
        env={"MY_VAR": "my value"},
    )
    (summary,) = await api.wait(job, timeout=90)
    out, err = await api.logs(job), await api.logs(job, "stderr")
    assert summary["state"] == "FAILED" and summary["exit_code"] == 3, (summary, out, err)
    assert summary["reason"] == "exit code 3"
    assert "data=from-the-host" in out
    assert f"job={job} slurm={job} aws={job} attempt=1" in out
    assert "mine=my value" in out
    assert f"pwd={work}" in out
    assert "fs=image" in out
    assert "attempt-dir=ok" in out
    assert "args=a b c" in out
    assert (work / "out.txt").read_text() == "written\n"
    assert "to-stderr" in err
    assert f"hpcbatch: container: {runtime} running {image} as hb-" in err
    assert "fast-link devices passed: none (no /dev/infiniband on this host)" in err
    if runtime == "podman":
        assert podman_containers(sandbox) - before == set()


async def test_refused_when_no_host_can_run_the_image_kind(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    inv = inventory_with(sandbox, tmp_path, ["bwrap"], ["bwrap"])
    _, api = await controller_factory(inventory=inv)
    with pytest.raises(Exception, match=r"no host of this queue can run a SIF file") as err:
        await api.submit(image="/images/x.sif")
    assert "apptainer, singularity" in str(err.value)
    with pytest.raises(Exception, match=r"no host of this queue can run an OCI image name"):
        await api.submit(image="alpine:3.20")
    # A directory image bwrap could run, missing on the host: the attempt fails at STARTING.
    missing = await api.submit(image="/nonexistent/rootfs")
    (summary,) = await api.wait(missing, timeout=60)
    assert summary["state"] == "FAILED", summary
    assert summary["reason"].startswith(
        "image: image directory /nonexistent/rootfs does not exist on this host on node"
    ), summary


async def test_missing_image_fails_the_attempt_with_its_reason_and_retries(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    need("podman")
    inv = inventory_with(sandbox, tmp_path, ["podman"], ["podman"])
    _, api = await controller_factory(inventory=inv)
    # Not on the host, and no registry reachable: the pull fails; the retry rule sees it.
    job = await api.submit(
        image="localhost/hpcbatch-no-such-image:1",
        retry={"attempts": 2, "evaluate_on_exit": [{"on_reason": "image:*", "action": "RETRY"}]},
    )
    (summary,) = await api.wait(job, timeout=120)
    assert summary["state"] == "FAILED", summary
    assert summary["attempt"] == 2
    assert summary["reason"].startswith(
        "image: pulling image localhost/hpcbatch-no-such-image:1 failed:"
    ), summary


@pytest.mark.parametrize(
    ("runtime", "how"), [(r, h) for r in RUNTIMES for h in ("cancel", "timeout")]
)
async def test_cancel_and_timeout_leave_nothing_behind(
    runtime: str,
    how: str,
    sandbox: Sandbox,
    controller_factory: Any,
    shared_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    image = image_for(runtime, sandbox)
    before = podman_containers(sandbox) if runtime == "podman" else set()
    work = shared_dir("work")
    inv = inventory_with(sandbox, tmp_path, [runtime], [runtime])
    c, api = await controller_factory(inventory=inv, kill_grace_s=1.0)
    marker = f"sleep {300000 + uuid.uuid4().int % 600000}"
    # The job ignores TERM, so only a KILL (and removing the container) ends it.
    script = f"#!/bin/sh\ntrap '' TERM\necho started\n{marker}\n"
    req: dict[str, Any] = {"script": script, "image": image, "workdir": str(work)}
    if how == "timeout":
        req["time_limit_s"] = 3
    job = await api.submit(**req)
    await until(lambda: c.jobs.live(job) and c.jobs.live(job).state == "RUNNING", 60)
    await until(lambda: processes_with(marker), 30, "the job's sleep to start")
    if how == "cancel":
        await api("cancel", job_ids=[job])
    (summary,) = await api.wait(job, timeout=60)
    assert summary["state"] == "FAILED"
    if how == "timeout":
        assert summary["reason"].startswith("timeout"), summary
    else:
        assert "terminated" in summary["reason"], summary
    # The shepherd removes the container before it writes the exit status.
    assert processes_with(marker) == []
    if runtime == "podman":
        assert podman_containers(sandbox) - before == set()


async def test_gpu_host_container_gets_exactly_its_gpus(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    """The sandbox's GPUs are fake: check what podman was given (the job then fails: no
    CDI specification describes fake GPUs), with one GPU held by another job."""
    image = image_for("podman", sandbox)
    before = podman_containers(sandbox)
    inv = inventory_with(sandbox, tmp_path, ["podman"], ["podman"])
    c, api = await controller_factory(inventory=inv)
    holder = await api.submit(queue="gpu", gpus=1, script="#!/bin/sh\nsleep 60\n")
    await until(lambda: c.jobs.live(holder).state == "RUNNING", 60)
    held = c.jobs.live(holder).attempts[0].gpus
    job = await api.submit(queue="gpu", gpus=1, image=image, script="#!/bin/sh\ntrue\n")
    (summary,) = await api.wait(job, timeout=60)
    await api("cancel", job_ids=[holder])
    await api.wait(holder, timeout=60)
    assert summary["hosts"] and "launch failed" not in summary["reason"], summary
    meta = _meta(sandbox, summary["hosts"][0], f"{job}.1.0")
    argv = meta["argv"]
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    (other,) = {0, 1} - set(held)
    assert devices == [f"nvidia.com/gpu={other}"], argv
    assert "--gpus" not in argv
    # The job's environment names the host's index; inside, the container's only GPU is 0.
    # (env.json, root's 0600 record: meta.json no longer copies the environment.)
    env = json.loads(_meta_path(sandbox, summary["hosts"][0], f"{job}.1.0").with_name(
        "env.json").read_text())  # fmt: skip
    assert env["CUDA_VISIBLE_DEVICES"] == str(other)
    err = await api.logs(job, "stderr")
    assert f"hpcbatch: GPUs passed: {other} (CDI devices)" in err
    assert summary["state"] == "FAILED" and "nvidia.com/gpu" in err, (summary, err)
    assert podman_containers(sandbox) - before == set()


def _meta_path(sandbox: Sandbox, host: str, attempt: str) -> Path:
    """The attempt's meta.json in the newest controller's work directory on that host
    (each controller has its own)."""
    found = (sandbox.root / "hosts" / host / "work").glob(f"*/*/attempts/{attempt}/meta.json")
    return max(found, key=lambda p: p.stat().st_mtime)


def _meta(sandbox: Sandbox, host: str, attempt: str) -> dict[str, Any]:
    """The attempt's meta.json (the launch request and the argv run)."""
    return dict(json.loads(_meta_path(sandbox, host, attempt).read_text()))


# The host's MPI and Python, bound into a busybox image: the image needs no MPI of its own.
HOST_MPI_MOUNTS = [
    "/usr:/usr:ro,/lib:/lib:ro,/lib64:/lib64:ro,/etc/alternatives:ro,/etc/openmpi:ro"
]
MPI_SCRIPT = """#!/bin/sh
cd "$SLURM_SUBMIT_DIR" || exit 1
mpirun sh -c 'echo "rank $OMPI_COMM_WORLD_RANK on $HPCBATCH_SANDBOX_HOST" \
    "image=$(cat /etc/hpcbatch-test-image)"'
exec mpirun python3 hello.py
"""


@pytest.mark.mpi
async def test_mpi_ranks_in_containers_on_two_hosts(
    sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    """mpirun inside the main node's container; hpcbatch-rsh relays orted to the other
    node, where the agent starts it in that node's container: every rank is in the image."""
    from tests.integration.test_mpi import EXAMPLES, host_python_has_mpi4py

    host_python_has_mpi4py()
    image = image_for("bwrap", sandbox)
    inv = inventory_with(sandbox, tmp_path, ["bwrap"], ["bwrap"])
    _, api = await controller_factory(inventory=inv)
    job = await api.submit(
        script=MPI_SCRIPT,
        nodes=2,
        ntasks_per_node=1,
        image=image,
        mounts=HOST_MPI_MOUNTS,
        submit_dir=str(EXAMPLES),
        workdir=str(EXAMPLES),
        time_limit_s=90,
    )
    (summary,) = await api.wait(job, timeout=120)
    out, err = await api.logs(job), await api.logs(job, "stderr")
    assert summary["state"] == "SUCCEEDED", (summary, out, err)
    hosts = summary["hosts"]
    assert len(hosts) == 2
    ranks = re.findall(r"rank (\d) on (\S+) image=busybox", out)
    assert sorted(r for r, _ in ranks) == ["0", "1"], out
    assert sorted(h for _, h in ranks) == sorted(hosts), out
    assert len(re.findall(r"hello from rank \d of 2", out)) == 2, out
    assert "hpcbatch: container: bwrap" in err


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_run_forwards_stdin_into_the_container(
    runtime: str, sandbox: Sandbox, controller_factory: Any, tmp_path: Path
) -> None:
    """`echo ... | hpcbatch run --image IMAGE cmd`: the command, in its image, reads what
    `run` read (podman's client is given `--interactive`; bwrap and ch-run pass it on)."""
    image = image_for(runtime, sandbox)
    inv = inventory_with(sandbox, tmp_path, [runtime], [runtime])
    c, _ = await controller_factory(inventory=inv)
    env = {**os.environ, "HPCBATCH_SOCKET": str(c.settings.socket)}
    given = b"line one\nline two\n" * 1000
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "hpcbatch.cli.main", "run", "--image", image, "sh", "-c",
         "test -e /usr/bin/python3 && echo on-the-host; md5sum"],
        input=given, capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.md5(given).hexdigest(), done.stdout
