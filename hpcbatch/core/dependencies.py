"""Job dependencies: Slurm's `--dependency` syntax and what each kind waits for.

Pure: parsing, and a verdict from the states of the jobs depended on. The
controller supplies those states and acts on the verdict (release the job to
RUNNABLE, fail it with the reason, or keep it PENDING with the reason).

Kinds (a list joined by `,` must all hold; Slurm's `?` any-of is refused):

| syntax | waits until | never when |
|---|---|---|
| `after:ID[:ID...]` | each job has started (or ended) | - |
| `afterok:ID...` (default kind for a bare `ID`) | each SUCCEEDED | one FAILED |
| `afternotok:ID...` | each FAILED | one SUCCEEDED |
| `afterany:ID...` | each ended, either way | - |
| `singleton` | no other job of this name and user runs or waits ahead | - |
| `n_to_n:ID` (AWS N_TO_N, arrays) | child i of array ID SUCCEEDED, for child i | it FAILED |
| `sequential` (AWS SEQUENTIAL, arrays) | the previous child SUCCEEDED | it FAILED |

An ID may be an array child, `12_7`; an array's own id means all its children.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hpcbatch.core.states import JobState

KINDS = ("after", "afterok", "afternotok", "afterany", "singleton", "n_to_n", "sequential")
_BARE_ID = re.compile(r"^\d+(_\d+)?$")
_WITH_IDS = ("after", "afterok", "afternotok", "afterany", "n_to_n")


class DependencyError(ValueError):
    """A dependency specification that cannot be used; the message names the bad piece."""


@dataclass(frozen=True, slots=True)
class Dependency:
    kind: str
    job_id: int | None = None
    index: int | None = None  # an array child `job_id_index`

    def __str__(self) -> str:
        if self.job_id is None:
            return self.kind
        target = str(self.job_id) if self.index is None else f"{self.job_id}_{self.index}"
        return f"{self.kind}:{target}"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Literal["satisfied", "wait", "never"]
    reason: str = ""


def _target(text: str, piece: str) -> tuple[int, int | None]:
    head, sep, tail = text.partition("_")
    if not head.isdigit() or (sep and not tail.isdigit()):
        raise DependencyError(f"{piece!r}: {text!r} is not a job id (N or ARRAY_INDEX)")
    return int(head), int(tail) if sep else None


def parse_dependencies(text: str) -> list[Dependency]:
    """Parse `afterok:12:13,afterany:14`, `singleton`, `n_to_n:5`, `sequential`, `12`."""
    spec = text.strip()
    if not spec:
        raise DependencyError("empty dependency (e.g. afterok:12)")
    if "?" in spec:
        raise DependencyError(f"{spec!r}: any-of dependencies ('?') are not supported; use ','")
    out: list[Dependency] = []
    for piece in spec.split(","):
        piece = piece.strip()
        if not piece:
            raise DependencyError(f"{spec!r}: empty element between commas")
        kind, _, rest = piece.partition(":")
        kind = kind.lower()
        if kind.isdigit() or ("_" in kind and kind.replace("_", "").isdigit() and rest == ""):
            kind, rest = "afterok", piece  # a bare id, as Slurm accepts
        if kind not in KINDS:
            known = ", ".join(KINDS)
            raise DependencyError(f"{piece!r}: unknown dependency type {kind!r} (one of {known})")
        targets = rest.split(":") if rest else []
        if kind in _WITH_IDS:
            if not targets:
                raise DependencyError(f"{piece!r}: {kind} needs job ids ({kind}:12[:13...])")
            if kind == "after" and any("+" in t for t in targets):
                raise DependencyError(f"{piece!r}: after with a delay (+time) is not supported")
            for t in targets:
                job_id, index = _target(t, piece)
                if kind == "n_to_n" and index is not None:
                    raise DependencyError(f"{piece!r}: n_to_n names a whole array, not a child")
                out.append(Dependency(kind, job_id, index))
        else:
            if targets:
                raise DependencyError(f"{piece!r}: {kind} takes no job ids")
            out.append(Dependency(kind))
    return list(dict.fromkeys(out))


def _one(dep: Dependency, state: JobState | None) -> Verdict:
    name = str(dep)
    if dep.kind == "singleton":
        if state == JobState.SUCCEEDED:
            return Verdict("satisfied")
        return Verdict("wait", "Dependency: singleton: another job of this name and user is ahead")
    what = "the previous array child" if dep.kind == "sequential" else f"job {dep.job_id}"
    if dep.index is not None:
        what = f"job {dep.job_id}_{dep.index}"
    if state is None:
        return Verdict("never", f"DependencyNeverSatisfied: {name}: {what} does not exist")
    ok_states = {
        "after": (JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED),
        "afterok": (JobState.SUCCEEDED,),
        "n_to_n": (JobState.SUCCEEDED,),
        "sequential": (JobState.SUCCEEDED,),
        "afternotok": (JobState.FAILED,),
        "afterany": (JobState.SUCCEEDED, JobState.FAILED),
    }[dep.kind]
    if state in ok_states:
        return Verdict("satisfied")
    if state.is_final:
        return Verdict(
            "never", f"DependencyNeverSatisfied: {name} can never be met: {what} {state}"
        )
    return Verdict("wait", f"Dependency: {name} ({what} is {state})")


def evaluate(deps: Sequence[Dependency], states: Mapping[str, JobState | None]) -> Verdict:
    """All must hold: the first `never` wins, else the first `wait`, else satisfied.

    `states` maps `str(dep)` to the state of what that dependency names (None:
    no such job). For `singleton`, SUCCEEDED means "nothing ahead of it".
    """
    waiting: Verdict | None = None
    for dep in deps:
        verdict = _one(dep, states.get(str(dep)))
        if verdict.kind == "never":
            return verdict
        if verdict.kind == "wait" and waiting is None:
            waiting = verdict
    return waiting or Verdict("satisfied")
