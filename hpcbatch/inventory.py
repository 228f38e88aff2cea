"""Load, validate and resolve the TOML inventory that describes a cluster.

`load_inventory(path)` reads the file with `tomllib`, validates it against the
strict models of `hpcbatch.models` (strict types: `port = "22"` is an error,
not a silent conversion), then resolves it:

* every host gets its effective connection settings (`[defaults]` applied,
  the current user, port 22, local key/known_hosts/ssh_config paths with `~`
  expanded and relative paths taken from the inventory file's directory);
* every compute environment becomes a tuple of host names (hostlist
  expressions expanded, label selectors matched);
* queues are checked against the compute environments, and a `default` queue
  (and an `all` compute environment) is made up when none is declared.

Every problem in the file is reported, not just the first, in one
`InventoryError` whose lines each name the file, the entry and the field::

    inventory.toml: hosts[2] (name "gpu1"): field "port": Input should be less than or
    equal to 65535
    inventory.toml: compute_environments[0] (name "cpu"): hosts: unknown host "nodeX"

(each problem is one line; the first is wrapped here).

No input, however malformed, produces anything but a returned inventory or an
`InventoryError`.
"""

from __future__ import annotations

import getpass
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from hpcbatch.core.hostlist import MAX_HOSTS, HostlistError, expand
from hpcbatch.inventory_messages import show, suggest, validation_problems
from hpcbatch.inventory_types import (
    ResolvedComputeEnv,
    ResolvedHost,
    ResolvedInventory,
    ResolvedQueue,
)
from hpcbatch.models import HostDefaults, HostSpec, Inventory

__all__ = [
    "DEFAULT_ENV_NAME",
    "DEFAULT_QUEUE_NAME",
    "InventoryError",
    "ResolvedComputeEnv",
    "ResolvedHost",
    "ResolvedInventory",
    "ResolvedQueue",
    "load_inventory",
    "parse_inventory",
    "read_document",
    "resolve_document",
    "resolve_inventory",
]

DEFAULT_ENV_NAME = "all"
"""The compute environment made up (over every host) when the file declares none."""

DEFAULT_QUEUE_NAME = "default"
"""The queue made up (over every compute environment) when the file declares none."""

_MAX_UNKNOWN_SHOWN = 5


class InventoryError(ValueError):
    """The inventory cannot be used. `problems` holds one line per problem.

    `str(error)` is those lines joined by newlines. A single string is one problem.
    """

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))


# --------------------------------------------------------------------------- resolved shapes


def load_inventory(path: Path | str) -> ResolvedInventory:
    """Read, validate and resolve the TOML inventory at `path`.

    Raises `InventoryError` (a `ValueError`) for a missing or unreadable file,
    bad TOML, or any invalid entry; the message names the file, entry and field.
    """
    path = Path(path)
    return resolve_document(read_document(path), path)


