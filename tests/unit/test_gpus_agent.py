"""The agent's GPU parts (issue 15): the device cgroup rules, and GPU sampling.

No GPU is lent to these tests: `nvidia-smi`'s answer to the agent's query is the
fixture `fixtures/nvidia-smi-usage.csv`, in the format nvidia-smi prints for
`--query-gpu=index,utilization.gpu,memory.used --format=csv,noheader,nounits`
(one line per GPU, `[N/A]` where a GPU does not report a figure). The v1
devices write is checked on a real cgroup where this machine has the devices
controller and the test runs as root, with device nodes of harmless devices
(/dev/zero's and /dev/null's numbers) standing for GPUs.
"""

from __future__ import annotations

import os
import selectors
import stat
import time
from pathlib import Path

import pytest

from hpcbatch.transport.agent import cgroups, gpus

FIXTURE = Path(__file__).parent / "fixtures" / "nvidia-smi-usage.csv"
MIB = 1024 * 1024


def test_the_query_output_parses_per_gpu() -> None:
    seen = gpus.parse_query(FIXTURE.read_text())
    assert seen == {
        0: (97.0, 61432 * MIB),
        1: (0.0, 4 * MIB),
        2: (45.0, 20480 * MIB),
        3: (None, None),  # [N/A]
    }
    # An error message instead of figures is no GPU at all.
    assert gpus.parse_query("NVIDIA-SMI has failed because it couldn't communicate\n") == {}


def test_deny_rules_hide_every_gpu_but_the_jobs_own() -> None:
    devices = {0: (195, 0), 1: (195, 1), 2: (195, 2)}
    assert gpus.deny_rules(devices, [1]) == ["c 195:0 rwm", "c 195:2 rwm"]
    assert gpus.deny_rules(devices, []) == ["c 195:0 rwm", "c 195:1 rwm", "c 195:2 rwm"]
    assert gpus.deny_rules(devices, None) == []  # the launch did not say: nothing denied
    with pytest.raises(ValueError, match=r"limits\.gpus"):
        gpus.deny_rules(devices, "0,1")


def test_the_sampler_averages_utilisation_and_keeps_the_memory_peak(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {FIXTURE}\n")
    smi.chmod(0o755)
    sel = selectors.DefaultSelector()
    sampler = gpus.GpuSampler(sel, smi=str(smi))
    sampler.track("1.1.0", {"gpus": [0, 2]})
    sampler.track("2.1.0", {"gpus": []})  # no GPUs: nothing to sample
    sampler.track("3.1.0", {"gpus": [3]})  # reports nothing
    for _ in range(2):
        sampler.poll()
        deadline = time.monotonic() + 10
        while sampler.proc is not None and time.monotonic() < deadline:
            for key, _ in sel.select(1.0):
                key.data()
    assert sampler.proc is None
    assert sampler.take("1.1.0") == {"gpu_util": 71.0, "gpu_mem_peak_bytes": 81912 * MIB}
    assert sampler.take("2.1.0") == {} and sampler.take("3.1.0") == {}


def test_without_nvidia_smi_nothing_is_sampled() -> None:
    sampler = gpus.GpuSampler(selectors.DefaultSelector(), smi="")
    sampler.track("1.1.0", {"gpus": [0]})
    sampler.poll()
    assert sampler.proc is None and sampler.take("1.1.0") == {}


V1_DEVICES = Path("/sys/fs/cgroup/devices")


@pytest.mark.skipif(
    os.geteuid() != 0 or not (V1_DEVICES / "devices.deny").exists()
    or not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists(),
    reason="needs root and cgroup v1 with the devices controller (v2 needs BPF: not done)",
)  # fmt: skip
def test_v1_devices_cgroup_denies_the_other_gpus(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    # "GPU 0" is /dev/zero's device number, "GPU 1" /dev/null's.
    os.mknod(dev / "nvidia0", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.mknod(dev / "nvidia1", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    layout = cgroups.probe(str(tmp_path / "root"), dev=str(dev))
    assert layout.facts()["gpu_devices"] and layout.gpus == {0: (1, 5), 1: (1, 3)}
    cg = cgroups.create(layout, "9.1.0", {"memory_bytes": 64 << 20, "gpus": [1]})
    assert cg is not None and "devices" in cg["dirs"]
    try:
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # in the job's cgroup: its own GPU opens, the other does not
            cgroups.enter(cg)
            answer = b""
            for name in ("/dev/null", "/dev/zero"):
                try:
                    os.close(os.open(name, os.O_RDONLY))
                    answer += b"y"
                except PermissionError:
                    answer += b"n"
            os.write(w, answer)
            os._exit(0)
        os.waitpid(child, 0)
        assert os.read(r, 2) == b"yn"
    finally:
        assert cgroups.remove(cg, tries=50)
