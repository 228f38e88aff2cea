"""cgroup v2's device control for real: a job's group hides the other jobs' GPUs.

cgroup v2 has no devices file; the agent attaches a BPF device program to the
attempt's group (transport/agent/devbpf.py). This machine's cgroups are v1, so
the test mounts a cgroup v2 hierarchy of its own (the kernel runs device
programs on any v2 group, whatever controllers the hierarchy has; where the
host is v2 already, a group under /sys/fs/cgroup is used). Stand-ins for two
GPUs are device nodes with the numbers of /dev/zero (GPU 0) and /dev/null
(GPU 1) in a directory laid out as /dev: a job given GPU 1 cannot open GPU 0's
node, nor /dev/zero itself; GPU 1's opens; outside the group both do.

Root only (mount, mknod, bpf): elsewhere skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcbatch.transport.agent import cgroups, devbpf
from hpcbatch.transport.agent.gpus import gpu_devices

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounts cgroup2, makes device nodes, loads BPF: needs root"
)


@pytest.fixture
def v2_base(tmp_path: Path) -> Iterator[Path]:
    """A directory of a cgroup v2 hierarchy this test may make groups in."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # a v2 host
        base = Path("/sys/fs/cgroup") / f"hpcbatch-test-{uuid.uuid4().hex[:8]}"
        base.mkdir()
        yield base
        base.rmdir()
        return
    mount = tmp_path / "cgroup2"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, f"cannot mount a cgroup2 hierarchy: {done.stderr}"
    base = mount / f"hpcbatch-test-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    try:
        yield base
    finally:
        for child in base.iterdir():
            if child.is_dir():
                child.rmdir()
        base.rmdir()
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def fake_dev(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name, like in (("nvidia0", "/dev/zero"), ("nvidia1", "/dev/null")):
        rdev = os.stat(like).st_rdev
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(os.major(rdev), os.minor(rdev)))
    return dev


OPENS = """
import sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
        print(path, "opened")
    except PermissionError:
        print(path, "denied")
"""


def opens(paths: list[str], cgroup: dict[str, object] | None) -> list[str]:
    """Which of `paths` a process (in `cgroup`, if given) may open."""
    done = subprocess.run(
        [sys.executable, "-c", OPENS, *paths], capture_output=True, text=True, check=True,
        preexec_fn=(lambda: cgroups.enter(cgroup)) if cgroup else None,
    )  # fmt: skip
    return done.stdout.splitlines()


def test_the_other_gpus_are_hidden_by_a_bpf_program(v2_base: Path, fake_dev: Path) -> None:
    assert devbpf.usable() is None
    layout = cgroups.Layout(2, {"unified": str(v2_base)}, None, ())
    layout.gpus = gpu_devices(str(fake_dev))
    assert sorted(layout.gpus) == [0, 1]
    cg = cgroups.create(layout, "7.1.0", {"gpus": [1]})
    assert cg is None  # no memory controller in this hierarchy: nothing is enforced...
    layout.v2_enabled = ("memory",)  # ...so say it has one (no memory limit is asked)
    cg = cgroups.create(layout, "7.1.0", {"gpus": [1]})
    assert cg is not None and layout.facts()["gpu_devices"] is True
    gpu0, gpu1 = str(fake_dev / "nvidia0"), str(fake_dev / "nvidia1")
    try:
        inside = opens([gpu0, gpu1, "/dev/zero", "/dev/urandom"], cg)
        assert inside == [f"{gpu0} denied", f"{gpu1} opened", "/dev/zero denied",
                          "/dev/urandom opened"], inside  # fmt: skip
        assert opens([gpu0, gpu1], None) == [f"{gpu0} opened", f"{gpu1} opened"]
        # A job given both GPUs gets no program at all: everything opens.
        both = cgroups.create(layout, "8.1.0", {"gpus": [0, 1]})
        assert opens([gpu0, gpu1], both) == [f"{gpu0} opened", f"{gpu1} opened"]
        assert cgroups.remove(both, tries=100)
    finally:
        assert cgroups.remove(cg, tries=100)


def test_the_program_denies_exactly_the_pairs_it_is_given() -> None:
    code = devbpf.program([(195, 0), (195, 2)])
    assert len(code) % 8 == 0 and len(code) // 8 == 4 + 1 + 2 * 4 + 2
    os.close(devbpf.load([(195, 0), (195, 2)]))  # the kernel's verifier accepts it
