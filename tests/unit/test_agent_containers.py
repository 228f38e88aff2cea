"""Golden argv for each container runtime, as the agent builds them (a pure function)."""

from __future__ import annotations

from typing import Any

import pytest

from hpcbatch.transport.agent.containers import ContainerError, build, container_name

# An image tree for the scan callback: directories are dicts, symlinks ("link", target).
TREE: dict[str, Any] = {
    "bin": {"sh": "f"},
    "lib": ("link", "usr/lib"),
    "usr": {"lib": {}},
    "etc": {"passwd": "f"},
    "home": {},
    "tmp": {},
    "var": {"tmp": {}, "cache": {}},
}


def scan(path: str) -> list[tuple[str, str, str]] | None:
    if not path.startswith("/img"):
        return None
    node: Any = TREE
    for part in [p for p in path[len("/img") :].split("/") if p]:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, dict):
        return None
    out = []
    for name, value in node.items():
        if isinstance(value, dict):
            out.append((name, "dir", ""))
        elif isinstance(value, tuple):
            out.append((name, "link", value[1]))
        else:
            out.append((name, "other", ""))
    return out


def ctx(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "hb-abc123-7.1.0",
        "cwd": "/home/ann/run",
        "attempt_dir": "/var/lib/hb/attempts/7.1.0",
        "inner": ["/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b"],
        "env": {"HPCBATCH_JOB_ID": "7", "PATH": "/x", "SLURM_JOB_ID": "7", "HOME": "/h"},
        "uid": 1000,
        "gid": 1000,
        "limits": {"nofile": (1024, 4096), "nproc": (512, -1), "memlock": (65536, 65536)},
        "fast_links": [],
        "fast_link_names": [],
        "nvidia": [],
        "init": True,
        "bin": "/var/lib/hb/bin",
        "agent_paths": ["/var/lib/hb/bin", "/var/lib/hb/agent-1.pyz"],
        "scan": scan,
    }
    base.update(over)
    return base


def spec(runtime: str, kind: str = "oci", image: str = "localhost/tool:1", **over: Any) -> Any:
    exe = f"/usr/bin/{runtime}"
    return {"runtime": runtime, "exe": exe, "kind": kind, "image": image, "mounts": [],
            "gpus": [], **over}  # fmt: skip


