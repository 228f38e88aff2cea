"""Array job specifications: `--array=0-999`, `1,5,9-17:2`, `0-99%4`.

Pure parsing, shared by the CLI (errors before submission) and the
controller. An array has 1 to 10,000 children (Slurm allows a single child;
AWS Batch wants at least 2: one child is accepted and behaves as an array of
one); indices are 0 to 4,000,000, sorted and unique.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CHILDREN = 10_000
MAX_INDEX = 4_000_000


class ArrayError(ValueError):
    """An array specification that cannot be used; the message names the bad piece."""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    indices: tuple[int, ...]
    throttle: int | None = None

    def __str__(self) -> str:
        return format_indices(self.indices) + (f"%{self.throttle}" if self.throttle else "")


def _int(text: str, what: str, piece: str) -> int:
    if not text.strip().isdigit():
        raise ArrayError(f"{piece!r}: {what} {text.strip()!r} is not a whole number")
    return int(text)


def parse_array(text: str) -> ArraySpec:
    """Parse Slurm's `--array` syntax into sorted unique indices and a throttle."""
    spec = text.strip()
    if not spec:
        raise ArrayError("empty array specification (e.g. 0-99, 1,3,5, 0-99%4)")
    throttle: int | None = None
    if "%" in spec:
        spec, _, limit = spec.partition("%")
        throttle = _int(limit, "throttle", text)
        if throttle < 1:
            raise ArrayError(f"{text!r}: the throttle %{limit} must be at least 1")
    indices: set[int] = set()
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            raise ArrayError(f"{text!r}: empty element between commas")
        body, _, step_text = piece.partition(":")
        step = _int(step_text, "step", piece) if step_text else 1
        if step < 1:
            raise ArrayError(f"{piece!r}: the step must be at least 1")
        if "-" in body:
            lo_text, _, hi_text = body.partition("-")
            lo, hi = _int(lo_text, "start", piece), _int(hi_text, "end", piece)
            if hi < lo:
                raise ArrayError(f"{piece!r}: the range ends before it starts")
        else:
            if step_text:
                raise ArrayError(f"{piece!r}: a step needs a range (e.g. 1-17:2)")
            lo = hi = _int(body, "index", piece)
        if hi > MAX_INDEX:
            raise ArrayError(f"{piece!r}: indices go up to {MAX_INDEX}")
        if (hi - lo) // step + 1 + len(indices) > MAX_CHILDREN:
            raise ArrayError(f"{text!r}: more than {MAX_CHILDREN:,} children")
        indices.update(range(lo, hi + 1, step))
    return ArraySpec(tuple(sorted(indices)), throttle)


def format_indices(indices: tuple[int, ...] | list[int]) -> str:
    """`0-3,7,9-10` for 0,1,2,3,7,9,10."""
    if not indices:
        return ""
    parts: list[str] = []
    start = prev = indices[0]
    for i in [*indices[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def child_id(parent: int, index: int) -> str:
    """Slurm's `PARENT_INDEX` name of an array child."""
    return f"{parent}_{index}"


def parse_child_id(text: str) -> tuple[int, int | None]:
    """`12_7` -> (12, 7); `12` -> (12, None)."""
    head, sep, tail = text.strip().partition("_")
    if not head.isdigit() or (sep and not tail.isdigit()):
        raise ArrayError(f"{text!r} is not a job id (N or ARRAY_INDEX)")
    return int(head), int(tail) if sep else None
