"""Tests for hpcbatch.core.facts: nvidia-smi parsing, agent facts, declared vs probed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.facts import (
    FactsError,
    GpuInfo,
    HostFacts,
    effective_resources,
    facts_from_agent,
    parse_meminfo,
    parse_nvidia_smi,
)

H100_X2 = """\
0, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-6f1b2c3d-0000-1111-2222-333344445555
1, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-7a8b9c0d-0000-1111-2222-333344445555
"""


# --------------------------------------------------------------------------- parse_nvidia_smi


def test_parse_nvidia_smi_h100() -> None:
    gpus = parse_nvidia_smi(H100_X2)
    assert gpus == (
        GpuInfo(0, "NVIDIA H100 80GB HBM3", 81559, "GPU-6f1b2c3d-0000-1111-2222-333344445555"),
        GpuInfo(1, "NVIDIA H100 80GB HBM3", 81559, "GPU-7a8b9c0d-0000-1111-2222-333344445555"),
    )


def test_parse_nvidia_smi_empty_and_blank_lines() -> None:
    assert parse_nvidia_smi("") == ()
    assert parse_nvidia_smi("\n  \n\n") == ()
    text = "\n\n" + H100_X2.replace("\n", "\n\n") + "   \n"
    assert len(parse_nvidia_smi(text)) == 2


def test_parse_nvidia_smi_not_available_fields() -> None:
    (gpu,) = parse_nvidia_smi("0, [N/A], [N/A], [N/A]\n")
    assert gpu == GpuInfo(0, "", 0, "")


def test_parse_nvidia_smi_nounits_and_gib() -> None:
    gpus = parse_nvidia_smi("0, Tesla T4, 15360, GPU-a\n1, Tesla T4, 15 GiB, GPU-b\n")
    assert [g.memory_mb for g in gpus] == [15360, 15360]


def test_parse_nvidia_smi_name_with_commas_kept_whole() -> None:
    (gpu,) = parse_nvidia_smi("3, Weird, Name, Inc, 1024 MiB, GPU-x")
    assert gpu == GpuInfo(3, "Weird, Name, Inc", 1024, "GPU-x")


def test_parse_nvidia_smi_sorted_by_index() -> None:
    gpus = parse_nvidia_smi("2, A, 1 MiB, u2\n0, A, 1 MiB, u0\n1, A, 1 MiB, u1")
    assert [g.index for g in gpus] == [0, 1, 2]


def test_parse_nvidia_smi_crlf() -> None:
    assert len(parse_nvidia_smi(H100_X2.replace("\n", "\r\n"))) == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            "nvidia-smi line 1: expected 'index, name, memory, uuid'",
        ),
        ("0, A, 1 MiB, u\n\nx, A, 1 MiB, u", "nvidia-smi line 3: bad GPU index 'x'"),
        ("-1, A, 1 MiB, u", "bad GPU index '-1'"),
        ("9" * 5000 + ", A, 1 MiB, u", "bad GPU index '9999"),
        ("0, A, " + "9" * 5000 + " MiB, u", "bad memory '9999"),
        ("0, A, lots, u", "nvidia-smi line 1: bad memory 'lots'"),
        ("0, A, 12 parsecs, u", "bad memory '12 parsecs'"),
        ("0, A, 1 MiB, u\n0, B, 1 MiB, v", "nvidia-smi line 2: GPU index 0 appears twice"),
    ],
)
def test_parse_nvidia_smi_malformed_names_the_line(text: str, needle: str) -> None:
    with pytest.raises(FactsError) as info:
        parse_nvidia_smi(text)
    assert needle in str(info.value)


@given(st.text())
def test_parse_nvidia_smi_never_crashes(text: str) -> None:
    try:
        gpus = parse_nvidia_smi(text)
    except FactsError:
        return
    assert all(isinstance(g, GpuInfo) and g.index >= 0 for g in gpus)


# --------------------------------------------------------------------------- meminfo


def test_parse_meminfo() -> None:
    text = "MemTotal:       263855544 kB\nMemFree:        1000 kB\n"
    assert parse_meminfo(text) == 263855544 // 1024


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("MemFree: 1 kB\n", "no MemTotal"),
        ("MemTotal: lots\n", "unreadable MemTotal"),
        ("MemTotal: 12 pages\n", "unexpected MemTotal unit"),
        ("MemTotal: " + "9" * 5000 + " kB\n", "unreadable MemTotal"),
    ],
)
def test_parse_meminfo_errors(text: str, needle: str) -> None:
    with pytest.raises(FactsError, match=needle):
        parse_meminfo(text)


# --------------------------------------------------------------------------- facts_from_agent


def _raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "hostname": "gpu1.cluster",
        "cpus": 96,
        "memory_mb": 1031000,
        "nvidia_smi": H100_X2,
        "nvidia_smi_error": None,
        "infiniband": ["mlx5_1", "mlx5_0", "mlx5_0"],
        "efa": [],
        "dev_infiniband": True,
        "runtimes": {"podman": "/usr/bin/podman", "apptainer": "/usr/bin/apptainer"},
        "python": "/usr/bin/python3",
        "kernel": "6.8.0-45-generic",
        "user": "hpc",
        "home": "/home/hpc",
    }
    raw.update(over)
    return raw


def test_facts_from_agent_full() -> None:
    facts = facts_from_agent(_raw())
    assert facts.cpus == 96
    assert facts.memory_mb == 1031000
    assert [g.index for g in facts.gpus] == [0, 1]
    assert facts.fast_links == ("mlx5_0", "mlx5_1")
    assert facts.efa == ()
    assert facts.dev_infiniband is True
    assert list(facts.runtimes) == ["apptainer", "podman"]
    assert facts.python == "/usr/bin/python3"
    assert (facts.hostname, facts.kernel, facts.user, facts.home) == (
        "gpu1.cluster",
        "6.8.0-45-generic",
        "hpc",
        "/home/hpc",
    )
    assert facts.gpu_error is None


def test_facts_from_agent_minimal_and_unknown_fields_ignored() -> None:
    facts = facts_from_agent({"cpus": 2, "memory_mb": 0, "future_field": [1, 2]})
    assert facts == HostFacts(cpus=2, memory_mb=0)
    assert facts.gpus == () and facts.runtimes == {} and facts.python is None


def test_facts_from_agent_nulls_are_defaults() -> None:
    facts = facts_from_agent(
        _raw(nvidia_smi=None, infiniband=None, efa=None, runtimes=None, dev_infiniband=None)
    )
    assert facts.gpus == () and facts.fast_links == () and facts.runtimes == {}
    assert facts.dev_infiniband is False


def test_facts_from_agent_efa() -> None:
    facts = facts_from_agent(_raw(infiniband=["rdmap0s31"], efa=["rdmap0s31"]))
    assert facts.efa == ("rdmap0s31",) and facts.fast_links == ("rdmap0s31",)


def test_facts_from_agent_nvidia_smi_error_kept() -> None:
    facts = facts_from_agent(_raw(nvidia_smi=None, nvidia_smi_error="exit 9: driver not loaded"))
    assert facts.gpus == ()
    assert facts.gpu_error == "exit 9: driver not loaded"


def test_facts_from_agent_bad_nvidia_smi_output_is_not_fatal() -> None:
    facts = facts_from_agent(_raw(nvidia_smi="No devices were found"))
    assert facts.gpus == ()
    assert facts.gpu_error is not None and "nvidia-smi line 1" in facts.gpu_error


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"cpus": None}, "missing 'cpus'"),
        ({"cpus": True}, "'cpus' should be an integer"),
        ({"cpus": "96"}, "'cpus' should be an integer"),
        ({"cpus": 0}, "'cpus' should be at least 1"),
        ({"memory_mb": -5}, "'memory_mb' should be at least 0"),
        ({"memory_mb": 1.5}, "'memory_mb' should be an integer"),
        ({"nvidia_smi": 3}, "'nvidia_smi' should be a string"),
        ({"infiniband": "mlx5_0"}, "'infiniband' should be a list of strings"),
        ({"efa": [1]}, "'efa' should be a list of strings"),
        ({"dev_infiniband": "yes"}, "'dev_infiniband' should be true or false"),
        ({"runtimes": ["podman"]}, "'runtimes' should map names to paths"),
        ({"runtimes": {"podman": 1}}, "'runtimes' should map names to paths"),
        ({"hostname": 7}, "'hostname' should be a string"),
    ],
)
def test_facts_from_agent_bad_types(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(FactsError, match=needle):
        facts_from_agent(_raw(**over))


def test_facts_from_agent_missing_memory() -> None:
    raw = _raw()
    del raw["memory_mb"]
    with pytest.raises(FactsError, match="missing 'memory_mb'"):
        facts_from_agent(raw)


def test_facts_from_agent_not_a_mapping() -> None:
    with pytest.raises(FactsError, match="expected an object"):
        facts_from_agent([1, 2])  # type: ignore[arg-type]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(list(_raw())) | st.text(max_size=8)


@given(st.dictionaries(_keys, _json, max_size=14))
def test_facts_from_agent_hostile_input(raw: dict[str, Any]) -> None:
    try:
        facts = facts_from_agent(raw)
    except FactsError:
        return
    assert facts.cpus >= 1 and facts.memory_mb >= 0


def test_host_facts_hashable_and_frozen() -> None:
    facts = facts_from_agent(_raw())
    hash(facts)
    with pytest.raises(AttributeError):
        facts.cpus = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- effective_resources


def _facts(gpus: int = 2, cpus: int = 32, memory_mb: int = 256000, **kw: Any) -> HostFacts:
    return HostFacts(
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=tuple(GpuInfo(i, "NVIDIA H100", 81559, f"GPU-{i}") for i in range(gpus)),
        hostname="node3.cluster",
        **kw,
    )


def test_effective_nothing_declared_uses_probed() -> None:
    assert effective_resources(_facts(), None, None, None, host="node3") == (
        32,
        256000,
        (0, 1),
        [],
    )


def test_effective_declared_equal_no_mismatch() -> None:
    assert effective_resources(_facts(), 32, 256000, 2, host="node3")[3] == []


def test_effective_declared_more_gpus_than_probed() -> None:
    cpus, mem, gpus, mismatches = effective_resources(_facts(), None, None, 8, host="node3")
    assert gpus == tuple(range(8))
    assert mismatches == ["node3: declared 8 GPUs but nvidia-smi shows 2"]
    assert (cpus, mem) == (32, 256000)


def test_effective_declared_gpus_none_probed() -> None:
    _, _, gpus, mismatches = effective_resources(_facts(gpus=0), None, None, 4, host="n")
    assert gpus == (0, 1, 2, 3)
    assert mismatches == ["n: declared 4 GPUs but nvidia-smi shows 0"]


def test_effective_declared_fewer_gpus_uses_first_probed() -> None:
    facts = HostFacts(
        cpus=8,
        memory_mb=1,
        gpus=tuple(GpuInfo(i, "x", 1, "") for i in (1, 3, 5, 7)),
    )
    _, _, gpus, mismatches = effective_resources(facts, None, None, 2, host="n")
    assert gpus == (1, 3)
    assert mismatches == ["n: declared 2 GPUs but nvidia-smi shows 4"]
    _, _, gpus, _ = effective_resources(facts, None, None, 6, host="n")
    assert gpus == (0, 1, 2, 3, 5, 7)


def test_effective_declared_zero_gpus_hides_them() -> None:
    _, _, gpus, mismatches = effective_resources(_facts(), None, None, 0, host="n")
    assert gpus == ()
    assert mismatches == ["n: declared 0 GPUs but nvidia-smi shows 2"]


def test_effective_gpu_error_in_sentence() -> None:
    facts = _facts(gpus=0, gpu_error="nvidia-smi: command not found")
    _, _, _, mismatches = effective_resources(facts, None, None, 1, host="n")
    assert mismatches == [
        "n: declared 1 GPU but nvidia-smi shows 0 (nvidia-smi: command not found)"
    ]


def test_effective_cpu_and_memory_override() -> None:
    cpus, mem, _, mismatches = effective_resources(_facts(), 1, 1000, None, host="node3")
    assert (cpus, mem) == (1, 1000)
    assert mismatches == [
        "node3: declared 1 CPU but the host reports 32",
        "node3: declared 1000 MB of memory but the host reports 256000 MB",
    ]


def test_effective_host_defaults_to_hostname() -> None:
    _, _, _, mismatches = effective_resources(_facts(), 64, None, None)
    assert mismatches == ["node3.cluster: declared 64 CPUs but the host reports 32"]


@given(
    probed=st.lists(st.integers(0, 15), unique=True, max_size=8),
    declared=st.none() | st.integers(0, 16),
)
def test_effective_gpu_indices_properties(probed: list[int], declared: int | None) -> None:
    facts = HostFacts(
        cpus=1, memory_mb=1, gpus=tuple(GpuInfo(i, "", 0, "") for i in sorted(probed))
    )
    _, _, gpus, mismatches = effective_resources(facts, None, None, declared, host="h")
    assert list(gpus) == sorted(set(gpus))
    if declared is None:
        assert list(gpus) == sorted(probed) and mismatches == []
    else:
        assert len(gpus) == declared
        assert (mismatches == []) == (declared == len(probed))
        if declared <= len(probed):
            assert set(gpus) <= set(probed)
        else:
            assert set(probed) <= set(gpus)
