"""Validated shapes of everything a user or operator hands to hpcbatch.

Every model is strict (`extra="forbid"`): a misspelt field is an error naming
the field, not a silently ignored key. The inventory models describe the
cluster; `JobRequest` is one submission after directives and command-line
options have been merged. These are the controller's input contracts; the CLI
never imports this module (pydantic costs start-up time), it sends plain JSON.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcbatch.core.containers import ImageError, parse_image, parse_mounts
from hpcbatch.core.gang import NodeRangeError, check_node_ranges
from hpcbatch.core.retry import RetryStrategyError, rule_from_fields

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE)]


ContainerRuntime = Literal["podman", "docker", "apptainer", "singularity", "ch-run", "bwrap"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- inventory


class HostDefaults(StrictModel):
    """Values every host inherits unless it sets its own."""

    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    identity: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    work_dir: str = "~/.hpcbatch"
    python: str = "python3"


class HostSpec(StrictModel):
    """One host of the inventory. Declared resources override probed facts."""

    name: Name
    address: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity: str | None = None
    known_hosts: str | None = None
    ssh_config: str | None = None
    work_dir: str | None = None
    python: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    fabric: str | None = None
    cpus: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0)


class ComputeEnvSpec(StrictModel):
    """A named set of hosts: listed (hostlist expressions) or selected by labels."""

    name: Name
    hosts: list[str] = Field(default_factory=list)
    selector: dict[str, str] = Field(default_factory=dict)
    state: Literal["ENABLED", "DISABLED"] = "ENABLED"
    max_vcpus: int | None = Field(default=None, ge=1)
    # A shell command run on each host when it connects (before it takes work) and
    # every interval: a non-zero exit drains the host, its output the reason.
    health_check: str | None = Field(default=None, min_length=1, max_length=4096)
    health_check_interval_s: int = Field(default=300, ge=1, le=86_400)
    health_check_timeout_s: int = Field(default=60, ge=1, le=3600)
    # Container runtimes allowed here, in order of preference (docs/containers.md).
    container_runtimes: list[ContainerRuntime] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _some_hosts(self) -> ComputeEnvSpec:
        if not self.hosts and not self.selector:
            raise ValueError("needs 'hosts' or 'selector' (or both)")
        return self


class QueueSpec(StrictModel):
    """A job queue: priority 0-1000 (higher first), compute environments in order."""

    name: Name
    priority: int = Field(default=1, ge=0, le=1000)
    compute_environments: list[str] = Field(min_length=1)
    state: Literal["ENABLED", "DISABLED"] = "ENABLED"
    policy: Literal["FIFO", "FAIRSHARE"] = "FIFO"
    default_time_limit_s: int | None = Field(default=None, ge=1)
    max_running: int | None = Field(default=None, ge=1)
    max_vcpus: int | None = Field(default=None, ge=1)
    fabric: str | None = None


class Inventory(StrictModel):
    """A whole cluster description, as loaded from one TOML file."""

    defaults: HostDefaults = Field(default_factory=HostDefaults)
    hosts: list[HostSpec] = Field(min_length=1)
    compute_environments: list[ComputeEnvSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    default_queue: str | None = None


# --------------------------------------------------------------------------- jobs

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NodeRange(StrictModel):
    """What some node indices of a multi-node job run, overriding the job's defaults.

    `range` is as AWS Batch's `targetNodes`: `"0"`, `"1:"` (to the last node),
    `":3"`, `"2:5"`, both ends inclusive. Nodes outside every range run the job's
    own script. Resources size the hosts (every host of a multi-node job must fit
    the largest range: whole hosts are taken).
    """

    range: str = Field(min_length=1, max_length=40)
    script: str | None = Field(default=None, min_length=1)
    args: list[str] | None = None
    cpus: int | None = Field(default=None, ge=1, le=100_000)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0, le=1024)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return check_environment(env)


def check_environment(env: dict[str, str]) -> dict[str, str]:
    """Environment variables a job may be given: valid names, no NUL bytes."""
    for key, value in env.items():
        if not ENV_NAME_RE.match(key):
            raise ValueError(f"environment variable name {key!r} is not valid")
        if "\0" in value:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    return env


class RetryRule(StrictModel):
    """One `evaluateOnExit` rule: globs matched against the attempt's end; first match wins."""

    on_exit_code: str | None = Field(default=None, max_length=512)
    on_reason: str | None = Field(default=None, max_length=512)
    on_status_reason: str | None = Field(default=None, max_length=512)
    action: Literal["RETRY", "EXIT"]

    @field_validator("action", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_condition(self) -> RetryRule:
        if self.on_exit_code is None and self.on_reason is None and self.on_status_reason is None:
            raise ValueError("a rule needs on_exit_code, on_reason or on_status_reason")
        try:
            rule_from_fields(self.model_dump(), "rule")
        except RetryStrategyError as exc:
            raise ValueError(str(exc).removeprefix("rule").lstrip(".: ")) from None
        return self


class RetryStrategy(StrictModel):
    """How many attempts a job gets (1-10) and which endings are worth another."""

    attempts: int = Field(default=1, ge=1, le=10)
    evaluate_on_exit: list[RetryRule] = Field(default_factory=list, max_length=5)


class WarnSignal(StrictModel):
    """`--signal=[B:]SIG@SECONDS`: a signal sent that long before the time limit
    (to the job's whole process group, or with `batch_only` to the script alone)."""

    name: str = Field(pattern=r"^[A-Z][A-Z0-9+-]{0,11}$")
    before_s: int = Field(default=60, ge=0, le=65535)
    batch_only: bool = False

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        import signal

        if f"SIG{name}" not in signal.Signals.__members__:
            raise ValueError(f"{name!r} is not a signal name (e.g. USR1, TERM)")
        return name


class JobRequest(StrictModel):
    """One submission, after merging script directives and command-line options.

    `script` is the full text the host runs (a shebang line picks the
    interpreter, `/bin/sh` otherwise); `args` are passed to it literally.
    """

    name: str = Field(default="job", min_length=1, max_length=200)
    queue: str | None = None
    script: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    cpus: int = Field(default=1, ge=1, le=100_000)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int = Field(default=0, ge=0, le=1024)
    nodes: int = Field(default=1, ge=1, le=10_000)
    ntasks: int | None = Field(default=None, ge=1)
    ntasks_per_node: int | None = Field(default=None, ge=1)
    exclusive: bool = False
    fabric: str | None = None
    time_limit_s: int | None = Field(default=None, ge=1)
    output: str | None = None
    error: str | None = None
    workdir: str | None = None
    submit_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    script_path: str | None = None
    # Multi-node jobs (docs/mpi.md): the main node's index (default 0), the
    # launch mode (`main`: the script runs on the main node only; `all`: on
    # every node), and per-node-range overrides.
    main_node: int | None = Field(default=None, ge=0)
    launch_mode: Literal["main", "all"] | None = None
    node_ranges: list[NodeRange] = Field(default_factory=list, max_length=10_000)
    array: str | None = None  # `--array`: see core.arrays
    dependency: str | None = None  # `--dependency`: see core.dependencies
    # A container image (docs/containers.md): an OCI name, a directory or a SIF file;
    # `mounts` are extra binds, `SRC[:DST][:ro]`, several per item comma-separated.
    image: str | None = None
    mounts: list[str] = Field(default_factory=list, max_length=100)
    # Set when the request was built from a registered definition (`name:revision`).
    definition: str | None = None
    retry: RetryStrategy | None = None
    warn_signal: WarnSignal | None = None

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return check_environment(env)

    @field_validator("image")
    @classmethod
    def _image_ref(cls, image: str | None) -> str | None:
        if image is None or not image.strip():
            return None
        try:
            parse_image(image)
        except ImageError as exc:
            raise ValueError(str(exc)) from None
        return image.strip()

    @field_validator("mounts")
    @classmethod
    def _mount_specs(cls, mounts: list[str]) -> list[str]:
        try:
            return [m.spec() for m in parse_mounts(mounts)]
        except ImageError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _multi_node(self) -> JobRequest:
        if self.mounts and self.image is None:
            raise ValueError("mounts are for containers: give an image too")
        if self.main_node is not None and self.main_node >= self.nodes:
            raise ValueError(
                f"main_node {self.main_node} is not a node of a {self.nodes}-node job "
                f"(node indices are 0..{self.nodes - 1})"
            )
        try:
            check_node_ranges([{"range": r.range} for r in self.node_ranges], self.nodes)
        except NodeRangeError as exc:
            raise ValueError(str(exc)) from None
        return self

    @field_validator("name")
    @classmethod
    def _name_printable(cls, name: str) -> str:
        if "\0" in name:
            raise ValueError("job name contains a NUL byte")
        return name
