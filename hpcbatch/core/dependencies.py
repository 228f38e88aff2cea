"""Job dependencies: Slurm's `--dependency` syntax, AWS Batch's array types, evaluation.

A job with dependencies stays PENDING until they are met, becomes RUNNABLE
when they are, and fails (with a reason naming the dependency) when they can
never be. This module is the pure part: parsing, checking at submit (unknown
jobs, array mismatches, cycles), and evaluating against the states of the jobs
depended on.

Syntax (`--dependency=`, `#SBATCH --dependency=`): comma-separated items, all
of which must hold (Slurm's `,`):

- `afterok:ID[:ID...]`: each ID succeeded (the default kind; AWS Batch's only one)
- `afterany:ID[:ID...]`: each ID ended, either way
- `afternotok:ID[:ID...]`: each ID failed
- `after:ID[:ID...]`: each ID started (or ended)
- `aftercorr:ID` or `n_to_n:ID`: array to array, child i waits for child i of ID
  to succeed (AWS Batch N_TO_N, Slurm aftercorr)
- `sequential`: array children run one after another in index order, each
  after the previous one succeeded (AWS Batch SEQUENTIAL)
- `singleton`: one job of this name and user at a time: waits for every
  earlier one to end
- `ID` alone: `afterok:ID`

IDs are job ids (`12`) or array children (`12_3`). Refused with a clear error:
Slurm's any-of separator `?`, time offsets `+MIN`, and kinds hpcbatch does not
have (`afterburstbuffer`, `expand`).

A dependency on an array parent refers to the parent's summary state
(`hpcbatch.core.arrays.parent_state`): `afterok:12` waits for all of 12's
children and fails if any of them fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from hpcbatch.core.states import JobState


class DependencyError(ValueError):
    """A dependency spec that does not parse or cannot be accepted; the message says which."""


class DepType(StrEnum):
    """A kind of dependency."""

    AFTER = "after"
    """The other job started (STARTING, RUNNING) or ended."""
    AFTEROK = "afterok"
    """The other job SUCCEEDED."""
    AFTERNOTOK = "afternotok"
    """The other job FAILED."""
    AFTERANY = "afterany"
    """The other job ended, either way."""
    N_TO_N = "n_to_n"
    """Child i of this array waits for child i of the other to succeed."""
    SEQUENTIAL = "sequential"
    """Child i of this array waits for the previous child to succeed."""
    SINGLETON = "singleton"
    """Every earlier job with this job's name and user has ended."""


_ALIASES = {"aftercorr": DepType.N_TO_N, "n_to_n": DepType.N_TO_N}
_NO_TARGET = (DepType.SINGLETON, DepType.SEQUENTIAL)
_ID = re.compile(r"(\d+)(?:_(\d+))?")


@dataclass(frozen=True, slots=True, order=True)
class JobRef:
    """A job, or one child of an array job."""

    job: int
    index: int | None = None

    def __str__(self) -> str:
        return str(self.job) if self.index is None else f"{self.job}_{self.index}"


@dataclass(frozen=True, slots=True)
class Dependency:
    type: DepType
    target: JobRef | None = None

    def __str__(self) -> str:
        return str(self.type) if self.target is None else f"{self.type}:{self.target}"


def _ref(text: str, item: str) -> JobRef:
    m = _ID.fullmatch(text)
    if m is None:
        raise DependencyError(
            f"dependency {item!r}: {text!r} is not a job id (N, or N_INDEX for an array child)"
        )
    return JobRef(int(m.group(1)), int(m.group(2)) if m.group(2) is not None else None)


def parse(text: str) -> tuple[Dependency, ...]:
    """Parse a `--dependency` value; duplicates are dropped, order kept."""
    spec = text.strip()
    if not spec:
        raise DependencyError("empty dependency (expected e.g. afterok:12 or singleton)")
    if "?" in spec:
        raise DependencyError(
            f"dependency {text!r}: any-of ('?') is not supported; "
            "use ',' (every dependency must hold) or submit separate jobs"
        )
    out: dict[Dependency, None] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise DependencyError(f"dependency {text!r} has an empty item")
        if "+" in item:
            raise DependencyError(f"dependency {item!r}: time offsets (+minutes) are not supported")
        head, _, rest = item.partition(":")
        if _ID.fullmatch(head) and not rest:
            out[Dependency(DepType.AFTEROK, _ref(head, item))] = None
            continue
        name = head.lower()
        try:
            kind = _ALIASES.get(name) or DepType(name)
        except ValueError:
            known = ", ".join(["after", "afterok", "afterany", "afternotok", "aftercorr"])
            raise DependencyError(
                f"dependency {item!r}: unknown kind {head!r} "
                f"(known: {known}, n_to_n, sequential, singleton)"
            ) from None
        if kind in _NO_TARGET:
            if rest:
                raise DependencyError(f"dependency {item!r}: {kind} takes no job ids")
            out[Dependency(kind)] = None
            continue
        if not rest:
            raise DependencyError(f"dependency {item!r}: {kind} needs job ids, e.g. {kind}:12")
        for part in rest.split(":"):
            ref = _ref(part, item)
            if kind == DepType.N_TO_N and ref.index is not None:
                raise DependencyError(
                    f"dependency {item!r}: {kind} refers to a whole array job, not child {ref}"
                )
            out[Dependency(kind, ref)] = None
    return tuple(out)


def format_dependencies(deps: Iterable[Dependency]) -> str:
    """The canonical text of `deps` (parses back to the same tuple)."""
    return ",".join(str(d) for d in deps)


