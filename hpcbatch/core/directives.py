"""Slurm `sbatch` options, from `#SBATCH`/`#HPCBATCH` script lines and from the command line.

hpcbatch runs Slurm job scripts unchanged, so it reads the same directives
`sbatch` does, with one option table for both places: a directive line is
split like a shell line (`shlex`) and parsed by exactly the parser that reads
`hpcbatch submit`'s own options. The result is a plain dict whose keys are
those of `hpcbatch.models.JobRequest` (plus a few kept for later features);
validating it against the model is the controller's job. This module is pure
and standard-library only: the CLI imports it on every `submit`, and must not
pay for pydantic.

Rules (see docs/job-scripts.md for the user-facing version):

* Directives are `#SBATCH` or `#HPCBATCH` at the very start of a line, before
  the first command: parsing stops at the first line that is neither blank nor
  a comment, as in Slurm. Later directive lines are ignored, with one warning.
* `#HPCBATCH` lines override `#SBATCH` lines (wherever they are), so a script
  can say what hpcbatch should do differently from Slurm; command-line options
  override both (`merge`).
* In a script, an unknown option is a warning; on the command line an error.
  A malformed value is always a `DirectiveError` naming the file and line.
* Options Slurm has but hpcbatch gives no meaning to (`--mail-type`,
  `--account`, ...) are accepted and ignored, each with an "ignored: ..." warning.

Resources: `cpus` (per node) = cpus-per-task x tasks per node, where tasks per
node is `--ntasks-per-node`, else ceil(ntasks / nodes), else 1. `--mem` is per
node; `--mem-per-cpu` becomes memory per node = value x cpus. `--gres=gpu:N`
and `--gpus-per-node` are GPUs per node; `--gpus` is GPUs per job, divided
evenly over the nodes. All of these are computed after the merge, so a
command-line `-c 8` changes the cpus a script's `--ntasks-per-node` implies.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Mapping

from hpcbatch.core import option_values as conv
from hpcbatch.core.option_table import OPTIONS
from hpcbatch.core.option_values import ExportSpec, signal_name
from hpcbatch.core.units import UnitError

# `hpcbatch submit` parses with this module, and importing typing would cost
# its start-up ~4 ms: the type checker alone sees these (plain classes below
# stand in for NamedTuple).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "EXTRA_KEYS",
    "JOB_REQUEST_KEYS",
    "DirectiveError",
    "ExportSpec",
    "ParsedOptions",
    "expand_output_pattern",
    "merge",
    "parse_args",
    "parse_script",
    "signal_name",
    "split_submit_argv",
]

JOB_REQUEST_KEYS: Final = frozenset(
    {
        "name",
        "queue",
        "share_id",
        "tags",  # dict[str, str]: each --tag adds to the others
        "cpus",
        "memory_mb",
        "gpus",
        "nodes",
        "ntasks_per_node",
        "time_limit_s",
        "output",
        "error",
        "workdir",
        "mail_type",
        "mail_user",
        "secrets",  # dict[str, str]: repeated --secret options add up
    }
)
"""Keys of `merge`'s result that are `JobRequest` fields, with values of the field's type."""

EXTRA_KEYS: Final = frozenset(
    {
        "cpus_per_task",  # int: as given (cpus already includes it)
        "ntasks",  # int: as given (ntasks_per_node already derived from it)
        "export",  # ExportSpec
        "exclusive",  # True
        "array",  # the rest: raw strings, for features to come
        "dependency",
        "fabric",
        "image",
        "mounts",  # list[str]: `SRC[:DST][:ro]` items, comma-separated (checked by the model)
        "main_node",
        "launch_mode",
        "warn_signal",  # dict: {"name": "USR1", "before_s": 60, "batch_only": False}
        "nodelist",  # str: hostlist expressions (core.targeting)
        "exclude",
        "constraint",  # str: a feature expression
        "gpu_type",  # str: from --gres=gpu:TYPE:N, --gpus=TYPE:N
        "begin",  # float: epoch seconds
        "deadline",
        "hold",  # True
        "priority",  # int
        "nice",  # int
        "requeue",  # bool (--no-requeue: False)
    }
)
"""The other keys `merge` may return: not `JobRequest` fields; the caller decides."""

_DIRECTIVE_RE = re.compile(r"#(SBATCH|HPCBATCH)(?=[ \t]|$)")
_BLANK = " \t\r\v\f"
_SHLEX_SPACE = " \t\r\n"
_MERGE_ORIGIN = "job options"


class DirectiveError(ValueError):
    """A directive or option that cannot be used: `job.sh:7: --mem: '4Q' is not ...`."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class ParsedOptions:
    """Options from one source (a script's directives, or the command line).

    `values` uses the keys of `JOB_REQUEST_KEYS` and `EXTRA_KEYS`, plus
    `mem_per_cpu_mb` and `gpus_per_job`, which `merge` turns into `memory_mb`
    and `gpus`. `warnings` are complete lines, each naming where it comes from.
    (A plain class, not a dataclass: `hpcbatch submit` imports this module, and
    `dataclasses` would cost the CLI ~10 ms of start-up through `inspect`.)
    """

    __slots__ = ("values", "warnings")

    def __init__(
        self, values: dict[str, object] | None = None, warnings: list[str] | None = None
    ) -> None:
        self.values = {} if values is None else values
        self.warnings = [] if warnings is None else warnings

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParsedOptions):
            return NotImplemented
        return (self.values, self.warnings) == (other.values, other.warnings)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ParsedOptions(values={self.values!r}, warnings={self.warnings!r})"


