"""Array jobs: the `--array` spec, child ids, and the parent's summary state.

An array job is one submission that fans out into children with indices, as
Slurm's `--array=0-999%50` and AWS Batch's `arrayProperties.size` do. This
module is the pure part: parsing the spec into sorted unique indices and a
throttle, naming children `PARENT_INDEX` (Slurm's `%A_%a`), and summarising the
children's states into the parent's.

Spec syntax (Slurm's): comma-separated items, each `N`, `A-B` or `A-B:S`
(every S-th index from A up to B), then optionally `%T`: at most T children run
at once. Limits: 1 to `MAX_CHILDREN` (10,000, AWS Batch's maximum) children;
indices 0 to `MAX_INDEX`. A single child is accepted (Slurm accepts it; AWS
Batch asks for at least 2): it is still an array job, with an index.

Parent state (`parent_state`), from the children's counts, first rule that applies:

1. no children: SUBMITTED;
2. every child final: SUCCEEDED if all succeeded, else FAILED;
3. any child STARTING or RUNNING: RUNNING;
4. any child RUNNABLE: RUNNABLE;
5. any child PENDING: PENDING;
6. otherwise (only SUBMITTED, or SUBMITTED and final): SUBMITTED.

AWS Batch shows a parent only as SUBMITTED, PENDING (while children are not
all final), SUCCEEDED or FAILED; hpcbatch shows more (rules 3 and 4) because a
listing that says RUNNING while children run answers "is it running?" at a
glance. Final states are the same as AWS Batch's: the parent fails if any child
failed, and only once all children are final.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hpcbatch.core.states import JobState

MAX_CHILDREN = 10_000
MAX_INDEX = 4_000_000  # Slurm's largest MaxArraySize is 4000001

_ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
_ID = re.compile(r"(\d+)(?:_(\d+))?")


class ArraySpecError(ValueError):
    """An `--array` spec or a job id that does not parse; the message names the piece."""


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """Sorted unique child indices, and at most how many run at once (None: no limit)."""

    indices: tuple[int, ...]
    throttle: int | None = None

    @property
    def size(self) -> int:
        return len(self.indices)

    def __str__(self) -> str:
        return format_spec(self.indices, self.throttle)


def _number(text: str, what: str, piece: str) -> int:
    value = int(text)
    if value > MAX_INDEX:
        raise ArraySpecError(f"array {what} {value} in {piece!r} is above the maximum {MAX_INDEX}")
    return value


def parse_spec(text: str) -> ArraySpec:
    """Parse `0-999`, `1,5,9-17:2`, `0-99%4`, `7` into an ArraySpec."""
    spec = text.strip()
    if not spec:
        raise ArraySpecError("empty array spec (expected e.g. 0-99, 1,5,9-17:2 or 0-99%4)")
    throttle: int | None = None
    if "%" in spec:
        spec, _, limit = spec.partition("%")
        if not limit.isdigit() or int(limit) < 1:
            raise ArraySpecError(
                f"array throttle {'%' + limit!r} in {text!r} must be a whole number of at least 1"
            )
        throttle = int(limit)
    indices: set[int] = set()
    for piece in spec.split(","):
        piece = piece.strip()
        m = _ITEM.fullmatch(piece)
        if m is None:
            raise ArraySpecError(
                f"array item {piece!r} in {text!r} is not N, A-B or A-B:STEP "
                f"(e.g. 0-99, 1,5,9-17:2)"
            )
        first = _number(m.group(1), "index", piece)
        if m.group(2) is None:
            indices.add(first)
        else:
            last = _number(m.group(2), "index", piece)
            step = int(m.group(3)) if m.group(3) is not None else 1
            if last < first:
                raise ArraySpecError(f"array range {piece!r} in {text!r} ends before it starts")
            if step < 1:
                raise ArraySpecError(f"array step in {piece!r} must be at least 1")
            if (last - first) // step + 1 > MAX_CHILDREN:
                raise ArraySpecError(f"array range {piece!r} has more than {MAX_CHILDREN} children")
            indices.update(range(first, last + 1, step))
        if len(indices) > MAX_CHILDREN:
            raise ArraySpecError(f"array {text!r} has more than {MAX_CHILDREN} children")
    return ArraySpec(tuple(sorted(indices)), throttle)


def format_spec(indices: tuple[int, ...] | list[int], throttle: int | None = None) -> str:
    """The shortest `A-B` / `A-B:S` / `N` list for sorted unique `indices`."""
    parts: list[str] = []
    i = 0
    n = len(indices)
    while i < n:
        j = i
        if i + 1 < n:
            step = indices[i + 1] - indices[i]
            while j + 1 < n and indices[j + 1] - indices[j] == step:
                j += 1
            if j - i >= 2 or (j - i == 1 and step == 1):
                suffix = f":{step}" if step != 1 else ""
                parts.append(f"{indices[i]}-{indices[j]}{suffix}")
                i = j + 1
                continue
        parts.append(str(indices[i]))
        i += 1
    return ",".join(parts) + (f"%{throttle}" if throttle is not None else "")


def child_id(parent: int, index: int) -> str:
    """A child's id as users see it: `12_7`."""
    return f"{parent}_{index}"


def parse_job_id(text: str) -> tuple[int, int | None]:
    """`12` -> (12, None); `12_7` -> (12, 7)."""
    m = _ID.fullmatch(text.strip())
    if m is None:
        raise ArraySpecError(f"job id {text!r} is not N or N_INDEX (e.g. 12 or 12_7)")
    return int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)


def parent_state(counts: Mapping[JobState, int]) -> JobState:
    """The parent's state from how many children are in each state (see the module doc)."""
    total = sum(n for n in counts.values() if n > 0)
    if total == 0:
        return JobState.SUBMITTED

    def has(*states: JobState) -> bool:
        return any(counts.get(s, 0) > 0 for s in states)

    if not has(*(s for s in JobState if not s.is_final)):
        return JobState.FAILED if has(JobState.FAILED) else JobState.SUCCEEDED
    if has(JobState.STARTING, JobState.RUNNING):
        return JobState.RUNNING
    if has(JobState.RUNNABLE):
        return JobState.RUNNABLE
    if has(JobState.PENDING):
        return JobState.PENDING
    return JobState.SUBMITTED
