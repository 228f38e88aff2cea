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

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from hpcbatch.core.containers import ImageError, parse_image, parse_mounts
from hpcbatch.core.gang import NodeRangeError, check_node_ranges
from hpcbatch.core.retry import RetryStrategyError, rule_from_fields
from hpcbatch.core.text import control_problem

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_RE)]


ContainerRuntime = Literal["podman", "docker", "apptainer", "singularity", "ch-run", "bwrap"]


RunAs = Literal["login", "submitter"]

TAG_KEY_RE = r"^[A-Za-z0-9_.:/=+\-@ ]{1,128}$"


def _plain_tag(value: str) -> str:
    problem = control_problem(value)  # shown to others: no escape sequences
    if problem is not None:
        raise ValueError(problem)
    return value


Tags = Annotated[
    dict[
        Annotated[str, Field(pattern=TAG_KEY_RE)],
        Annotated[str, Field(max_length=256), AfterValidator(_plain_tag)],
    ],
    Field(max_length=50),
]
"""AWS Batch's tags: at most 50, keys of 1-128 characters (letters, digits, spaces
and `_.:/=+-@`), values of at most 256."""


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
    # "login": every job runs as the SSH login (a personal cluster); "submitter": each
    # job runs as its submitting user's account on the host (docs/security.md).
    run_as: RunAs = "login"
    # run_as = "submitter": accounts below this uid (and root) are refused at submit.
    min_uid: int = Field(default=1000, ge=1)


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
    run_as: RunAs | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    # Names `-C/--constraint` matches (as Slurm's node features), besides the labels.
    features: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:+\-/]{1,64}$")]] = Field(
        default_factory=list
    )
    fabric: str | None = None
    cpus: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    gpus: int | None = Field(default=None, ge=0)
    # Lower fills first within a compute environment (a cost, as Slurm's node Weight).
    weight: int = Field(default=1, ge=0, le=1_000_000)
    # The GPUs' type for `--gres=gpu:TYPE:N` (e.g. h100); default: read from the probed name.
    gpu_type: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,31}$")


LogCollection = Literal["off", "on_exit"]


class ComputeEnvSpec(StrictModel):
    """A named set of hosts: listed (hostlist expressions) or selected by labels."""

    name: Name
    hosts: list[str] = Field(default_factory=list)
    selector: dict[str, str] = Field(default_factory=dict)
    state: Literal["ENABLED", "DISABLED"] = "ENABLED"
    max_vcpus: int | None = Field(default=None, ge=1)
    # How hosts are picked (docs/scheduling.md): pack, pack what is up first, or spread.
    allocation_strategy: Literal["BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPREAD"] = "BEST_FIT"
    # A shell command run on each host when it connects (before it takes work) and
    # every interval: a non-zero exit drains the host, its output the reason.
    health_check: str | None = Field(default=None, min_length=1, max_length=4096)
    health_check_interval_s: int = Field(default=300, ge=1, le=86_400)
    health_check_timeout_s: int = Field(default=60, ge=1, le=3600)
    # Container runtimes allowed here, in order of preference (docs/containers.md).
    container_runtimes: list[ContainerRuntime] | None = Field(default=None, min_length=1)
    # Elastic capacity (docs/elastic.md): with a resume_command, hosts start powered
    # down and are resumed for work, suspended after idle_time_s beyond min_vcpus.
    min_vcpus: int = Field(default=0, ge=0)
    desired_vcpus: int | None = Field(default=None, ge=0)
    idle_time_s: int = Field(default=300, ge=1, le=7 * 86_400)
    resume_command: str | None = Field(default=None, min_length=1, max_length=4096)
    suspend_command: str | None = Field(default=None, min_length=1, max_length=4096)
    resume_timeout_s: int = Field(default=600, ge=1, le=86_400)
    tags: Tags = Field(default_factory=dict)
    # Copy each attempt's output back to the controller when it ends (docs/operations.md);
    # a queue's own setting wins.
    log_collection: LogCollection | None = None

    @model_validator(mode="after")
    def _some_hosts(self) -> ComputeEnvSpec:
        if not self.hosts and not self.selector:
            raise ValueError("needs 'hosts' or 'selector' (or both)")
        if (self.resume_command is None) != (self.suspend_command is None):
            raise ValueError("resume_command and suspend_command go together: give both")
        if self.max_vcpus is not None and self.min_vcpus > self.max_vcpus:
            raise ValueError(f"min_vcpus {self.min_vcpus} is above max_vcpus {self.max_vcpus}")
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
    # Fair share (policy = "FAIRSHARE", docs/scheduling.md): weight per share
    # identifier (1 when not listed), the usage half-life, and the percentage of the
    # queue's vCPUs kept for identifiers with nothing running (AWS Batch's).
    shares: dict[Name, float] = Field(default_factory=dict)
    share_decay_half_life_s: int | None = Field(default=None, ge=60, le=10 * 365 * 86_400)
    compute_reservation: int = Field(default=0, ge=0, le=99)
    # At once per user (or per share identifier, limits_per = "share") in this queue.
    limits_per: Literal["user", "share"] = "user"
    max_running_per_user: int | None = Field(default=None, ge=1)
    max_vcpus_per_user: int | None = Field(default=None, ge=1)
    max_gpus_per_user: int | None = Field(default=None, ge=0)
    max_nodes_per_user: int | None = Field(default=None, ge=1)
    tags: Tags = Field(default_factory=dict)
    log_collection: LogCollection | None = None  # over its compute environments'

    @field_validator("shares")
    @classmethod
    def _positive_shares(cls, shares: dict[str, float]) -> dict[str, float]:
        for name, weight in shares.items():
            if not weight > 0:
                raise ValueError(f"shares.{name}: a weight must be above 0, got {weight}")
        return shares