def read_document(path: Path | str) -> dict[str, Any]:
    """The inventory file's TOML data, not yet validated (`resolve_document` does)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError([f"{path}: inventory file not found"]) from None
    except IsADirectoryError:
        raise InventoryError([f"{path}: is a directory, not an inventory file"]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InventoryError([f"{path}: cannot read inventory: {reason}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryError(
            [f"{path}: not valid UTF-8 (line {line}, byte {exc.start}): TOML files are UTF-8"]
        ) from None
    return _loads(text, path)


def _loads(text: str, path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError([f"{path}: invalid TOML: {exc}"]) from None
    except RecursionError:
        raise InventoryError([f"{path}: invalid TOML: nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        reason = str(exc).split(";")[0]
        raise InventoryError([f"{path}: invalid TOML: {reason}"]) from None


def parse_inventory(text: str, path: Path | str = Path("<inventory>")) -> ResolvedInventory:
    """Validate and resolve inventory TOML given as text.

    `path` names the file in messages, and its directory is where relative
    local paths (identity, known_hosts, ssh_config) are taken from.
    """
    path = Path(path)
    return resolve_document(_loads(text, path), path)


def resolve_document(raw: dict[str, Any], path: Path | str) -> ResolvedInventory:
    """Validate and resolve inventory data (a TOML document's tables): the file's, or
    the file's with live changes laid over it (`inventory_edit`)."""
    path = Path(path)
    try:
        model = Inventory.model_validate(raw, strict=True)
    except ValidationError as exc:
        raise InventoryError(validation_problems(path, raw, exc)) from None
    except RecursionError:
        raise InventoryError([f"{path}: nested too deeply"]) from None
    return resolve_inventory(model, path=path)


# --------------------------------------------------------------------------- pydantic errors


# --------------------------------------------------------------------------- resolution


class _Problems:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.lines.append(f"{self.path}: {where}: {what}")


def _label(section: str, index: int, name: str) -> str:
    return f'{section}[{index}] (name "{name}")'


_PATH_KEYS = ("identity", "known_hosts", "ssh_config")


def _local_paths(
    spec: HostSpec | HostDefaults, base: Path, where: str, problems: _Problems
) -> dict[str, Path | None]:
    """The local path fields a host or the defaults set: `~` expanded, relative to `base`."""
    out: dict[str, Path | None] = {}
    for key in _PATH_KEYS:
        value = getattr(spec, key)
        if value is None:
            continue
        try:
            path = Path(value).expanduser()
        except RuntimeError:  # "~nosuchuser/...", or no home directory
            problems.add(where, f'field "{key}": cannot expand "~" in {show(value)}')
            path = Path(value)
        out[key] = path if path.is_absolute() else base / path
    return out


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return None


def resolve_inventory(model: Inventory, *, path: Path | str) -> ResolvedInventory:
    """Resolve an already validated `Inventory`; `path` is the file it came from.

    Raises `InventoryError` listing every cross-reference problem.
    """
    path = Path(path)
    base = path.absolute().parent
    problems = _Problems(path)
    hosts = _resolve_hosts(model, base, problems)
    envs = _resolve_envs(model, hosts, problems)
    queues = _resolve_queues(model, envs, problems)

    declared_queues = [spec.name for spec in model.queues] or [DEFAULT_QUEUE_NAME]
    default_queue = model.default_queue
    if default_queue is None:
        default_queue = declared_queues[0]
    elif default_queue not in declared_queues and model.queues:
        hint = suggest(default_queue, declared_queues, names=True)
        problems.add("default_queue", f'unknown queue "{default_queue}"{hint}')
    elif default_queue not in declared_queues:
        problems.add(
            "default_queue",
            f'unknown queue "{default_queue}" (no queues are declared, so the only queue'
            f' is "{DEFAULT_QUEUE_NAME}")',
        )

    if problems.lines:
        raise InventoryError(problems.lines)
    return ResolvedInventory(
        path=path,
        hosts=hosts,
        compute_environments=envs,
        queues=queues,
        default_queue=default_queue,
        metrics_address=model.metrics.address,
        notifications=model.notifications,
        webhooks=tuple(model.webhooks),
        admins=tuple(model.admins),
        api=model.api,
        retention=model.retention,
    )


_HOST_STRINGS = ("address", "user", "identity", "known_hosts", "ssh_config", "work_dir", "python")


def _check_not_empty(spec: BaseModel, keys: Sequence[str], where: str, problems: _Problems) -> None:
    for key in keys:
        value = getattr(spec, key, None)
        if isinstance(value, str) and not value.strip():
            problems.add(where, f'field "{key}": must not be empty')


def _resolve_hosts(model: Inventory, base: Path, problems: _Problems) -> dict[str, ResolvedHost]:
    d = model.defaults
    _check_not_empty(d, _HOST_STRINGS[1:], "defaults", problems)
    default_paths = _local_paths(d, base, "defaults", problems)
    hosts: dict[str, ResolvedHost] = {}
    first_index: dict[str, int] = {}
    endpoints: dict[tuple[str, int], int] = {}
    current_user: str | None = None
    for i, spec in enumerate(model.hosts):
        where = _label("hosts", i, spec.name)
        _check_not_empty(spec, _HOST_STRINGS, where, problems)
        if spec.name in first_index:
            j = first_index[spec.name]
            problems.add(where, f"name: duplicate host name (also hosts[{j}])")
            continue
        first_index[spec.name] = i

        user = spec.user if spec.user is not None else d.user
        if user is None:
            if current_user is None:
                current_user = _current_user()
            if current_user is None:
                problems.add(where, 'field "user": not set, and the current user is unknown')
            user = current_user or ""
        address = spec.address if spec.address is not None else spec.name
        port = spec.port if spec.port is not None else d.port
        endpoint = (address.lower(), port)
        if endpoint in endpoints:
            j = endpoints[endpoint]
            problems.add(
                where,
                f"address: {address} port {port} is also used by "
                f"{_label('hosts', j, model.hosts[j].name)}",
            )
        else:
            endpoints[endpoint] = i

        paths = default_paths | _local_paths(spec, base, where, problems)
        hosts[spec.name] = ResolvedHost(
            name=spec.name,
            address=address,
            port=port,
            user=user,
            identity=paths.get("identity"),
            known_hosts=paths.get("known_hosts"),
            ssh_config=paths.get("ssh_config"),
            work_dir=spec.work_dir if spec.work_dir is not None else d.work_dir,
            python=spec.python if spec.python is not None else d.python,
            labels=dict(spec.labels),
            run_as=spec.run_as if spec.run_as is not None else d.run_as,
            min_uid=d.min_uid,
            fabric=spec.fabric,
            cpus=spec.cpus,
            memory_mb=spec.memory_mb,
            gpus=spec.gpus,
            weight=spec.weight,
            features=tuple(spec.features),
            gpu_type=spec.gpu_type.lower() if spec.gpu_type else None,
        )
    return hosts


def _resolve_envs(
    model: Inventory, hosts: Mapping[str, ResolvedHost], problems: _Problems
) -> dict[str, ResolvedComputeEnv]:
    if not model.compute_environments:
        return {DEFAULT_ENV_NAME: ResolvedComputeEnv(name=DEFAULT_ENV_NAME, hosts=tuple(hosts))}
    known = {spec.name for spec in model.hosts}
    envs: dict[str, ResolvedComputeEnv] = {}
    first_index: dict[str, int] = {}
    for i, spec in enumerate(model.compute_environments):
        where = _label("compute_environments", i, spec.name)
        if spec.name in first_index:
            j = first_index[spec.name]
            problems.add(
                where, f"name: duplicate compute environment name (also compute_environments[{j}])"
            )
            continue
        first_index[spec.name] = i

        chosen: dict[str, None] = {}
        unknown: dict[str, None] = {}
        bad = False
        total = 0
        for expr in spec.hosts:
            try:
                names = expand(expr)
            except HostlistError as exc:
                problems.add(where, f"hosts: bad hostlist expression {show(expr)}: {exc}")
                bad = True
                continue
            total += len(names)
            if total > MAX_HOSTS:
                problems.add(where, f"hosts: more than {MAX_HOSTS} names in all")
                bad = True
                break
            for name in names:
                if name in known:
                    chosen.setdefault(name, None)
                else:
                    unknown.setdefault(name, None)
        for name in list(unknown)[:_MAX_UNKNOWN_SHOWN]:
            problems.add(where, f'hosts: unknown host "{name}"{suggest(name, known, names=True)}')
        if len(unknown) > _MAX_UNKNOWN_SHOWN:
            problems.add(
                where, f"hosts: and {len(unknown) - _MAX_UNKNOWN_SHOWN} more unknown hosts"
            )
        bad = bad or bool(unknown)
        if spec.selector:
            for name, host in hosts.items():
                if all(host.labels.get(k) == v for k, v in spec.selector.items()):
                    chosen.setdefault(name, None)
        if bad:
            continue
        if not chosen:
            if spec.selector and not spec.hosts:
                problems.add(where, f"selector: {_selector_text(spec.selector)} matches no host")
            else:
                problems.add(where, "matches no host")
            continue
        envs[spec.name] = ResolvedComputeEnv(
            name=spec.name,
            hosts=tuple(chosen),
            enabled=spec.state == "ENABLED",
            max_vcpus=spec.max_vcpus,
            allocation_strategy=spec.allocation_strategy,
            health_check=spec.health_check,
            health_check_interval_s=spec.health_check_interval_s,
            health_check_timeout_s=spec.health_check_timeout_s,
            container_runtimes=(
                tuple(spec.container_runtimes) if spec.container_runtimes else None
            ),
            min_vcpus=spec.min_vcpus,
            desired_vcpus=spec.desired_vcpus,
            idle_time_s=spec.idle_time_s,
            resume_command=spec.resume_command,
            suspend_command=spec.suspend_command,
            resume_timeout_s=spec.resume_timeout_s,
            tags=dict(spec.tags),
            log_collection=spec.log_collection,
        )
        if spec.resume_command is not None:
            undeclared = [n for n in chosen if n in hosts and hosts[n].cpus is None]
            if undeclared:
                problems.add(
                    where,
                    "hosts: an elastic compute environment's hosts must declare cpus (the "
                    "scheduler sizes them while they are powered down): "
                    + ", ".join(undeclared[:5]),
                )
    return envs


def _selector_text(selector: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k} = {show(v)}" for k, v in selector.items()) + "}"


