"""Fair-share arithmetic: decayed usage per user, shares, and the order they give.

A fair-share queue runs first the jobs of the user who has used least for their
share, so a user who submits 5,000 jobs does not lock out one who submits 5.
Usage is charged in CPU-seconds (a GPU-second counts as `gpu_weight`
CPU-seconds) and decays exponentially with a half-life, as in Slurm's
multifactor plugin: what you ran a week ago counts half as much as what you ran
today (with the default half-life of 7 days).

The controller keeps one `Usage` per user (value and the time it refers to),
adds each finished attempt's `charge`, and passes `Usage.at(now)` for every
user to `schedule(usage=...)`. Within one pass the scheduler also charges each
job it starts (for its time limit, or `DEFAULT_HORIZON_S` when it has none), so
a pass interleaves users rather than giving every free slot to the user who was
lowest when it began.

Everything here is pure arithmetic on floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DEFAULT_HALF_LIFE_S = 7 * 24 * 3600.0
"""Slurm's default PriorityDecayHalfLife."""

DEFAULT_GPU_WEIGHT = 8.0
"""CPU-seconds one GPU-second is worth."""

DEFAULT_HORIZON_S = 3600.0
"""How long a job without a time limit is assumed to run, when charged within a pass."""

DEFAULT_SHARE = 1.0
"""The share of a user not listed in the shares."""


def decay(value: float, elapsed_s: float, half_life_s: float = DEFAULT_HALF_LIFE_S) -> float:
    """`value` after `elapsed_s` seconds of exponential decay (never grows it back)."""
    if half_life_s <= 0:
        raise ValueError(f"half-life must be positive, got {half_life_s}")
    if elapsed_s <= 0:
        return value
    return value * math.pow(0.5, elapsed_s / half_life_s)


def charge(cpus: int, gpus: int, seconds: float, gpu_weight: float = DEFAULT_GPU_WEIGHT) -> float:
    """The usage, in CPU-seconds, of holding `cpus` and `gpus` for `seconds`."""
    return max(seconds, 0.0) * (cpus + gpu_weight * gpus)


@dataclass(frozen=True, slots=True)
class Usage:
    """A user's decayed usage: `value` CPU-seconds as of time `as_of`."""

    value: float = 0.0
    as_of: float = 0.0

    def at(self, now: float, half_life_s: float = DEFAULT_HALF_LIFE_S) -> float:
        """The value decayed to `now`."""
        return decay(self.value, now - self.as_of, half_life_s)

    def add(self, amount: float, at: float, half_life_s: float = DEFAULT_HALF_LIFE_S) -> Usage:
        """This usage decayed to `at`, plus `amount` charged at `at`.

        A charge dated before `as_of` (an attempt collected late) is decayed to
        `as_of` instead, so the record never moves back in time.
        """
        if at >= self.as_of:
            return Usage(self.at(at, half_life_s) + amount, at)
        return Usage(self.value + decay(amount, self.as_of - at, half_life_s), self.as_of)


def share_of(user: str, shares: Mapping[str, float]) -> float:
    share = shares.get(user, DEFAULT_SHARE)
    return share if share > 0 else 1e-9  # a zero share goes last, never divides by zero


def ordering_key(usage: float, share: float) -> float:
    """Lower goes first: usage per unit of share."""
    return usage / share


def fair_share_factor(usage: float, share: float, total_usage: float, total_shares: float) -> float:
    """Slurm's classic fair-share factor 2**(-(U/Utotal)/(S/Stotal)), in (0, 1].

    1.0 for a user with no usage, 0.5 for one whose usage fraction equals their
    share fraction, towards 0 for one far over their share. It orders users the
    same way as `ordering_key` and is what listings show.
    """
    if total_usage <= 0 or usage <= 0:
        return 1.0
    if share <= 0 or total_shares <= 0:
        return 0.0
    return math.pow(2.0, -(usage / total_usage) / (share / total_shares))


def factors(usage: Mapping[str, float], shares: Mapping[str, float]) -> dict[str, float]:
    """The fair-share factor of every user in `usage` or `shares`."""
    users = set(usage) | set(shares)
    total_usage = sum(max(usage.get(u, 0.0), 0.0) for u in users)
    total_shares = sum(share_of(u, shares) for u in users)
    return {
        u: fair_share_factor(usage.get(u, 0.0), share_of(u, shares), total_usage, total_shares)
        for u in users
    }


@dataclass(frozen=True, slots=True)
class ShareRow:
    """One share identifier of a fair-share queue, as `hpcbatch shares` lists it."""

    share_id: str
    weight: float
    usage: float  # decayed CPU-seconds
    norm_usage: float  # its fraction of the listed identifiers' usage
    norm_shares: float  # its fraction of their weights
    factor: float  # 2 ** (-norm_usage / norm_shares): 1.0 unused, 0.5 on its share

    def as_dict(self) -> dict[str, float | str]:
        return {
            "share_id": self.share_id,
            "weight": self.weight,
            "usage": self.usage,
            "norm_usage": self.norm_usage,
            "norm_shares": self.norm_shares,
            "factor": self.factor,
        }


def share_rows(
    usage: Mapping[str, float], shares: Mapping[str, float], ids: Iterable[str] = ()
) -> list[ShareRow]:
    """The identifiers of `shares`, `ids` and those with usage, the first to be served
    first (highest factor; ties by name)."""
    names = set(shares) | set(ids) | {u for u, v in usage.items() if v > 0}
    used = {n: max(usage.get(n, 0.0), 0.0) for n in names}
    weight = {n: share_of(n, shares) for n in names}
    total_u = sum(used.values())
    total_s = sum(weight.values())
    rows = [
        ShareRow(
            n,
            weight[n],
            used[n],
            used[n] / total_u if total_u > 0 else 0.0,
            weight[n] / total_s if total_s > 0 else 0.0,
            fair_share_factor(used[n], weight[n], total_u, total_s),
        )
        for n in names
    ]
    rows.sort(key=lambda r: (-r.factor, r.usage / r.weight, r.share_id))
    return rows