# --------------------------------------------------------------------------- checks at submit


def validate(
    deps: Sequence[Dependency],
    *,
    exists: Callable[[JobRef], bool],
    array_indices: Callable[[int], Sequence[int] | None],
    own_indices: Sequence[int] | None,
) -> None:
    """Refuse, at submit, what could never be met: unknown jobs, bad array pairings.

    `exists(ref)`: whether that job (or array child) exists. `array_indices(job)`:
    that job's child indices, None if it is not an array. `own_indices`: the
    submitted job's, None if it is not an array.
    """
    for dep in deps:
        if dep.type == DepType.SEQUENTIAL and own_indices is None:
            raise DependencyError("dependency sequential: only an array job can be sequential")
        if dep.target is None:
            continue
        if not exists(dep.target):
            raise DependencyError(f"dependency {dep}: job {dep.target} does not exist")
        if dep.type == DepType.N_TO_N:
            theirs = array_indices(dep.target.job)
            if own_indices is None or theirs is None:
                raise DependencyError(
                    f"dependency {dep}: n_to_n pairs two array jobs "
                    f"({'this job' if own_indices is None else f'job {dep.target}'} is not one)"
                )
            missing = sorted(set(own_indices) - set(theirs))
            if missing:
                raise DependencyError(
                    f"dependency {dep}: job {dep.target} has no child {missing[0]} "
                    f"to pair with this job's child {missing[0]}"
                )


def find_cycle(edges: Mapping[int, Iterable[int]]) -> list[int] | None:
    """A dependency cycle in `edges` (job -> jobs it waits for), as [a, b, ..., a]; or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    color: dict[int, int] = {}
    for root in edges:
        if color.get(root, WHITE) != WHITE:
            continue
        path = [root]
        stack = [iter(edges.get(root, ()))]
        color[root] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                color[path.pop()] = BLACK
                continue
            c = color.get(nxt, WHITE)
            if c == GREY:
                return [*path[path.index(nxt) :], nxt]
            if c == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                stack.append(iter(edges.get(nxt, ())))
    return None


# --------------------------------------------------------------------------- evaluation


class Outcome(StrEnum):
    SATISFIED = "SATISFIED"
    """Every dependency is met: the job may become RUNNABLE."""
    WAIT = "WAIT"
    """Some dependency is not met yet, but may be."""
    NEVER = "NEVER"
    """Some dependency can never be met: the job fails with the reason."""


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    reason: str | None = None  # WAIT: the pending reason; NEVER: why the job fails


_STARTED = (JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED)


def _one(kind: DepType, state: JobState) -> Outcome:
    if kind == DepType.AFTER:
        return Outcome.SATISFIED if state in _STARTED else Outcome.WAIT
    if kind == DepType.AFTERANY:
        return Outcome.SATISFIED if state.is_final else Outcome.WAIT
    if kind == DepType.AFTERNOTOK:
        if state == JobState.SUCCEEDED:
            return Outcome.NEVER
        return Outcome.SATISFIED if state == JobState.FAILED else Outcome.WAIT
    # afterok, n_to_n and sequential all need success
    if state == JobState.FAILED:
        return Outcome.NEVER
    return Outcome.SATISFIED if state == JobState.SUCCEEDED else Outcome.WAIT


def evaluate(
    deps: Iterable[Dependency],
    state_of: Callable[[JobRef], JobState | None],
    *,
    own: JobRef | None = None,
    previous_index: int | None = None,
    singleton_blockers: Sequence[int] = (),
) -> Verdict:
    """Whether `deps` are met, given the states of the jobs they name.

    `state_of(ref)`: a job's state (an array parent's summary state), None if
    it does not exist. `own`: this job (with its index when it is an array
    child), for n_to_n and sequential. `previous_index`: the array index before
    this child's (None for the first). `singleton_blockers`: ids of earlier
    unfinished jobs with this job's name and user.
    """
    waits: list[str] = []
    for dep in deps:
        kind, target = dep.type, dep.target
        if kind == DepType.SINGLETON:
            if singleton_blockers:
                first = min(singleton_blockers)
                waits.append(f"singleton: job {first} with the same name and user has not ended")
            continue
        if kind == DepType.SEQUENTIAL:
            if own is None or own.index is None or previous_index is None:
                continue
            target = JobRef(own.job, previous_index)
        elif (
            kind == DepType.N_TO_N
            and target is not None
            and own is not None
            and own.index is not None
        ):
            target = JobRef(target.job, own.index)
        if target is None:  # not produced by parse(); nothing to wait for
            continue
        state = state_of(target)
        shown = f"{kind}:{target}" if kind != DepType.SEQUENTIAL else f"sequential (after {target})"
        if state is None:
            return Verdict(
                Outcome.NEVER, f"dependency {shown} can never be met: job {target} does not exist"
            )
        outcome = _one(kind, state)
        if outcome == Outcome.NEVER:
            return Verdict(
                Outcome.NEVER, f"dependency {shown} can never be met: job {target} {state}"
            )
        if outcome == Outcome.WAIT:
            waits.append(f"job {target} ({shown}; it is {state})")
    if not waits:
        return Verdict(Outcome.SATISFIED)
    more = f" and {len(waits) - 1} more" if len(waits) > 1 else ""
    head = waits[0]
    text = head if head.startswith("singleton") else f"waits for {head}"
    return Verdict(Outcome.WAIT, f"Dependency: {text}{more}")