ADMIN_RE = r"^@?[A-Za-z_][A-Za-z0-9_.\-]{0,63}\$?$"
"""A user name, or `@` and a group name (POSIX portable names, as useradd takes)."""


class ApiSpec(StrictModel):
    """The controller's socket API, shared by every local user (docs/security.md)."""

    # Open connections one user may hold at once (root and the controller's user
    # are not counted): one user's scripts cannot use up the controller's files.
    max_connections_per_user: int = Field(default=128, ge=1, le=100_000)
    # A connection with no request in progress for this long is closed (a `wait`
    # or a `watch` stream in progress is not idle).
    idle_timeout_s: float = Field(default=600.0, ge=1.0, le=86_400.0)


class MetricsSpec(StrictModel):
    """`[metrics]`: where the controller serves Prometheus metrics (off when unset)."""

    address: str | None = Field(default=None, pattern=r"^(\[[0-9A-Fa-f:]+\]|[^:\s]*):[0-9]{1,5}$")


class NotificationsSpec(StrictModel):
    """`[notifications]`: how job mail (`--mail-type`) leaves the controller."""

    smtp: str | None = Field(default=None, pattern=r"^[^:\s]+:[0-9]{1,5}$")  # else sendmail
    sendmail: str = "/usr/sbin/sendmail"
    sender: str = Field(default="hpcbatch", alias="from", max_length=320)
    # A user's address when --mail-user is not given: USER@mail_domain, or USER
    # alone (local delivery) when unset.
    mail_domain: str | None = None


class WebhookSpec(StrictModel):
    """`[[webhooks]]`: an HTTP endpoint that receives matching events as signed POSTs."""

    name: Name
    url: str = Field(pattern=r"^https?://[^\s]+$")
    # Which events: job states (SUCCEEDED, FAILED, RUNNING, ...) and `host` for host
    # changes; empty: every event.
    events: list[str] = Field(default_factory=list)
    secret: str | None = Field(default=None, min_length=16)
    secret_file: str | None = None  # read at start-up (keeps the secret out of the inventory)


class RetentionSpec(StrictModel):
    """`[retention]`: how long finished jobs and their traces are kept (docs/operations.md).

    30 days by default: longer than AWS Batch's 7 (a job is there to look at after
    a week's leave) and a whole monthly accounting period (`acct` reads job records).
    """

    jobs_days: float = Field(default=30.0, gt=0, le=36_500)
    attempt_dirs_days: float = Field(default=7.0, gt=0, le=36_500)
    interval_s: float = Field(default=3600.0, ge=1, le=7 * 86_400)
    enabled: bool = True
    # What `log_collection = "on_exit"` keeps of one job, all its attempts, nodes and
    # streams together (compressed in the store; the start of each stream is kept).
    log_cap_mb: float = Field(default=10.0, gt=0, le=10_000)


class Inventory(StrictModel):
    """A whole cluster description, as loaded from one TOML file."""

    defaults: HostDefaults = Field(default_factory=HostDefaults)
    hosts: list[HostSpec] = Field(min_length=1)
    compute_environments: list[ComputeEnvSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    default_queue: str | None = None
    # Who administers the cluster besides root and the controller's own user:
    # user names and `@group` names (docs/security.md).
    admins: list[Annotated[str, Field(pattern=ADMIN_RE)]] = Field(default_factory=list)
    api: ApiSpec = Field(default_factory=ApiSpec)

    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    webhooks: list[WebhookSpec] = Field(default_factory=list)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)


