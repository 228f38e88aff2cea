"""How the value of each `sbatch` option is read: one converter per kind of value.

`hpcbatch.core.directives` holds the option table and the parser; each row of
the table names one of these converters. A converter gets the text after the
option and a `warn` callback, and returns what goes in the parsed options (or
`UNSET` to store nothing); a value it cannot use raises `BadValue`, and the
parser adds the file, line and option. Pure and standard-library only, like
the parser (`hpcbatch submit` imports both on every call).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Mapping

from hpcbatch.core.units import parse_memory_mb, parse_time

TYPE_CHECKING = False  # as in directives: no `typing` at run time
if TYPE_CHECKING:
    from typing import Final

ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # as models.ENV_NAME_RE
MAX_GPUS: Final = 1024  # per host, as JobRequest.gpus


class ExportSpec:
    """`--export`: which of the submitter's environment variables the job gets.

    `everything` is ALL (the whole submit environment, the default in Slurm);
    otherwise only `names` (copied from the submit environment where set there)
    and `values` (set as given). NONE alone is `ExportSpec(everything=False)`.
    An immutable value: equal and hashed by its three fields.
    """

    __slots__ = ("everything", "names", "values")

    everything: bool
    names: tuple[str, ...]
    values: tuple[tuple[str, str], ...]

    def __init__(
        self,
        everything: bool,
        names: tuple[str, ...] = (),
        values: tuple[tuple[str, str], ...] = (),
    ) -> None:
        object.__setattr__(self, "everything", everything)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "values", values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ExportSpec is immutable")

    def _key(self) -> tuple[bool, tuple[str, ...], tuple[tuple[str, str], ...]]:
        return (self.everything, self.names, self.values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExportSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ExportSpec(everything={self.everything!r}, names={self.names!r}, "
            f"values={self.values!r})"
        )

    def environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The variables to send with the job, taken from `environ` (the submitter's).

        Variables whose names a job environment cannot hold (say `BASH_FUNC_x%%`)
        or whose values contain NUL are left out of ALL.
        """
        env: dict[str, str] = {}
        if self.everything:
            env = {
                key: value
                for key, value in environ.items()
                if ENV_NAME_RE.fullmatch(key) and "\0" not in value
            }
        for name in self.names:
            if name in environ:
                env[name] = environ[name]
        env.update(self.values)
        return env


class BadValue(Exception):
    """A converter's complaint about a value; the parser adds where and which option."""


Warn = Callable[[str], None]
Converter = Callable[[str, Warn], object]
UNSET: Final = object()  # a converter's "store nothing" (e.g. --gres=nvme:1)


def integer(low: int, high: int) -> Converter:
    def convert(value: str, warn: Warn) -> object:
        if not re.fullmatch(r"[0-9]{1,12}", value):
            raise BadValue(f"{value!r} is not a whole number")
        number = int(value)
        if number < low:
            raise BadValue(f"{value!r} is less than {low}")
        if number > high:
            raise BadValue(f"{value!r} is more than {high}")
        return number

    return convert


def text(value: str, warn: Warn) -> object:
    return value