def _resolve_queues(
    model: Inventory, envs: Mapping[str, ResolvedComputeEnv], problems: _Problems
) -> dict[str, ResolvedQueue]:
    if not model.queues:
        return {
            DEFAULT_QUEUE_NAME: ResolvedQueue(
                name=DEFAULT_QUEUE_NAME, compute_environments=tuple(envs)
            )
        }
    declared_envs = {spec.name for spec in model.compute_environments} or {DEFAULT_ENV_NAME}
    queues: dict[str, ResolvedQueue] = {}
    first_index: dict[str, int] = {}
    for i, spec in enumerate(model.queues):
        where = _label("queues", i, spec.name)
        if spec.name in first_index:
            j = first_index[spec.name]
            problems.add(where, f"name: duplicate queue name (also queues[{j}])")
            continue
        first_index[spec.name] = i

        seen: set[str] = set()
        bad = False
        for env in spec.compute_environments:
            if env in seen:
                problems.add(where, f'compute_environments: "{env}" is listed twice')
                bad = True
            elif env not in declared_envs:
                hint = suggest(env, declared_envs, names=True)
                if not model.compute_environments:
                    hint = f' (none are declared, so the only one is "{DEFAULT_ENV_NAME}")'
                problems.add(
                    where, f'compute_environments: unknown compute environment "{env}"{hint}'
                )
                bad = True
            seen.add(env)
        if bad:
            continue
        queues[spec.name] = ResolvedQueue(
            name=spec.name,
            compute_environments=tuple(spec.compute_environments),
            priority=spec.priority,
            enabled=spec.state == "ENABLED",
            policy=spec.policy,
            default_time_limit_s=spec.default_time_limit_s,
            max_running=spec.max_running,
            max_vcpus=spec.max_vcpus,
            fabric=spec.fabric,
            shares=dict(spec.shares),
            share_decay_half_life_s=spec.share_decay_half_life_s,
            compute_reservation=spec.compute_reservation,
            limits_per=spec.limits_per,
            max_running_per_user=spec.max_running_per_user,
            max_vcpus_per_user=spec.max_vcpus_per_user,
            max_gpus_per_user=spec.max_gpus_per_user,
            max_nodes_per_user=spec.max_nodes_per_user,
            tags=dict(spec.tags),
            log_collection=spec.log_collection,
        )
    return queues