# --------------------------------------------------------------------------- jobs

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# Slurm's --mail-type words; ARRAY_TASKS, INVALID_DEPEND, STAGE_OUT and TIME_LIMIT
# are accepted for scripts written for Slurm (see docs/observability.md).
MAIL_TYPES = frozenset(
    {"NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT",
     "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS"}
)  # fmt: skip


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


SECRET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_secret_refs(refs: dict[str, str]) -> dict[str, str]:
    """`--secret VAR=NAME` pairs: a valid variable name, a valid secret name."""
    for var, name in refs.items():
        if not ENV_NAME_RE.match(var):
            raise ValueError(f"environment variable name {var!r} is not valid")
        if not SECRET_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a secret name (for {var})")
    return refs


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


PLAIN_FIELDS = (
    "name", "queue", "fabric", "output", "error", "workdir", "submit_dir", "script_path",
    "array", "dependency", "image", "definition",
)  # fmt: skip
"""The request's one-line strings: refused with a control character in them."""


class JobRequest(StrictModel):
    """One submission, after merging script directives and command-line options.

    `script` is the full text the host runs (a shebang line picks the
    interpreter, `/bin/sh` otherwise); `args` are passed to it literally.
    """

    name: str = Field(default="job", min_length=1, max_length=200)
    queue: str | None = None
    # The fair-share identifier charged for the job (docs/scheduling.md); None: the user.
    share_id: Name | None = None
    tags: Tags = Field(default_factory=dict)  # AWS Batch's tags (docs/user-guide.md)
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
    # `--secret VAR=NAME`: the variable VAR is set at launch to the secret NAME's value
    # (controller/secrets.py); only names are kept in the request.
    secrets: dict[str, str] = Field(default_factory=dict, max_length=100)
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
    # Host targeting (core.targeting): hostlists, a feature expression, a GPU type.
    nodelist: str | None = Field(default=None, max_length=4096)
    exclude: str | None = Field(default=None, max_length=4096)
    constraint: str | None = Field(default=None, max_length=1024)
    gpu_type: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,31}$")
    # Job control (core.jobcontrol): epoch seconds, held at submit, order in the queue.
    begin: float | None = None
    deadline: float | None = None
    hold: bool = False
    priority: int = Field(default=0, ge=0, le=1_000_000)
    nice: int = Field(default=0, ge=-10_000, le=10_000)
    requeue: bool | None = None  # True: on host loss, another attempt; False: never
    stdin: bool = False  # `hpcbatch run`: the main node's stdin is fed by the client
    umask: int | None = Field(default=None, ge=0, le=0o777)  # the CLI's (SLURM_UMASK); None: 077

    @field_validator("nodelist", "exclude")
    @classmethod
    def _hostlist(cls, value: str | None) -> str | None:
        from hpcbatch.core.hostlist import HostlistError, expand

        if value is not None:
            try:
                expand(value)
            except HostlistError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("constraint")
    @classmethod
    def _constraint(cls, value: str | None) -> str | None:
        from hpcbatch.core.targeting import ConstraintError, parse_constraint

        if value is not None:
            try:
                parse_constraint(value)
            except ConstraintError as exc:
                raise ValueError(str(exc)) from None
        return value

    # `--mail-type` (Slurm's words, comma-separated) and `--mail-user`: see
    # controller/notify.py. The address defaults to the submitting user.
    mail_type: str | None = Field(default=None, max_length=200)
    mail_user: str | None = Field(default=None, max_length=320)

    @field_validator("mail_type")
    @classmethod
    def _mail_types(cls, value: str | None) -> str | None:
        if value is None:
            return None
        words = [w.strip().upper() for w in value.split(",") if w.strip()]
        unknown = [w for w in words if w not in MAIL_TYPES]
        if unknown:
            raise ValueError(
                f"unknown mail type {unknown[0]!r} (known: {', '.join(sorted(MAIL_TYPES))})"
            )
        return ",".join(words) or None

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return check_environment(env)

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, refs: dict[str, str]) -> dict[str, str]:
        return check_secret_refs(refs)

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

    @field_validator(*PLAIN_FIELDS)
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        # Printed to other users (`hpcbatch jobs`, `show`): no escape sequences.
        problem = None if value is None else control_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("mounts")
    @classmethod
    def _plain_mounts(cls, mounts: list[str]) -> list[str]:
        for mount in mounts:
            problem = control_problem(mount)
            if problem is not None:
                raise ValueError(problem)
        return mounts