def tags(value: str, warn: Warn) -> object:
    """`KEY=VALUE[,KEY=VALUE...]`: AWS Batch tags (repeated options add up)."""
    out: dict[str, str] = {}
    for item in value.split(","):
        key, equals, tag = item.partition("=")
        if not equals or not key.strip():
            raise BadValue(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        out[key.strip()] = tag
    return out


def mounts(value: str, warn: Warn) -> object:
    if not value.strip():
        raise BadValue("expected SRC[:DST][:ro][,SRC[:DST][:ro]...]")
    return [value]


def time_limit(value: str, warn: Warn) -> object:
    return parse_time(value)


def memory(value: str, warn: Warn) -> object:
    return parse_memory_mb(value)


def memory_or_all(value: str, warn: Warn) -> object:
    """`--mem`: a size, or 0 (Slurm's "all of each node's memory": the host, exclusive)."""
    if value.strip().rstrip("KkMmGgTt") in ("0", "0.0"):
        return 0
    return parse_memory_mb(value)


def nodes(value: str, warn: Warn) -> object:
    low, dash, high = value.partition("-")
    count = integer(1, 10_000)
    try:
        first, last = count(low, warn), count(high, warn) if dash else None
    except BadValue as exc:
        raise BadValue(f"{value!r} is not a node count (e.g. 2): {exc}") from None
    if dash and last != first:
        raise BadValue(f"{value!r}: node ranges are not supported (give one number, e.g. 2)")
    return first


_GPU_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def gpu_count(value: str, warn: Warn, shown: str, high: int) -> object:
    """`[type:]count` (as in Slurm's --gpus): the count, or `(count, type)` with a type
    (`merge` splits it into `gpus` and `gpu_type`)."""
    gpu_type, colon, count = value.rpartition(":")
    if (colon and (not gpu_type or ":" in gpu_type)) or not re.fullmatch(r"[0-9]{1,12}", count):
        raise BadValue(f"{value!r} is not a GPU count (e.g. 2 or a100:2)")
    if gpu_type and not _GPU_TYPE_RE.fullmatch(gpu_type):
        raise BadValue(f"{gpu_type!r} in {shown} is not a GPU type (e.g. h100)")
    number = int(count)
    if number > high:
        raise BadValue(f"{value!r} is more than {high} GPUs")
    return (number, gpu_type.lower()) if gpu_type else number


def gpus_per_node(value: str, warn: Warn) -> object:
    return gpu_count(value, warn, f"--gpus-per-node={value}", MAX_GPUS)


def gpus_per_job(value: str, warn: Warn) -> object:
    return gpu_count(value, warn, f"--gpus={value}", MAX_GPUS * 10_000)


def gres(value: str, warn: Warn) -> object:
    """`gpu`, `gpu:N`, `gpu:TYPE`, `gpu:TYPE:N`, with others (ignored) after commas.

    `none` is no GPUs; a list without gpu sets nothing.
    """
    gpus: object = None
    seen_gpu = False
    for entry in value.split(","):
        name, colon, rest = entry.partition(":")
        if entry.lower() == "none":
            gpus = gpus or 0
        elif not name:
            raise BadValue(f"{entry!r} in {value!r} is not a resource (e.g. gpu:2)")
        elif name != "gpu":
            warn(f"ignored: --gres {entry} (only gpu resources are scheduled)")
        elif seen_gpu:
            raise BadValue(f"{value!r} names gpu more than once")
        else:
            seen_gpu = True
            if not colon:
                gpus = 1
            elif _GPU_TYPE_RE.fullmatch(rest):  # gpu:TYPE, one GPU
                gpus = (1, rest.lower())
            else:
                gpus = gpu_count(rest, warn, f"--gres={value}", MAX_GPUS)
    return UNSET if gpus is None else gpus


def partition(value: str, warn: Warn) -> object:
    names = value.split(",")
    if not all(names):
        raise BadValue(f"{value!r} is not a queue name")
    if len(names) > 1:
        warn(f"only the first of the partitions {value!r} is used: {names[0]}")
    return names[0]


def export(value: str, warn: Warn) -> object:
    everything = False
    names: list[str] = []
    assigned: list[tuple[str, str]] = []
    for entry in value.split(","):
        if entry.upper() in ("ALL", "NONE"):
            everything = entry.upper() == "ALL"
            continue
        name, equals, setting = entry.partition("=")
        if not ENV_NAME_RE.fullmatch(name):
            raise BadValue(
                f"{entry!r} is not a variable name or NAME=value (values cannot contain commas)"
            )
        if equals:
            assigned.append((name, setting))
        else:
            names.append(name)
    return ExportSpec(everything=everything, names=tuple(names), values=tuple(assigned))


_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def secret(value: str, warn: Warn) -> object:
    """`--secret VAR=NAME[,VAR=NAME...]`: environment variable -> secret name."""
    refs: dict[str, str] = {}
    for entry in value.split(","):
        var, equals, name = entry.strip().partition("=")
        if not equals or not ENV_NAME_RE.fullmatch(var) or not _SECRET_NAME_RE.fullmatch(name):
            raise BadValue(f"{entry!r} is not VAR=SECRET_NAME")
        refs[var] = name
    return refs


_SIGNAL_DEFAULT_BEFORE_S = 60  # as Slurm: a signal without @secs comes 60 s before the limit
_SIGNAL_MAX_BEFORE_S = 65535


def signal_name(text: str) -> str:
    """`USR1`, `SIGUSR1`, `usr1` or `10` as the signal's name without `SIG` (`USR1`)."""
    if re.fullmatch(r"[0-9]{1,3}", text):
        try:
            return signal.Signals(int(text)).name.removeprefix("SIG")
        except ValueError:
            raise BadValue(f"{text} is not a signal number") from None
    name = text.upper().removeprefix("SIG")
    if (
        not re.fullmatch(r"[A-Z0-9+-]{1,12}", name)
        or f"SIG{name}" not in signal.Signals.__members__
    ):
        raise BadValue(f"{text!r} is not a signal name (e.g. USR1, TERM, 10)")
    return name


def warn_signal(value: str, warn: Warn) -> object:
    """`--signal=[{R|B}:]SIG[@SECONDS]`: send SIG that long before the time limit."""
    batch_only = False
    text = value
    if ":" in text:
        flag, _, text = text.partition(":")
        if flag == "B":
            batch_only = True
        elif flag == "R":
            warn("ignored: the R: in --signal (there are no reservations)")
        else:
            raise BadValue(f"{flag!r} before ':' must be B (the batch shell only) or R")
    name, at, secs = text.partition("@")
    before = _SIGNAL_DEFAULT_BEFORE_S
    if at:
        got = integer(0, _SIGNAL_MAX_BEFORE_S)(secs, warn)
        assert isinstance(got, int)
        before = got
    return {"name": signal_name(name), "before_s": before, "batch_only": batch_only}


def exclusive(value: str, warn: Warn) -> object:
    warn(f"ignored: the {value!r} in --exclusive={value} (the job gets whole hosts)")
    return True


def hostlist(value: str, warn: Warn) -> object:
    """`-w`/`-x`: a hostlist expression (`node[1-3],gpu7`), checked, kept as given."""
    from hpcbatch.core.hostlist import HostlistError, expand

    try:
        names = expand(value)
    except HostlistError as exc:
        raise BadValue(str(exc)) from None
    if not names:
        raise BadValue(f"{value!r} names no hosts")
    return value


def constraint(value: str, warn: Warn) -> object:
    """`-C`: a feature expression (`nvlink&(ib|efa)`), checked, kept as given."""
    from hpcbatch.core.targeting import ConstraintError, parse_constraint

    try:
        parse_constraint(value)
    except ConstraintError as exc:
        raise BadValue(str(exc)) from None
    return value


def clock_time(value: str, warn: Warn) -> object:
    """`--begin`/`--deadline`: a Slurm time (`now+1hour`, `16:00`, ISO) as epoch seconds,
    read when the script is submitted."""
    import time

    from hpcbatch.core.jobcontrol import ControlError, parse_time_spec

    try:
        return parse_time_spec(value, time.time())
    except ControlError as exc:
        raise BadValue(str(exc)) from None


def nice(value: str, warn: Warn) -> object:
    """`--nice[=N]`: N (default 100, as Slurm), -10000..10000; higher waits longer."""
    if not re.fullmatch(r"[+-]?[0-9]{1,5}", value):
        raise BadValue(f"{value!r} is not a nice value (a whole number, -10000 to 10000)")
    number = int(value)
    if abs(number) > 10_000:
        raise BadValue(f"{value!r} is outside -10000 to 10000")
    return number


def no(value: str, warn: Warn) -> object:
    return False
