"""The agent's cgroup code on file trees laid out as the kernel lays them out.

cgroup v2 (most current distributions) is covered here on a temporary directory
tree shaped like /sys/fs/cgroup: the same code path as v1, which this machine
has and which tests/integration/test_limits.py drives for real. The files the
kernel would write (cpu.stat, memory.peak, memory.events, a child's
cgroup.controllers) are written by the test in its place.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcbatch.transport.agent import cgroups


def _v2_tree(fs: Path, root: str) -> Path:
    """A v2 hierarchy with the delegated `hpcbatch` dir and this agent's tag dir."""
    (fs / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids\n")
    (fs / "cgroup.subtree_control").write_text("")
    base = fs / "hpcbatch" / cgroups.tag_of(root)
    base.mkdir(parents=True)
    for level in (fs / "hpcbatch", base):  # the kernel fills a child's controllers
        (level / "cgroup.controllers").write_text("cpuset cpu memory\n")
        (level / "cgroup.subtree_control").write_text("")
    return base


def test_v2_layout_probe_create_enter_usage_remove(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    fs.mkdir()
    base = _v2_tree(fs, "/work/agent")
    layout = cgroups.probe("/work/agent", fs=str(fs))
    facts = layout.facts()
    assert facts["version"] == 2 and facts["enforced"], facts
    assert facts["controllers"] == ["memory", "cpu", "cpuset"]
    assert (fs / "cgroup.subtree_control").read_text() == "+memory +cpu +cpuset"

    cg = cgroups.create(layout, "7.1.0", {"memory_bytes": 1 << 30, "cpus": 2, "cores": [0]})
    assert cg is not None
    leaf = base / "7.1.0"
    assert (leaf / "memory.max").read_text() == str(1 << 30)
    first = min(os.sched_getaffinity(0))  # core 0: the first CPU the agent may use
    assert (leaf / "cpuset.cpus").read_text() == str(first)
    assert not (leaf / "cpu.max").exists()  # pinned: the cpuset holds it, no quota
    loose = cgroups.create(layout, "8.1.0", {"memory_bytes": 1 << 30, "cpus": 2})
    assert loose is not None  # not pinned: the quota
    assert (base / "8.1.0" / "cpu.max").read_text() == "200000 100000"
    (base / "8.1.0" / "cpu.max").unlink()
    cgroups.remove(loose)

    cgroups.enter(cg)
    assert (leaf / "cgroup.procs").read_text() == str(os.getpid())

    (leaf / "cpu.stat").write_text("usage_usec 3500000\nuser_usec 3000000\nsystem_usec 500000\n")
    (leaf / "memory.peak").write_text(str(900 << 20))
    (leaf / "memory.current").write_text(str(10 << 20))
    (leaf / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    seen = cgroups.usage(cg)
    assert seen["cpu_user_s"] == 3.0 and seen["cpu_sys_s"] == 0.5
    assert seen["mem_peak_bytes"] == 900 << 20 and seen["oom_kills"] == 1
    assert cgroups.oom_killed(seen, None)

    (leaf / "cgroup.procs").write_text("")
    for name in os.listdir(leaf):  # a real cgroup dir has no files to remove first
        os.unlink(leaf / name)
    cgroups.remove(cg)
    assert not leaf.exists()


def test_v2_without_the_memory_controller_is_not_enforced(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    fs.mkdir()
    base = _v2_tree(fs, "/r")
    for level in (fs / "hpcbatch", base):
        (level / "cgroup.controllers").write_text("cpu\n")
    layout = cgroups.probe("/r", fs=str(fs))
    assert not layout.enforced
    assert "memory controller is not enabled" in str(layout.why)
    assert cgroups.create(layout, "1.1.0", {"memory_bytes": 1 << 20}) is None


def test_v1_layout_limits_and_usage(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    for ctrl in cgroups.V1_CONTROLLERS:
        (fs / ctrl).mkdir(parents=True)
    (fs / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    (fs / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (fs / "cpuset" / "cpuset.mems").write_text("0\n")
    layout = cgroups.probe("/r", fs=str(fs))
    assert layout.facts()["version"] == 1 and layout.enforced
    assert layout.controllers == ["cpu", "cpuacct", "cpuset", "memory"]
    cg = cgroups.create(layout, "3.1.0", {"memory_bytes": 64 << 20, "cpus": 1})
    assert cg is not None
    dirs = {k: Path(v) for k, v in cg["dirs"].items()}
    assert (dirs["memory"] / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "100000"
    # Not pinned: the group's cpuset is its parent's (all of the delegated CPUs).
    assert (dirs["cpuset"] / "cpuset.cpus").read_text() == "0-3"
    assert (dirs["cpuset"] / "cpuset.mems").read_text() == "0"
    pinned = cgroups.create(layout, "4.1.0", {"memory_bytes": 1 << 20, "cores": [0]})
    assert pinned is not None
    first = min(os.sched_getaffinity(0))
    assert Path(pinned["dirs"]["cpuset"], "cpuset.cpus").read_text() == str(first)
    assert not Path(pinned["dirs"]["cpu"], "cpu.cfs_quota_us").exists()  # no quota needed
    # Each of our cpusets leaves the host's scheduling domains alone (no rebuild).
    assert Path(pinned["dirs"]["cpuset"], "cpuset.sched_load_balance").read_text() == "0"
    spare = cgroups.prepare(layout, "spare-1")
    taken = cgroups.create(layout, "5.1.0", {"memory_bytes": 1 << 20}, spare)
    assert taken is not None and not Path(spare["memory"]).exists()
    assert Path(taken["dirs"]["memory"], "memory.limit_in_bytes").read_text() == str(1 << 20)
    (dirs["cpuacct"] / "cpuacct.usage").write_text("2250000000")
    (dirs["cpuacct"] / "cpuacct.usage_user").write_text("2000000000")
    (dirs["cpuacct"] / "cpuacct.usage_sys").write_text("250000000")
    (dirs["memory"] / "memory.max_usage_in_bytes").write_text(str(64 << 20))
    (dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\n")
    (dirs["memory"] / "memory.failcnt").write_text("31")
    seen = cgroups.usage(cg)
    assert seen["cpu_user_s"] == pytest.approx(2.0) and seen["cpu_sys_s"] == pytest.approx(0.25)
    # An older kernel without `oom_kill`: the limit hit and a SIGKILL mean the OOM killer.
    assert cgroups.oom_killed(seen, 9) and not cgroups.oom_killed(seen, None)


def test_nothing_to_use_says_why(tmp_path: Path) -> None:
    layout = cgroups.probe("/r", fs=str(tmp_path))
    assert layout.facts() == {
        "version": 0,
        "enforced": False,
        "controllers": [],
        "base": None,
        "why": f"no cgroup v1 memory controller or cgroup v2 hierarchy at {tmp_path}",
        "gpu_devices": False,
    }


def test_core_numbers_map_onto_the_agents_cpus() -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert cgroups.host_cpus([]) == [] and cgroups.host_cpus(None) == []
    assert cgroups.host_cpus([0]) == [mine[0]]
    # More cores declared than the host has: they wrap around (and share).
    assert cgroups.host_cpus([0, len(mine)]) == [mine[0]]
    for bad in ("0-1", [-1], [True], [1.5]):
        with pytest.raises(ValueError, match=r"limits\.cores"):
            cgroups.host_cpus(bad)


def test_cpu_lists_and_the_jobs_environment() -> None:
    assert cgroups.cpu_list([3, 0, 1, 2, 6, 8, 9]) == "0-3,6,8-9"
    assert cgroups.cpu_list([5]) == "5"
    env = cgroups.cpu_env([2, 3])
    assert env["HPCBATCH_CPUS"] == "2,3"
    assert env["SLURM_CPU_BIND_LIST"] == "0xc"
    assert env["SLURM_CPU_BIND"] == "quiet,mask_cpu:0xc"
    assert cgroups.cpu_env([]) == {}
