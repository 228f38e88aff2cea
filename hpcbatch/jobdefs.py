"""Job definitions: the validated template, and a submission made from one.

A definition (AWS Batch's `registerJobDefinition`) is a reusable, versioned
template: a command or a script, resources, environment, parameters with
defaults, a retry strategy and a timeout. A submission names it
(`name[:revision]`) and may override the command, resources, environment,
parameters, timeout and retries; `request_from_definition` merges the two into
the same plain request a job script produces, so the rest of the controller
never knows the difference.

Parameters follow AWS Batch: `Ref::name` in a command argument is replaced by
the parameter's value (the submission's, else the definition's default); a
reference to an unknown parameter is left as written (see `core.params`).
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from hpcbatch.core.params import substitute
from hpcbatch.core.submitargv import CONTROL_KEYS
from hpcbatch.core.text import control_problem
from hpcbatch.models import (
    Name,
    NodeRange,
    RetryStrategy,
    StrictModel,
    Tags,
    check_environment,
    check_secret_refs,
)

DEFINITION_REF_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})(?::(?P<rev>\d+))?$")


class JobDefinition(StrictModel):
    """A registered template. Exactly one of `command` (an argv) and `script` (a text)."""

    name: Name
    command: list[str] | None = Field(default=None, min_length=1)
    script: str | None = Field(default=None, min_length=1)
    image: str | None = None
    mounts: list[str] = Field(default_factory=list, max_length=100)
    cpus: int = Field(default=1, ge=1, le=100_000)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int = Field(default=0, ge=0, le=1024)
    # `num_nodes` is AWS Batch's name for it.
    nodes: int = Field(
        default=1, ge=1, le=10_000, validation_alias=AliasChoices("nodes", "num_nodes")
    )
    main_node: int = Field(default=0, ge=0)
    launch_mode: Literal["main", "all"] | None = None
    node_ranges: list[NodeRange] = Field(default_factory=list, max_length=10_000)
    fabric: str | None = None
    exclusive: bool = False
    environment: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, max_length=100)  # VAR -> secret
    parameters: dict[str, str] = Field(default_factory=dict)
    retry_strategy: RetryStrategy | None = None
    timeout_s: int | None = Field(default=None, ge=1)
    description: str | None = Field(default=None, max_length=2000)
    tags: Tags = Field(default_factory=dict)
    # AWS Batch's propagateTags: the definition's tags become its jobs' tags too.
    propagate_tags: bool = False

    @model_validator(mode="after")
    def _one_body(self) -> JobDefinition:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' (a list of arguments) and 'script'")
        if self.main_node >= self.nodes:
            raise ValueError(f"main_node {self.main_node} is not below nodes ({self.nodes})")
        return self

    @field_validator("environment")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return check_environment(env)

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, refs: dict[str, str]) -> dict[str, str]:
        return check_secret_refs(refs)

    @field_validator("description", "image", "fabric")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        # Shown to every user by `hpcbatch definitions`: no escape sequences.
        problem = None if value is None else control_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class DefinitionOverrides(StrictModel):
    """What a submission from a definition may change (AWS Batch's container overrides)."""

    definition: str
    name: str | None = Field(default=None, min_length=1, max_length=200)
    queue: str | None = None
    share_id: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    parameters: dict[str, str] = Field(default_factory=dict)
    cpus: int | None = Field(default=None, ge=1, le=100_000)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0, le=1024)
    nodes: int | None = Field(default=None, ge=1, le=10_000)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, max_length=100)
    time_limit_s: int | None = Field(default=None, ge=1)
    retry_attempts: int | None = Field(default=None, ge=1, le=10)
    array: str | None = None
    dependency: str | None = None
    output: str | None = None
    error: str | None = None
    workdir: str | None = None
    submit_dir: str | None = None
    umask: int | None = Field(default=None, ge=0, le=0o777)
    ntasks_per_node: int | None = Field(default=None, ge=1)
    fabric: str | None = None
    exclusive: bool | None = None
    warn_signal: dict[str, Any] | None = None  # `--signal`: checked as JobRequest.warn_signal
    # Host targeting and job control (issue 20): checked as JobRequest's.
    nodelist: str | None = None
    exclude: str | None = None
    constraint: str | None = None
    gpu_type: str | None = None
    begin: float | None = None
    deadline: float | None = None
    hold: bool | None = None
    priority: int | None = None
    nice: int | None = None
    requeue: bool | None = None
    tags: dict[str, str] | None = None  # the job's own (over a propagated definition's)
    propagate_tags: bool | None = None  # SubmitJob's propagateTags: over the definition's


def parse_definition_ref(text: str) -> tuple[str, int | None]:
    """`name` or `name:revision` -> (name, revision or None for the latest active)."""
    m = DEFINITION_REF_RE.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a definition reference (NAME or NAME:REVISION)")
    rev = m.group("rev")
    return m.group("name"), int(rev) if rev is not None else None


def command_script(argv: list[str]) -> str:
    """A POSIX shell script that runs `argv` exactly (each argument quoted)."""
    return "#!/bin/sh\nexec " + shlex.join(argv) + "\n"


def request_from_definition(
    defn: JobDefinition, revision: int, over: DefinitionOverrides
) -> dict[str, Any]:
    """The plain job request (the fields of `models.JobRequest`) for this submission."""
    argv = over.command if over.command is not None else defn.command
    if argv is not None:
        script = command_script(substitute(argv, defn.parameters, over.parameters))
    else:
        assert defn.script is not None
        script = defn.script
    retry = defn.retry_strategy.model_dump() if defn.retry_strategy else None
    if over.retry_attempts is not None:
        retry = {**(retry or {"evaluate_on_exit": []}), "attempts": over.retry_attempts}
    request: dict[str, Any] = {
        "name": over.name or defn.name,
        "script": script,
        "args": [],
        "cpus": over.cpus or defn.cpus,
        "memory_mb": over.memory_mb or defn.memory_mb,
        "gpus": defn.gpus if over.gpus is None else over.gpus,
        "nodes": over.nodes or defn.nodes,
        "exclusive": defn.exclusive if over.exclusive is None else over.exclusive,
        "fabric": over.fabric or defn.fabric,
        "time_limit_s": over.time_limit_s or defn.timeout_s,
        "env": {**defn.environment, **over.env},
        "secrets": {**defn.secrets, **over.secrets},
        "definition": f"{defn.name}:{revision}",
        "retry": retry,
    }
    propagate = defn.propagate_tags if over.propagate_tags is None else over.propagate_tags
    tags = {**(defn.tags if propagate else {}), **(over.tags or {})}
    if tags:
        request["tags"] = tags
    if defn.nodes > 1 or (over.nodes or 1) > 1:
        request["main_node"] = defn.main_node
        if defn.launch_mode is not None:
            request["launch_mode"] = defn.launch_mode
        if defn.node_ranges:
            request["node_ranges"] = [r.model_dump(exclude_none=True) for r in defn.node_ranges]
    if defn.image is not None:
        request["image"] = defn.image
        if defn.mounts:
            request["mounts"] = list(defn.mounts)
    for key in (
        "queue",
        "share_id",
        "array",
        "dependency",
        "output",
        "error",
        "workdir",
        "submit_dir",
        "umask",
        "ntasks_per_node",
        "warn_signal",
        *CONTROL_KEYS,
    ):
        value = getattr(over, key)
        if value is not None:
            request[key] = value
    return {k: v for k, v in request.items() if v is not None}
