"""Parse the raw facts a host agent reports into `HostFacts`.

The agent (stdlib only, runs on the host) reports what it finds as plain JSON:
the CPU count, the memory, the output of `nvidia-smi`, the InfiniBand and EFA
devices, the container runtimes on the PATH. This module turns that into typed,
frozen values, and merges them with what the inventory declares
(`effective_resources`): a declared value always wins, and every difference is
reported as a sentence an operator can act on.

Pure and stdlib only: no I/O, no pydantic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FactsError",
    "GpuInfo",
    "HostFacts",
    "effective_resources",
    "facts_from_agent",
    "parse_meminfo",
    "parse_nvidia_smi",
]

_NA = frozenset({"[N/A]", "N/A", "[Not Supported]", "[Unknown Error]", ""})
_MEMORY_RE = re.compile(r"^([0-9]{1,15})\s*([KMGT]i?B)?$", re.IGNORECASE)
_INDEX_RE = re.compile(r"^[0-9]{1,6}$")
_MEMORY_TO_MB = {
    "kib": 1 / 1024,
    "kb": 1 / 1024,
    "mib": 1,
    "mb": 1,
    "gib": 1024,
    "gb": 1024,
    "tib": 1024 * 1024,
    "tb": 1024 * 1024,
}


class FactsError(ValueError):
    """Raw facts that cannot be understood; the message names the offending part."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as `nvidia-smi` lists it. `memory_mb` is in MiB (0 if not reported)."""

    index: int
    name: str
    memory_mb: int
    uuid: str


@dataclass(frozen=True)
class HostFacts:
    """What a host really has, as its agent found it.

    `fast_links` are the RDMA devices under `/sys/class/infiniband` (InfiniBand,
    RoCE or EFA), `efa` the subset driven by AWS EFA. `gpu_error` says why the
    GPU list may be incomplete (nvidia-smi failed or printed something
    unreadable); it is None when nvidia-smi ran cleanly or is not installed.
    """

    cpus: int
    memory_mb: int
    gpus: tuple[GpuInfo, ...] = ()
    fast_links: tuple[str, ...] = ()
    efa: tuple[str, ...] = ()
    dev_infiniband: bool = False
    runtimes: dict[str, str] = field(default_factory=dict, hash=False)
    # `runtimes` are the usable container runtimes (name -> path); these say more.
    runtime_versions: dict[str, str] = field(default_factory=dict, hash=False)
    runtimes_unusable: dict[str, str] = field(default_factory=dict, hash=False)
    python: str | None = None
    hostname: str = ""
    kernel: str = ""
    user: str = ""
    home: str | None = None
    gpu_error: str | None = None
    # Per-job limits (cgroups): whether the agent can hold jobs to them, and if
    # not (or not fully) why; `cgroup_version` 0 where none is usable.
    limits_enforced: bool = False
    limits_why: str | None = None
    cgroup_version: int = 0
    gpu_devices: bool = False  # the job's cgroup hides the other GPUs (v1 devices)


# --------------------------------------------------------------------------- nvidia-smi


def _parse_memory_mb(text: str, line_no: int, line: str) -> int:
    if text in _NA:
        return 0
    match = _MEMORY_RE.match(text)
    if match is None:
        raise FactsError(f"nvidia-smi line {line_no}: bad memory {text!r} in {line!r}")
    unit = (match.group(2) or "MiB").lower()
    return int(int(match.group(1)) * _MEMORY_TO_MB[unit])


