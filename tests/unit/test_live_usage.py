"""Live usage from the agents' heartbeats: cores from two CPU samples, GPUs as sampled."""

from __future__ import annotations

from hpcbatch.core.usage import LiveUsage
from hpcbatch.transport.agent.gpus import GpuUse

MB = 1024 * 1024


def test_cores_come_from_two_samples_and_gpus_pass_through() -> None:
    live = LiveUsage()
    live.note(10.0, {"1.1.0": {"cpu_s": 5.0, "mem_bytes": 100 * MB}})
    assert live.of("1.1.0") == {"t": 10.0, "cpus": 0.0, "mem_bytes": 100 * MB}
    live.note(12.0, {"1.1.0": {"cpu_s": 8.0, "mem_bytes": 120 * MB, "gpu_util": 73.0,
                                "gpu_mem_bytes": 2048 * MB}})  # fmt: skip
    assert live.of("1.1.0") == {"t": 12.0, "cpus": 1.5, "mem_bytes": 120 * MB,
                                "gpu_util": 73.0, "gpu_mem_bytes": 2048 * MB}  # fmt: skip
    # A job without a cgroup reports its GPUs only: no made-up CPU or memory.
    live.note(14.0, {"1.1.0": {"cpu_s": 9.0, "mem_bytes": 0}, "2.1.0": {"gpu_util": 27.0}})
    assert live.of("2.1.0") == {"t": 14.0, "gpu_util": 27.0}
    assert live.totals() == {"cpus": 0.5, "memory_mb": 0.0, "gpu_util": 27.0}
    live.note(16.0, {})
    assert live.now == {} and live.totals() == {"cpus": 0.0, "memory_mb": 0.0}


def test_a_gpu_use_keeps_the_last_sample_for_the_heartbeat() -> None:
    use = GpuUse([0, 2])
    use.note({0: (80.0, 1024 * MB), 1: (99.0, 9 * MB), 2: (40.0, 512 * MB)})
    assert use.now == {"gpu_util": 60.0, "gpu_mem_bytes": 1536 * MB}
    use.note({0: (None, None), 2: (None, None)})  # [N/A] on both: nothing to show now
    assert use.now == {}
    assert use.usage() == {"gpu_util": 60.0, "gpu_mem_peak_bytes": 1536 * MB}
