"""A job's request as the controller reads it: typed and frozen, built once from its JSON.

The API validates a submission (models.JobRequest, pydantic) and the store
keeps it as JSON, unchanged (the `request` of a job row; array children share
their parent's). Along the job's path (scheduling, launch, exit, retries) the
controller reads this instead: every field typed, so `mypy --strict` follows a
job from submit to exit, with the defaults a request stored by an older
version lacks. `raw` is the JSON itself, for the store and for `show`; the
multi-node helpers of core.gang read their node ranges from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hpcbatch.core.hostlist import expand
from hpcbatch.core.retry import ExitRule, RetryStrategy, rule_from_fields
from hpcbatch.core.targeting import Target, make_target


@dataclass(frozen=True, slots=True)
class WarnSignal:
    """`--signal`: the signal sent `before_s` before the time limit."""

    name: str
    before_s: float
    batch_only: bool


@dataclass(frozen=True, slots=True)
class JobSpec:
    raw: Mapping[str, Any]
    name: str
    queue: str | None
    share_id: str | None
    script: str
    args: tuple[str, ...]
    cpus: int
    memory_mb: int | None
    gpus: int
    nodes: int
    ntasks: int | None
    ntasks_per_node: int | None
    exclusive: bool
    fabric: str | None
    time_limit_s: int | None
    output: str | None
    error: str | None
    workdir: str | None
    submit_dir: str | None
    env: Mapping[str, str]
    secrets: Mapping[str, str]  # VAR -> secret name (the value is resolved at launch)
    main_node: int
    launch_mode: str
    array: str | None
    dependency: str | None
    image: str | None
    mounts: tuple[str, ...]
    definition: str | None
    retry: RetryStrategy | None
    warn_signal: WarnSignal | None
    # An array child's: the throttle (`%N`) and the whole array's size and index range.
    array_throttle: int | None
    array_count: int | None
    array_min: int | None
    array_max: int | None
    # Host targeting and job control (core.targeting, core.jobcontrol).
    target: Target | None
    begin: float | None
    deadline: float | None
    priority: int
    nice: int
    requeue: bool | None
    stdin: bool
    # The submitter's umask (None: the hosts' default, 077).
    umask: int | None = None

    @property
    def is_gang(self) -> bool:
        """Whether the job runs on more than one node."""
        return self.nodes > 1

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> JobSpec:
        get = raw.get
        return cls(
            raw=raw,
            name=str(get("name") or "job"),
            queue=get("queue"),
            share_id=get("share_id") or None,
            script=str(get("script") or ""),
            args=tuple(get("args") or ()),
            cpus=int(get("cpus") or 1),
            memory_mb=get("memory_mb"),
            gpus=int(get("gpus") or 0),
            nodes=int(get("nodes") or 1),
            ntasks=get("ntasks"),
            ntasks_per_node=get("ntasks_per_node"),
            exclusive=bool(get("exclusive")),
            fabric=get("fabric"),
            time_limit_s=get("time_limit_s"),
            output=get("output"),
            error=get("error"),
            workdir=get("workdir"),
            submit_dir=get("submit_dir"),
            env=dict(get("env") or {}),
            secrets=dict(get("secrets") or {}),
            main_node=int(get("main_node") or 0),
            launch_mode=str(get("launch_mode") or "main"),
            array=get("array"),
            dependency=get("dependency"),
            image=get("image") or None,
            mounts=tuple(get("mounts") or ()),
            definition=get("definition"),
            retry=_retry(get("retry")),
            warn_signal=_warn(get("warn_signal")),
            array_throttle=get("array_throttle"),
            array_count=get("array_count"),
            array_min=get("array_min"),
            array_max=get("array_max"),
            target=make_target(
                tuple(expand(str(get("nodelist") or ""))) if get("nodelist") else (),
                tuple(expand(str(get("exclude") or ""))) if get("exclude") else (),
                get("constraint"),
                get("gpu_type"),
            ),
            begin=get("begin"),
            deadline=get("deadline"),
            priority=int(get("priority") or 0),
            nice=int(get("nice") or 0),
            requeue=get("requeue"),
            stdin=bool(get("stdin")),
            umask=get("umask"),
        )


def _retry(raw: Mapping[str, Any] | None) -> RetryStrategy | None:
    """The retry strategy of a stored request (snake_case fields), if it has one."""
    if not raw:
        return None
    rules: list[ExitRule] = []
    for i, r in enumerate(raw.get("evaluate_on_exit") or []):
        rules.append(rule_from_fields(r, f"retry.evaluate_on_exit[{i}]"))
    return RetryStrategy(int(raw.get("attempts") or 1), tuple(rules))


def _warn(raw: Mapping[str, Any] | None) -> WarnSignal | None:
    if not raw:
        return None
    return WarnSignal(str(raw["name"]), float(raw.get("before_s", 60)), bool(raw.get("batch_only")))