# --------------------------------------------------------------------------- the table
# (core.option_table: what each option is; here, how to find one by name)

_BY_NAME: Final = {name: option for option in OPTIONS for name in option.names}
_SEPARATE_VALUE: Final = frozenset(
    name for name, option in _BY_NAME.items() if option.arity == "value"
)
_EXCLUSIVE_KEYS: Final = (
    frozenset({"memory_mb", "mem_per_cpu_mb", "mem_per_gpu_mb"}),
    frozenset({"gpus", "gpus_per_job", "gpus_per_task"}),
)


def _store(values: dict[str, object], key: str, value: object) -> None:
    """Set key, dropping the keys it excludes (a later --mem-per-cpu replaces --mem)."""
    for group in _EXCLUSIVE_KEYS:
        if key in group:
            for other in group:
                values.pop(other, None)
    old = values.get(key)
    if key in ("secrets", "tags") and isinstance(old, dict) and isinstance(value, dict):
        value = {**old, **value}  # they add up; the later value of a key wins
    values[key] = value


def _overlay(base: Mapping[str, object], top: Mapping[str, object]) -> dict[str, object]:
    merged = dict(base)
    for key, value in top.items():
        _store(merged, key, value)
    return merged


def _suggest(name: str) -> str:
    import difflib  # only on this error path

    close = difflib.get_close_matches(name, list(_BY_NAME), n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- parsing


def parse_args(
    tokens: list[str],
    origin: str = "command line",
    line: int | None = None,
    *,
    strict: bool = True,
) -> ParsedOptions:
    """Parse option tokens (`--mem=4G`, `--mem 4G`, `-c4`, `-c 4`).

    `origin` and `line` name the place in messages. With `strict` (the command
    line) an unknown option or a stray argument is a `DirectiveError`; without
    (a script line) it is a warning, and the rest of the line is still read.
    """
    where = origin if line is None else f"{origin}:{line}"
    result = ParsedOptions()

    def fail(message: str) -> DirectiveError:
        return DirectiveError(origin, line, message)

    def warn(message: str) -> None:
        result.warnings.append(f"{where}: {message}")

    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--" or not token.startswith("-") or token == "-":
            stray = tokens[index:] if token == "--" else tokens[index - 1 :]
            if not stray:
                break
            message = f"unexpected argument {stray[0]!r}"
            if strict:
                raise fail(message + " (options go before the script)")
            warn(message + " ignored")
            if token == "--":
                break
            continue
        if token.startswith("--"):
            name, equals, inline = token.partition("=")
            has_inline = bool(equals)
        else:
            name, inline = token[:2], token[2:]
            has_inline = bool(inline)
        option = _BY_NAME.get(name)
        if option is None:
            message = f"unknown option {name}"
            if strict:
                raise fail(message + _suggest(name))
            warn(message + " ignored" + _suggest(name))
            if not has_inline and index < len(tokens) and not tokens[index].startswith("-"):
                index += 1  # most likely the unknown option's value
            continue
        raw: str | None
        if option.arity == "flag":
            if has_inline:
                raise fail(f"{name} takes no value (got {inline!r})")
            raw = None
        elif option.arity == "optional":
            raw = inline if has_inline else None
        elif has_inline:
            raw = inline
        elif index < len(tokens):
            raw = tokens[index]
            index += 1
        else:
            raise fail(f"{name} needs a value")
        if raw is not None and "\0" in raw:
            raise fail(f"{name}: the value contains a NUL byte")
        if option.ignored is not None:
            shown = name if raw is None else f"{name}={raw}" if name[1] == "-" else f"{name} {raw}"
            warn(f"ignored: {shown} ({option.ignored})")
            continue
        if raw == "":
            raise fail(f"{name} needs a value")
        if raw is None or option.convert is None:
            value: object = True
        else:
            try:
                value = option.convert(raw, warn)
            except (conv.BadValue, UnitError) as exc:
                raise fail(f"{name}: {exc}") from None
        if value is not conv.UNSET:
            _store(result.values, option.key, value)
    return result


def split_submit_argv(
    argv: list[str],
    *,
    flags: Collection[str] = (),
    valued: Collection[str] = (),
) -> tuple[list[str], list[str]]:
    """Split `submit`'s arguments as sbatch does: options, then the script and its args.

    Options end at the first token that is not an option (the script path; `-`
    counts as one) or at `--` (dropped). Options that take a value in the next
    token (`-c 4`, `--mem 4G`) are known from the option table; `valued` adds
    the caller's own (say `--wait-timeout`), `flags` its own flags. An unknown
    option is taken as a flag; `parse_args` will complain about it.
    """
    separate = _SEPARATE_VALUE | frozenset(valued)
    own_flags = frozenset(flags)
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            return argv[:index], argv[index + 1 :]
        if token == "-" or not token.startswith("-"):
            return argv[:index], argv[index:]
        if token.startswith("--"):
            takes_next = "=" not in token and token in separate and token not in own_flags
        else:
            takes_next = len(token) == 2 and token in separate and token not in own_flags
        index += 2 if takes_next else 1
    return list(argv), []


def _strip_comment(text: str) -> str:
    """Cut a directive line at a `#` that starts a word outside quotes, as the shell does."""
    quote = ""
    escaped = False
    word_start = True
    for index, char in enumerate(text):
        if escaped:
            escaped = word_start = False
            continue
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                escaped = True
            continue
        elif char == "\\":
            escaped = True
        elif char in "'\"":
            quote = char
        elif char == "#" and word_start:
            return text[:index]
        word_start = char in _SHLEX_SPACE
    return text


def parse_script(text: str, path: str = "script") -> tuple[ParsedOptions, str]:
    """The options in a script's directives, and the script text unchanged.

    Raises `DirectiveError` (never anything else) for a malformed value, a line
    `shlex` cannot split, or DOS line breaks (the job would fail on the host).
    """
    if "\r\n" in text:
        line = text.count("\n", 0, text.index("\r\n")) + 1
        raise DirectiveError(
            path, line, "the script has DOS line breaks (\\r\\n); convert it with dos2unix"
        )
    layers: dict[str, dict[str, object]] = {"SBATCH": {}, "HPCBATCH": {}}
    warnings: list[str] = []
    first_command: int | None = None
    late: list[int] = []
    for number, line_text in enumerate(text.split("\n"), start=1):
        match = _DIRECTIVE_RE.match(line_text)
        if match is None:
            stripped = line_text.strip(_BLANK)
            if first_command is None and stripped and not stripped.startswith("#"):
                first_command = number
            continue
        if first_command is not None:
            late.append(number)
            continue
        try:
            tokens = shlex.split(_strip_comment(line_text[match.end() :]))
        except ValueError as exc:
            raise DirectiveError(
                path, number, f"cannot split the #{match[1]} line: {exc}"
            ) from None
        parsed = parse_args(tokens, path, number, strict=False)
        layer = layers[match[1]]
        for key, value in parsed.values.items():
            _store(layer, key, value)
        warnings.extend(parsed.warnings)
    if late:
        count = "a directive line" if len(late) == 1 else f"{len(late)} directive lines"
        warnings.append(
            f"{path}:{late[0]}: ignored: {count} after the first command (line {first_command});"
            " directives must come before any command, as in Slurm"
        )
    values = _overlay(layers["SBATCH"], layers["HPCBATCH"])
    return ParsedOptions(values=values, warnings=warnings), text


# --------------------------------------------------------------------------- merging


def _get_int(values: Mapping[str, object], key: str) -> int | None:
    value = values.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def merge(script_opts: ParsedOptions, cli_opts: ParsedOptions) -> dict[str, object]:
    """Command-line options over script directives, then the derived values.

    Derived after the merge: `cpus`, `ntasks_per_node` (from `ntasks` when not
    given), `memory_mb` (from `--mem-per-cpu`), `gpus` (from `--gpus`, per job).
    Keys are those of `JOB_REQUEST_KEYS` and `EXTRA_KEYS`; a key is present only
    when something set it. Warnings are not merged: the caller keeps both lists.
    """
    values = _overlay(script_opts.values, cli_opts.values)
    for key in ("gpus", "gpus_per_job"):
        typed = values.get(key)
        if isinstance(typed, tuple):  # (count, type) from a typed GPU request
            values[key], values["gpu_type"] = typed
    if values.get("nice") is True:
        values["nice"] = 100  # --nice alone, as Slurm
    if values.pop("no_requeue", None):
        values["requeue"] = False
    nodes = _get_int(values, "nodes") or 1
    cpus_per_task = _get_int(values, "cpus_per_task")
    ntasks = _get_int(values, "ntasks")
    tasks_per_node = _get_int(values, "ntasks_per_node")
    if ntasks is not None and ntasks < nodes:
        raise DirectiveError(
            _MERGE_ORIGIN,
            None,
            f"--ntasks={ntasks} is fewer than --nodes={nodes} (each node runs a task at least)",
        )
    if tasks_per_node is None and ntasks is not None:
        tasks_per_node = -(-ntasks // nodes)
        values["ntasks_per_node"] = tasks_per_node
    if cpus_per_task is not None or tasks_per_node is not None:
        values["cpus"] = (cpus_per_task or 1) * (tasks_per_node or 1)
    gpus_per_job = _get_int(values, "gpus_per_job")
    values.pop("gpus_per_job", None)
    if gpus_per_job is not None:
        if gpus_per_job % nodes:
            raise DirectiveError(
                _MERGE_ORIGIN,
                None,
                f"--gpus={gpus_per_job} (per job) does not divide evenly over --nodes={nodes};"
                " use --gpus-per-node",
            )
        values["gpus"] = gpus_per_job // nodes
    _per_gpu(values, tasks_per_node)
    mem_per_cpu = _get_int(values, "mem_per_cpu_mb")
    values.pop("mem_per_cpu_mb", None)
    if mem_per_cpu is not None:
        values["memory_mb"] = mem_per_cpu * (_get_int(values, "cpus") or 1)
    if values.get("memory_mb") == 0:  # --mem=0: all of each host's memory, so the host
        del values["memory_mb"]
        values["exclusive"] = True
    return values


def _per_gpu(values: dict[str, object], tasks_per_node: int | None) -> None:
    """Slurm's GPU-relative requests, per node: `--gpus-per-task` x tasks on the node,
    then `--cpus-per-gpu` and `--mem-per-gpu` x the node's GPUs."""
    per_task = _get_int(values, "gpus_per_task")
    values.pop("gpus_per_task", None)
    if per_task is not None:
        values["gpus"] = per_task * (tasks_per_node or 1)
    gpus = _get_int(values, "gpus") or 0
    for key, target, option in (
        ("cpus_per_gpu", "cpus", "--cpus-per-gpu"),
        ("mem_per_gpu_mb", "memory_mb", "--mem-per-gpu"),
    ):
        value = _get_int(values, key)
        values.pop(key, None)
        if value is None:
            continue
        if not gpus:
            raise DirectiveError(
                _MERGE_ORIGIN, None, f"{option} needs GPUs (--gpus-per-node, --gres, --gpus)"
            )
        values[target] = value * gpus


# --------------------------------------------------------------------------- output names

_PATTERN_RE = re.compile(r"%([0-9]{1,9})?([%AajxNu])")
_NUMERIC = frozenset("Aaj")


def expand_output_pattern(
    pattern: str,
    job_id: int | str,
    array_job_id: int | str | None,
    array_index: int | None,
    job_name: str,
    node_name: str,
    user: str,
) -> str:
    """Fill in Slurm's filename patterns: `%j %A %a %x %N %u %%`.

    A number between `%` and a numeric pattern zero-pads it (`%4j` -> `0042`,
    at most 10 wide). Outside an array, `%A` is the job id and `%a` is `0`.
    Unknown patterns stay as they are. As in Slurm, a pattern containing a
    backslash is not expanded at all; its backslashes are removed.
    """
    if "\\" in pattern:
        return pattern.replace("\\", "")
    fields = {
        "%": "%",
        "j": str(job_id),
        "A": str(job_id if array_job_id is None else array_job_id),
        "a": "0" if array_index is None else str(array_index),
        "x": job_name,
        "N": node_name,
        "u": user,
    }

    def replace(match: re.Match[str]) -> str:
        width, letter = match[1], match[2]
        value = fields[letter]
        if width and letter in _NUMERIC and value.isdigit():
            return value.zfill(min(int(width), 10))
        if width and letter == "%":
            return match[0]
        return value

    return _PATTERN_RE.sub(replace, pattern)
