"""Host targeting: which hosts a job may run on, apart from their free resources.

A job may name hosts it must run on (`-w/--nodelist`) or must not
(`-x/--exclude`), a feature expression (`-C/--constraint`, as Slurm: `&` and
`,` for "and", `|` for "or", parentheses), a GPU type (`--gres=gpu:h100:2`,
`--gpus=a100:1`) and a fabric kind (`--fabric ib`). `Target` holds them,
already parsed and hashable (it is part of a request's shape in a scheduling
pass); `Target.admits(host)` is the per-host test and `Target.island_matches`
the fabric test. Pure and standard-library only.

A host's features are its inventory `features`, and its labels both as
`key=value` and as bare `key`. Its GPU type is the declared `gpu_type` or the
one read from the probed GPU name (`gpu_type_of`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol


class HostView(Protocol):
    """What targeting reads of a host (core.views.HostView has it; no import, no cycle)."""

    @property
    def name(self) -> str: ...
    @property
    def features(self) -> frozenset[str]: ...
    @property
    def gpu_type(self) -> str | None: ...


__all__ = [
    "ANY_FABRIC",
    "ConstraintError",
    "Expr",
    "Target",
    "evaluate",
    "fabric_matches",
    "gpu_type_of",
    "parse_constraint",
]

ANY_FABRIC = "any"
"""`--fabric any`: all hosts in one island, whichever (the behaviour before names matched)."""

Expr = str | tuple[str, tuple["Expr", ...]]
"""A parsed constraint: a feature name, or ("&" | "|", operands)."""

_TOKEN_RE = re.compile(r"\s*(?:([A-Za-z0-9_.:=+\-/]+)|([&|,()]))")


class ConstraintError(ValueError):
    """A constraint expression that cannot be read; the message says where."""


def parse_constraint(text: str) -> Expr:
    """`a&(b|c)` as ("&", ("a", ("|", ("b", "c")))); `,` is "and" as `&`."""
    tokens: list[str] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN_RE.match(stripped, pos)
        if m is None or m.end() == pos:
            raise ConstraintError(
                f"constraint {text!r}: unexpected {stripped[pos:].lstrip()[:1]!r} at "
                f"character {pos + 1} (features, & | , and parentheses)"
            )
        tokens.append(m.group(1) or ("&" if m.group(2) == "," else m.group(2)))
        pos = m.end()
    if not tokens:
        raise ConstraintError("constraint is empty")
    expr, rest = _or(tokens, 0, text)
    if rest != len(tokens):
        raise ConstraintError(f"constraint {text!r}: unexpected {tokens[rest]!r}")
    return expr


def _or(tokens: list[str], i: int, text: str) -> tuple[Expr, int]:
    parts: list[Expr] = []
    expr, i = _and(tokens, i, text)
    parts.append(expr)
    while i < len(tokens) and tokens[i] == "|":
        expr, i = _and(tokens, i + 1, text)
        parts.append(expr)
    return (parts[0] if len(parts) == 1 else ("|", tuple(parts))), i


def _and(tokens: list[str], i: int, text: str) -> tuple[Expr, int]:
    parts: list[Expr] = []
    expr, i = _atom(tokens, i, text)
    parts.append(expr)
    while i < len(tokens) and tokens[i] == "&":
        expr, i = _atom(tokens, i + 1, text)
        parts.append(expr)
    return (parts[0] if len(parts) == 1 else ("&", tuple(parts))), i


def _atom(tokens: list[str], i: int, text: str) -> tuple[Expr, int]:
    if i >= len(tokens):
        raise ConstraintError(f"constraint {text!r} ends where a feature was expected")
    tok = tokens[i]
    if tok == "(":
        expr, i = _or(tokens, i + 1, text)
        if i >= len(tokens) or tokens[i] != ")":
            raise ConstraintError(f"constraint {text!r}: a '(' is not closed")
        return expr, i + 1
    if tok in "&|)":
        raise ConstraintError(f"constraint {text!r}: expected a feature, got {tok!r}")
    return tok, i + 1


def evaluate(expr: Expr, features: frozenset[str]) -> bool:
    """Whether a host with `features` satisfies `expr`."""
    if isinstance(expr, str):
        return expr in features
    op, parts = expr
    if op == "&":
        return all(evaluate(p, features) for p in parts)
    return any(evaluate(p, features) for p in parts)


def host_features(features: tuple[str, ...], labels: dict[str, str]) -> frozenset[str]:
    """What a constraint can name on a host: its features, `key=value` and `key` of labels."""
    return frozenset(features) | {f"{k}={v}" for k, v in labels.items()} | set(labels)


_GPU_MODEL_RE = re.compile(r"\b([A-Z]{1,3}[0-9]{2,4}[A-Z]?)\b")


def gpu_type_of(name: str) -> str | None:
    """The GPU type Slurm-style (`h100`) from a probed name ("NVIDIA H100 80GB HBM3").

    The first model-looking word (letters then digits: H100, A100, V100, L40S,
    RTX A6000 gives a6000), lower-cased; None when there is none.
    """
    for word in name.replace("-", " ").split():
        if word.upper() in ("NVIDIA", "TESLA", "GEFORCE", "RTX", "QUADRO"):
            continue
        m = _GPU_MODEL_RE.fullmatch(word.upper())
        if m is not None and not word.upper().endswith("GB"):
            return m.group(1).lower()
    return None


def fabric_matches(wanted: str, island: str | None) -> bool:
    """Whether island `island` is of fabric `wanted`: the same name, or the name
    followed by `-` or `_` (`ib` matches `ib-a` and `ib`); `any` matches every island."""
    if island is None:
        return False
    if wanted == ANY_FABRIC or island == wanted:
        return True
    return island.startswith((wanted + "-", wanted + "_"))


@dataclass(frozen=True, slots=True)
class Target:
    """Where a job may run, apart from resources. Every field optional; hashable."""

    nodelist: frozenset[str] = frozenset()  # every one of these hosts is used
    exclude: frozenset[str] = frozenset()
    constraint: Expr | None = None
    constraint_text: str = ""
    gpu_type: str | None = None

    def admits(self, host: HostView) -> bool:
        """Whether `host` may be one of the job's hosts (features, type, exclusions)."""
        if host.name in self.exclude:
            return False
        if self.gpu_type is not None and host.gpu_type != self.gpu_type:
            return False
        return self.constraint is None or evaluate(self.constraint, host.features)

    def words(self) -> str:
        """The target in words, for reasons: `on node4, constraint nvlink, GPU type h100`."""
        out: list[str] = []
        if self.nodelist:
            out.append("on " + ",".join(sorted(self.nodelist)))
        if self.exclude:
            out.append("not on " + ",".join(sorted(self.exclude)))
        if self.constraint is not None:
            out.append(f"constraint {self.constraint_text}")
        if self.gpu_type is not None:
            out.append(f"GPU type {self.gpu_type}")
        return ", ".join(out)


def make_target(
    nodelist: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    constraint: str | None = None,
    gpu_type: str | None = None,
) -> Target | None:
    """A Target from a request's fields, or None when the job targets nothing."""
    if not (nodelist or exclude or constraint or gpu_type):
        return None
    return Target(
        nodelist=frozenset(nodelist),
        exclude=frozenset(exclude),
        constraint=parse_constraint(constraint) if constraint else None,
        constraint_text=constraint or "",
        gpu_type=gpu_type.lower() if gpu_type else None,
    )