def parse_nvidia_smi(csv_text: str) -> tuple[GpuInfo, ...]:
    """Parse `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader`.

    Each line is `0, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-...` (`nounits`
    output without `MiB` is accepted too). Blank lines are skipped; `[N/A]`
    gives an empty name or uuid and zero memory. A GPU name containing commas
    is kept whole. A line that is not of this shape (for instance nvidia-smi's
    "couldn't communicate with the NVIDIA driver") raises `FactsError` naming
    the line. The result is sorted by index; a repeated index is an error.
    """
    gpus: dict[int, GpuInfo] = {}
    for line_no, raw_line in enumerate(csv_text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 4:
            raise FactsError(
                f"nvidia-smi line {line_no}: expected 'index, name, memory, uuid', got {line!r}"
            )
        index_text, memory_text, uuid = parts[0], parts[-2], parts[-1]
        name = ", ".join(parts[1:-2])
        if not _INDEX_RE.match(index_text):
            raise FactsError(f"nvidia-smi line {line_no}: bad GPU index {index_text!r} in {line!r}")
        index = int(index_text)
        if index in gpus:
            raise FactsError(f"nvidia-smi line {line_no}: GPU index {index} appears twice")
        gpus[index] = GpuInfo(
            index=index,
            name="" if name in _NA else name,
            memory_mb=_parse_memory_mb(memory_text, line_no, line),
            uuid="" if uuid in _NA else uuid,
        )
    return tuple(gpus[i] for i in sorted(gpus))


def parse_meminfo(text: str) -> int:
    """The `MemTotal` of a `/proc/meminfo` text, in MiB."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "MemTotal":
            fields = value.split()
            if fields and re.fullmatch(r"[0-9]{1,18}", fields[0]):
                unit = fields[1].lower() if len(fields) > 1 else "kb"
                if unit not in ("kb", "kib"):
                    raise FactsError(f"meminfo: unexpected MemTotal unit {fields[1]!r}")
                return int(fields[0]) // 1024
            raise FactsError(f"meminfo: unreadable MemTotal line {line.strip()!r}")
    raise FactsError("meminfo: no MemTotal line")


# --------------------------------------------------------------------------- agent facts


def _get_int(raw: Mapping[str, Any], key: str, minimum: int) -> int:
    if key not in raw or raw[key] is None:
        raise FactsError(f"host facts: missing {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FactsError(f"host facts: {key!r} should be an integer, got {value!r}")
    if value < minimum:
        raise FactsError(f"host facts: {key!r} should be at least {minimum}, got {value}")
    return value


def _get_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FactsError(f"host facts: {key!r} should be a string, got {value!r}")
    return value


def _get_names(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise FactsError(f"host facts: {key!r} should be a list of strings, got {value!r}")
    return tuple(sorted(set(value)))


def _get_map(raw: Mapping[str, Any], key: str, what: str) -> dict[str, str]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FactsError(f"host facts: {key!r} should map {what}, got {value!r}")
    return dict(sorted(value.items()))


def facts_from_agent(raw: Mapping[str, Any]) -> HostFacts:
    """Build `HostFacts` from the `facts` object of the agent's `hello` reply.

    Fields (see docs/architecture.md): `hostname`, `cpus`, `memory_mb`,
    `nvidia_smi`, `nvidia_smi_error`, `infiniband`, `efa`, `dev_infiniband`,
    `runtimes` (usable container runtimes), `runtime_versions`, `runtimes_unusable`,
    `python`, `kernel`, `user`, `home`, `cgroups`. Only `cpus` and
    `memory_mb` are required; unknown fields are ignored (a newer agent may
    report more). A field of the wrong type raises `FactsError` naming it.

    Unreadable `nvidia-smi` output does not make the host unusable: the host
    gets no probed GPUs and `gpu_error` says why, so declared GPUs still work
    and the difference is reported by `effective_resources`.
    """
    if not isinstance(raw, Mapping):
        raise FactsError(f"host facts: expected an object, got {type(raw).__name__}")
    cpus = _get_int(raw, "cpus", 1)
    memory_mb = _get_int(raw, "memory_mb", 0)

    gpu_error = _get_str(raw, "nvidia_smi_error")
    smi = _get_str(raw, "nvidia_smi")
    gpus: tuple[GpuInfo, ...] = ()
    if smi is not None:
        try:
            gpus = parse_nvidia_smi(smi)
        except FactsError as exc:
            gpu_error = f"{gpu_error}; {exc}" if gpu_error else str(exc)

    dev_ib = raw.get("dev_infiniband", False)
    if dev_ib is None:
        dev_ib = False
    if not isinstance(dev_ib, bool):
        raise FactsError(f"host facts: 'dev_infiniband' should be true or false, got {dev_ib!r}")

    runtimes_raw = _get_map(raw, "runtimes", "names to paths")
    cg = raw.get("cgroups")
    if cg is not None and not isinstance(cg, Mapping):
        raise FactsError(f"host facts: 'cgroups' should be an object, got {cg!r}")
    cg = cg or {}

    return HostFacts(
        cpus=cpus,
        memory_mb=memory_mb,
        gpus=gpus,
        fast_links=_get_names(raw, "infiniband"),
        efa=_get_names(raw, "efa"),
        dev_infiniband=dev_ib,
        runtimes=runtimes_raw,
        runtime_versions=_get_map(raw, "runtime_versions", "names to versions"),
        runtimes_unusable=_get_map(raw, "runtimes_unusable", "names to reasons"),
        python=_get_str(raw, "python"),
        hostname=_get_str(raw, "hostname") or "",
        kernel=_get_str(raw, "kernel") or "",
        user=_get_str(raw, "user") or "",
        home=_get_str(raw, "home"),
        gpu_error=gpu_error,
        limits_enforced=cg.get("enforced") is True,
        limits_why=str(cg["why"]) if cg.get("why") else None,
        cgroup_version=int(cg.get("version") or 0),
        gpu_devices=cg.get("gpu_devices") is True,
    )


# --------------------------------------------------------------------------- declared vs probed


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def effective_resources(
    facts: HostFacts,
    declared_cpus: int | None,
    declared_memory_mb: int | None,
    declared_gpus: int | None,
    *,
    host: str | None = None,
) -> tuple[int, int, tuple[int, ...], list[str]]:
    """Merge declared (inventory) and probed resources.

    Returns `(cpus, memory_mb, gpu_indices, mismatches)`.
    A declared value (not None) always wins. Each declared value that differs
    from the probed one adds a sentence to `mismatches`, such as
    `node3: declared 8 GPUs but nvidia-smi shows 2`; `host` names the host in
    it (the probed hostname if not given).

    GPU indices: with no declared count, the probed indices. With a declared
    count `n`, the first `n` probed indices, topped up with the lowest unused
    integers when fewer were probed, so a declared count on a host without
    nvidia-smi gives `0..n-1` (what `CUDA_VISIBLE_DEVICES` would number them).
    """
    who = host or facts.hostname or "host"
    mismatches: list[str] = []

    cpus = facts.cpus
    if declared_cpus is not None:
        if declared_cpus != facts.cpus:
            mismatches.append(
                f"{who}: declared {_count(declared_cpus, 'CPU')} but the host reports {facts.cpus}"
            )
        cpus = declared_cpus

    memory_mb = facts.memory_mb
    if declared_memory_mb is not None:
        if declared_memory_mb != facts.memory_mb:
            mismatches.append(
                f"{who}: declared {declared_memory_mb} MB of memory "
                f"but the host reports {facts.memory_mb} MB"
            )
        memory_mb = declared_memory_mb

    probed = tuple(gpu.index for gpu in facts.gpus)
    if declared_gpus is None:
        indices = probed
    else:
        if declared_gpus != len(probed):
            sentence = (
                f"{who}: declared {_count(declared_gpus, 'GPU')} but nvidia-smi shows {len(probed)}"
            )
            if facts.gpu_error:
                sentence += f" ({facts.gpu_error})"
            mismatches.append(sentence)
        chosen = list(probed[:declared_gpus])
        taken = set(chosen)
        candidate = 0
        while len(chosen) < declared_gpus:
            if candidate not in taken:
                chosen.append(candidate)
                taken.add(candidate)
            candidate += 1
        indices = tuple(sorted(chosen))
    return cpus, memory_mb, indices, mismatches