def test_podman_golden() -> None:
    out = build(spec("podman", mounts=["/data:/data:ro"], gpus=[2, 3]), ctx())
    assert out["argv"] == [
        "/usr/bin/podman", "run", "--rm", "--log-driver=none",
        "--name", "hb-abc123-7.1.0", "--pull=never", "--network=host", "--ipc=host",
        "--init", "--workdir", "/home/ann/run",
        "--device", "nvidia.com/gpu=2", "--device", "nvidia.com/gpu=3",
        "--volume", "/home/ann/run:/home/ann/run",
        "--volume", "/var/lib/hb/attempts/7.1.0:/var/lib/hb/attempts/7.1.0",
        "--volume", "/var/lib/hb/bin:/var/lib/hb/bin:ro",
        "--volume", "/var/lib/hb/agent-1.pyz:/var/lib/hb/agent-1.pyz:ro",
        "--volume", "/data:/data:ro",
        "--env", "CUDA_VISIBLE_DEVICES", "--env", "HPCBATCH_JOB_ID", "--env", "PATH",
        "--env", "SLURM_JOB_ID",
        "localhost/tool:1", "/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b",
    ]  # fmt: skip
    # Values travel in the environment, not in argv; the host's PATH and HOME stay out:
    # PATH inside has the agent's shims (hpcbatch-rsh for mpirun), then the usual places.
    assert out["env"] == {
        "HPCBATCH_JOB_ID": "7",
        "SLURM_JOB_ID": "7",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PATH": "/var/lib/hb/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    rm = ["/usr/bin/podman", "rm", "--force", "--time", "0", "hb-abc123-7.1.0"]
    assert out["cleanup"] == [rm]
    assert not out["always_cleanup"]
    assert out["notes"] == [
        "container: podman running localhost/tool:1 as hb-abc123-7.1.0",
        "GPUs passed: 2,3 (CDI devices)",
        "fast-link devices passed: none (no /dev/infiniband on this host)",
    ]


def test_docker_golden_with_fast_links() -> None:
    links = ["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"]
    out = build(spec("docker", gpus=[1]), ctx(fast_links=links, env={"A": "1"}))
    assert out["argv"] == [
        "/usr/bin/docker", "run", "--name", "hb-abc123-7.1.0", "--pull=never",
        "--network=host", "--ipc=host", "--init", "--workdir", "/home/ann/run",
        "--user", "1000:1000",
        "--ulimit", "nofile=1024:4096", "--ulimit", "nproc=512:-1",
        "--device", "/dev/infiniband/rdma_cm", "--device", "/dev/infiniband/uverbs0",
        "--ulimit", "memlock=-1:-1",
        "--gpus", '"device=1"',
        "--volume", "/home/ann/run:/home/ann/run",
        "--volume", "/var/lib/hb/attempts/7.1.0:/var/lib/hb/attempts/7.1.0",
        "--volume", "/var/lib/hb/bin:/var/lib/hb/bin:ro",
        "--volume", "/var/lib/hb/agent-1.pyz:/var/lib/hb/agent-1.pyz:ro",
        "--env", "A", "--env", "CUDA_VISIBLE_DEVICES", "--env", "PATH",
        "localhost/tool:1", "/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b",
    ]  # fmt: skip
    # docker run --rm can lose the exit code: no --rm, the container is removed after.
    assert out["always_cleanup"]
    assert out["cleanup"] == [["/usr/bin/docker", "rm", "--force", "hb-abc123-7.1.0"]]
    assert (
        "fast-link devices passed: /dev/infiniband/rdma_cm /dev/infiniband/uverbs0"
        in (out["notes"])
    )


def test_podman_as_root_gets_the_agents_limits_and_without_mqueue_shares_dev_shm() -> None:
    out = build(spec("podman"), ctx(uid=0, mqueue=False, init=False))
    argv = out["argv"]
    assert argv[argv.index("--network=host") + 1 : argv.index("--workdir")] == [
        "--volume", "/dev/shm:/dev/shm",
    ]  # fmt: skip
    assert "--ipc=host" not in argv
    assert argv[argv.index("--workdir") + 2 : argv.index("--workdir") + 6] == [
        "--ulimit", "nofile=1024:4096", "--ulimit", "nproc=512:-1",
    ]  # fmt: skip
    assert "no /dev/mqueue on this host" in out["notes"][-1]


def test_rootless_podman_cannot_raise_memlock_and_says_so() -> None:
    out = build(spec("podman"), ctx(fast_links=["/dev/infiniband/uverbs0"]))
    i = out["argv"].index("memlock=65536:65536")
    assert out["argv"][i - 1] == "--ulimit"
    assert any("memlock is limited to 65536 bytes" in n for n in out["notes"])
    root = build(spec("podman"), ctx(uid=0, fast_links=["/dev/infiniband/uverbs0"]))
    assert "memlock=-1:-1" in root["argv"]


def test_apptainer_golden() -> None:
    out = build(spec("apptainer", mounts=["/scratch"], gpus=[0]), ctx())
    assert out["argv"] == [
        "/usr/bin/apptainer", "exec", "--pwd", "/home/ann/run",
        "--bind", "/home/ann/run:/home/ann/run",
        "--bind", "/var/lib/hb/attempts/7.1.0:/var/lib/hb/attempts/7.1.0",
        "--bind", "/var/lib/hb/bin:/var/lib/hb/bin:ro",
        "--bind", "/var/lib/hb/agent-1.pyz:/var/lib/hb/agent-1.pyz:ro",
        "--bind", "/scratch:/scratch", "--nv",
        "docker://localhost/tool:1", "/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b",
    ]  # fmt: skip
    sif = build(spec("singularity", kind="sif", image="/img/x.sif"), ctx())
    assert sif["argv"][0] == "/usr/bin/singularity"
    assert "/img/x.sif" in sif["argv"] and "--nv" not in sif["argv"]


def test_charliecloud_golden() -> None:
    c = ctx(cwd="/tmp/job", attempt_dir="/tmp/w/attempts/7.1.0")
    out = build(spec("ch-run", kind="dir", image="/img", mounts=["/data:/var/cache"]), c)
    assert out["argv"] == [
        "/usr/bin/ch-run", "-b", "/data:/var/cache", "-c", "/tmp/job", "/img", "--",
        "/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b",
    ]  # fmt: skip
    # The agent's shims are not in the image (ch-run cannot add mount points): skipped.
    assert out["env"]["PATH"].startswith("/var/lib/hb/bin:/usr/local/sbin:")


def test_charliecloud_binds_home_its_own_way() -> None:
    c = ctx(cwd="/home/ann", attempt_dir="/tmp/w/attempts/7.1.0", home="/home/ann", user="ann")
    out = build(spec("ch-run", kind="dir", image="/img"), c)
    assert out["argv"][:5] == ["/usr/bin/ch-run", "--home", "-c", "/home/ann", "/img"]


def test_charliecloud_refuses_mount_points_missing_from_the_image() -> None:
    with pytest.raises(ContainerError, match=r"/home/ann/run, /var/lib/hb/attempts/7\.1\.0 "):
        build(spec("ch-run", kind="dir", image="/img"), ctx())


def test_bwrap_golden_makes_room_for_mount_points() -> None:
    nv = ["/dev/nvidia0", "/dev/nvidiactl"]
    out = build(spec("bwrap", kind="dir", image="/img", gpus=[0]), ctx(nvidia=nv))
    assert out["argv"] == [
        "/usr/bin/bwrap", "--die-with-parent",
        "--ro-bind", "/img/bin", "/bin",
        "--ro-bind", "/img/etc", "/etc",
        # /home lacks ann/run: rebuilt as a directory of the tmpfs root.
        "--dir", "/home",
        "--symlink", "usr/lib", "/lib",
        "--ro-bind", "/img/tmp", "/tmp",
        "--ro-bind", "/img/usr", "/usr",
        "--dir", "/var",
        "--ro-bind", "/img/var/cache", "/var/cache",
        "--ro-bind", "/img/var/tmp", "/var/tmp",
        "--bind", "/proc", "/proc", "--ro-bind", "/sys", "/sys", "--dev", "/dev",
        "--bind", "/dev/shm", "/dev/shm", "--bind", "/tmp", "/tmp",
        "--dev-bind", "/dev/nvidia0", "/dev/nvidia0",
        "--dev-bind", "/dev/nvidiactl", "/dev/nvidiactl",
        "--bind", "/home/ann/run", "/home/ann/run",
        "--bind", "/var/lib/hb/attempts/7.1.0", "/var/lib/hb/attempts/7.1.0",
        "--ro-bind", "/var/lib/hb/bin", "/var/lib/hb/bin",
        "--ro-bind", "/var/lib/hb/agent-1.pyz", "/var/lib/hb/agent-1.pyz",
        "--chdir", "/home/ann/run",
        "/bin/sh", "/var/lib/hb/attempts/7.1.0/script", "a b",
    ]  # fmt: skip
    assert "GPUs passed: 0 (host device nodes)" in out["notes"]


def test_bwrap_refuses_a_missing_image() -> None:
    with pytest.raises(ContainerError, match="image directory /nope does not exist"):
        build(spec("bwrap", kind="dir", image="/nope"), ctx())


def test_container_name_is_stable_per_work_dir() -> None:
    a = container_name("/var/lib/hb", "7.1.0")
    assert a == container_name("/var/lib/hb/", "7.1.0")
    assert a != container_name("/other", "7.1.0")
    assert a.startswith("hb-") and a.endswith("-7.1.0")


def test_the_jobs_limits_go_to_runtimes_whose_containers_leave_its_cgroup() -> None:
    job_limits = {"memory_bytes": 1 << 30, "cpus": 2}
    docker = build(spec("docker"), ctx(job_limits=job_limits))["argv"]
    assert f"--memory={1 << 30}" in docker and "--cpus=2" in docker
    assert f"--memory-swap={1 << 30}" in docker
    root = build(spec("podman"), ctx(uid=0, job_limits=job_limits))["argv"]
    assert "--cpus=2" in root
    rootless = build(spec("podman"), ctx(job_limits=job_limits))["argv"]  # stays in the job's
    assert not any(a.startswith(("--memory", "--cpus")) for a in rootless)


SCRIPT = "/var/lib/hb/attempts/7.1.0/script"


@pytest.mark.parametrize(
    ("inner", "shebang", "shell"),
    [
        (["/bin/sh", SCRIPT, "a b"], None, ["/bin/sh"]),  # a script without #!
        (["/bin/sh", "-c", "id -u"], None, ["/bin/sh"]),  # a relayed command
        ([SCRIPT, "a b"], "#!/bin/bash -e", ["/bin/bash"]),
        ([SCRIPT], "#!/usr/bin/env bash", ["/usr/bin/env", "bash"]),
    ],
)
def test_docker_sets_the_jobs_umask_with_a_shell_the_job_needs_anyway(
    inner: list[str], shebang: str | None, shell: list[str]
) -> None:
    """docker has no --umask: the job's command is exec'd by a shell that set it first."""
    out = build(spec("docker"), ctx(inner=inner, shebang=shebang, umask=0o027))
    at = out["argv"].index("localhost/tool:1")
    assert out["argv"][at + 1 :] == [*shell, "-c", 'umask 0027 && exec "$@"', "sh", *inner]
    assert not any("umask" in note for note in out["notes"])


def test_docker_keeps_the_images_umask_without_a_shell_and_says_so() -> None:
    inner = [SCRIPT]
    out = build(spec("docker"), ctx(inner=inner, shebang="#!/usr/bin/python3", umask=0o027))
    assert out["argv"][-2:] == ["localhost/tool:1", SCRIPT]
    assert (
        "docker has no --umask and the job's command is not run by a shell: the container "
        "keeps the image's umask" in out["notes"]
    )


def test_podman_takes_the_umask_as_its_flag_and_runs_the_command_as_it_is() -> None:
    out = build(spec("podman"), ctx(umask=0o027, shebang=None))
    assert "--umask=0027" in out["argv"]
    assert out["argv"][-4:] == ["localhost/tool:1", "/bin/sh", SCRIPT, "a b"]
