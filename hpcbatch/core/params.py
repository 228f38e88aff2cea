"""AWS Batch parameter substitution: `Ref::name` placeholders in a command.

A job definition's command may contain `Ref::name` placeholders; the
definition gives defaults (`parameters`), and a submission may override them.
As in AWS Batch, substitution happens in the command only (not in the
environment or elsewhere), the submitted value wins over the default, and a
placeholder with no value from either is left as it is (`Ref::name` reaches
the program literally, as AWS Batch does) and reported by `unresolved` so the
caller can warn.

Placeholders are replaced wherever they appear in an argument, not only when
they are the whole argument (`--input=Ref::inputfile` works); a name is the
longest run of letters, digits, `_` and `-` after `Ref::`. Values are inserted
as they are, never re-scanned, so a value containing `Ref::x` is not expanded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_REF = re.compile(r"Ref::([A-Za-z0-9_-]+)")
NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


class ParameterError(ValueError):
    """A parameter name or value that cannot be accepted; the message names it."""


def check(parameters: Mapping[str, str], where: str = "parameters") -> dict[str, str]:
    """Validate names (letters, digits, `_`, `-`; up to 128) and that values are strings."""
    out: dict[str, str] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ParameterError(
                f"{where}: parameter name {name!r} must be 1-128 letters, digits, '_' or '-'"
            )
        if not isinstance(value, str):
            raise ParameterError(f"{where}: parameter {name!r} must be a string, not {value!r}")
        out[name] = value
    return out


def merged(defaults: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The definition's defaults with the submission's values on top."""
    return {**defaults, **overrides}


def substitute(
    argv: Sequence[str], defaults: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> list[str]:
    """`argv` with every `Ref::name` that has a value replaced by it."""
    values = merged(defaults, overrides or {})

    def repl(m: re.Match[str]) -> str:
        return values.get(m.group(1), m.group(0))

    return [_REF.sub(repl, arg) if "Ref::" in arg else arg for arg in argv]


def unresolved(
    argv: Sequence[str], defaults: Mapping[str, str], overrides: Mapping[str, str] | None = None
) -> list[str]:
    """Names of placeholders in `argv` with no value (sorted, each once)."""
    values = merged(defaults, overrides or {})
    names = {m.group(1) for arg in argv for m in _REF.finditer(arg)}
    return sorted(n for n in names if n not in values)
