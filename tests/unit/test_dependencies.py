"""Tests for hpcbatch.core.dependencies: parsing, submit checks, cycles, evaluation,
and a simulation showing dependencies hold when jobs run in any order."""

from __future__ import annotations

import graphlib
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.dependencies import (
    Dependency,
    DependencyError,
    DepType,
    JobRef,
    Outcome,
    evaluate,
    find_cycle,
    format_dependencies,
    parse,
    validate,
)
from hpcbatch.core.states import JobState as S

D, R = Dependency, JobRef


def test_parse_slurm_syntax() -> None:
    assert parse("afterok:12:13,afterany:14") == (
        D(DepType.AFTEROK, R(12)),
        D(DepType.AFTEROK, R(13)),
        D(DepType.AFTERANY, R(14)),
    )
    assert parse("afternotok:5") == (D(DepType.AFTERNOTOK, R(5)),)
    assert parse("after:7_3") == (D(DepType.AFTER, R(7, 3)),)
    assert parse("singleton") == (D(DepType.SINGLETON),)
    assert parse("12") == (D(DepType.AFTEROK, R(12)),)
    assert parse("AfterOK:1,afterok:1") == (D(DepType.AFTEROK, R(1)),)


def test_parse_array_kinds() -> None:
    assert parse("aftercorr:20") == (D(DepType.N_TO_N, R(20)),)
    assert parse("n_to_n:20,sequential") == (D(DepType.N_TO_N, R(20)), D(DepType.SEQUENTIAL))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty dependency"),
        ("afterok:1?afterok:2", "any-of ('?') is not supported"),
        ("after:1+30", "time offsets"),
        ("afterburstbuffer:3", "unknown kind 'afterburstbuffer'"),
        ("afterok", "afterok needs job ids"),
        ("afterok:x", "'x' is not a job id"),
        ("afterok:1,", "has an empty item"),
        ("singleton:3", "singleton takes no job ids"),
        ("n_to_n:3_1", "refers to a whole array job"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DependencyError) as err:
        parse(text)
    assert message in str(err.value)


deps_strategy = st.lists(
    st.one_of(
        st.builds(
            D,
            st.sampled_from([DepType.AFTER, DepType.AFTEROK, DepType.AFTERANY, DepType.AFTERNOTOK]),
            st.builds(R, st.integers(1, 99), st.none() | st.integers(0, 9)),
        ),
        st.builds(D, st.just(DepType.N_TO_N), st.builds(R, st.integers(1, 99))),
        st.sampled_from([D(DepType.SINGLETON), D(DepType.SEQUENTIAL)]),
    ),
    min_size=1,
    max_size=6,
    unique=True,
)


@given(deps_strategy)
def test_format_round_trips(deps: list[Dependency]) -> None:
    assert parse(format_dependencies(deps)) == tuple(deps)


def test_validate_refuses_unknown_jobs_and_bad_pairings() -> None:
    arrays = {20: [0, 1, 2], 21: [0, 1]}

    def check(text: str, own: list[int] | None) -> None:
        validate(
            parse(text),
            exists=lambda ref: ref.job in (5, 20, 21) and (ref.index is None or ref.index < 3),
            array_indices=arrays.get,
            own_indices=own,
        )

    check("afterok:5,afterany:20_2", None)
    check("n_to_n:20", [0, 1])
    with pytest.raises(DependencyError, match="job 6 does not exist"):
        check("afterok:5:6", None)
    with pytest.raises(DependencyError, match="job 20_7 does not exist"):
        check("afterok:20_7", None)
    with pytest.raises(DependencyError, match="this job is not one"):
        check("n_to_n:20", None)
    with pytest.raises(DependencyError, match="job 5 is not one"):
        check("n_to_n:5", [0])
    with pytest.raises(DependencyError, match="job 21 has no child 2"):
        check("n_to_n:21", [0, 1, 2])
    with pytest.raises(DependencyError, match="only an array job can be sequential"):
        check("sequential", None)


def test_find_cycle() -> None:
    assert find_cycle({1: [2], 2: [3], 3: []}) is None
    assert find_cycle({1: [2], 2: [3], 3: [1]}) == [1, 2, 3, 1]
    assert find_cycle({4: [4]}) == [4, 4]
    assert find_cycle({1: [2, 3], 3: [2], 2: []}) is None


@given(st.dictionaries(st.integers(0, 12), st.lists(st.integers(0, 12), max_size=3)))
def test_find_cycle_agrees_with_a_topological_sort(edges: dict[int, list[int]]) -> None:
    cycle = find_cycle(edges)
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    assert (cycle is None) == acyclic
    if cycle is not None:
        assert cycle[0] == cycle[-1]
        for a, b in itertools.pairwise(cycle):
            assert b in edges.get(a, [])


def test_evaluate_kinds() -> None:
    table = {R(1): S.SUCCEEDED, R(2): S.FAILED, R(3): S.RUNNING, R(4): S.PENDING}
    ok = Outcome.SATISFIED
    assert evaluate(parse("afterok:1,afterany:2,afternotok:2,after:3"), table.get).outcome == ok
    v = evaluate(parse("afterok:1:3"), table.get)
    assert v.outcome == Outcome.WAIT
    assert v.reason == "Dependency: waits for job 3 (afterok:3; it is RUNNING)"
    v = evaluate(parse("afterok:4,afterany:3"), table.get)
    assert v.reason == "Dependency: waits for job 4 (afterok:4; it is PENDING) and 1 more"
    v = evaluate(parse("afterok:3,afterok:2"), table.get)
    assert v.outcome == Outcome.NEVER
    assert v.reason == "dependency afterok:2 can never be met: job 2 FAILED"
    v = evaluate(parse("afternotok:1"), table.get)
    assert v.reason == "dependency afternotok:1 can never be met: job 1 SUCCEEDED"
    v = evaluate(parse("afterany:9"), table.get)
    assert v.reason == "dependency afterany:9 can never be met: job 9 does not exist"
    assert evaluate(parse("after:4"), table.get).outcome == Outcome.WAIT


def test_evaluate_array_kinds() -> None:
    table = {R(20, 0): S.SUCCEEDED, R(20, 1): S.RUNNING, R(30, 0): S.SUCCEEDED, R(30, 1): S.FAILED}
    n = parse("n_to_n:20")
    assert evaluate(n, table.get, own=R(31, 0)).outcome == Outcome.SATISFIED
    assert evaluate(n, table.get, own=R(31, 1)).reason == (
        "Dependency: waits for job 20_1 (n_to_n:20_1; it is RUNNING)"
    )
    seq = parse("sequential")
    assert evaluate(seq, table.get, own=R(30, 0), previous_index=None).outcome == Outcome.SATISFIED
    assert evaluate(seq, table.get, own=R(30, 1), previous_index=0).outcome == Outcome.SATISFIED
    v = evaluate(seq, table.get, own=R(30, 2), previous_index=1)
    assert v.reason == "dependency sequential (after 30_1) can never be met: job 30_1 FAILED"


def test_singleton() -> None:
    v = evaluate(parse("singleton"), {}.get, singleton_blockers=[9, 4])
    assert v.outcome == Outcome.WAIT
    assert v.reason == "Dependency: singleton: job 4 with the same name and user has not ended"
    assert evaluate(parse("singleton"), {}.get).outcome == Outcome.SATISFIED


# --------------------------------------------------------------------------- simulation

KINDS = [DepType.AFTEROK, DepType.AFTERANY, DepType.AFTERNOTOK, DepType.AFTER]


@given(st.integers(2, 25), st.randoms(use_true_random=False), st.integers(0, 2**32 - 1))
def test_dependencies_hold_in_a_simulated_run(
    n: int, rnd: random.Random, outcome_seed: int
) -> None:
    """Jobs with random dependencies on earlier jobs (a DAG), run in random order as
    they become eligible, ending with random outcomes: a job starts only when its
    dependencies are met at that moment, is failed exactly when one can never be
    met, and every job ends (nothing waits for ever)."""
    outcomes = random.Random(outcome_seed)
    deps = {
        j: tuple(
            dict.fromkeys(
                D(rnd.choice(KINDS), R(rnd.randrange(j))) for _ in range(rnd.randint(0, min(j, 3)))
            )
        )
        for j in range(n)
    }
    state = {R(j): S.PENDING for j in range(n)}
    failed_by_dependency: set[int] = set()
    for _ in range(4 * n):
        moved = False
        for j in rnd.sample(range(n), n):
            me = R(j)
            if state[me] == S.PENDING:
                v = evaluate(deps[j], state.get)
                if v.outcome == Outcome.NEVER:
                    state[me] = S.FAILED
                    failed_by_dependency.add(j)
                    moved = True
                elif v.outcome == Outcome.SATISFIED:
                    for d in deps[j]:  # the property: met at the moment it starts
                        assert d.target is not None
                        other = state[d.target]
                        assert {
                            DepType.AFTEROK: other == S.SUCCEEDED,
                            DepType.AFTERANY: other.is_final,
                            DepType.AFTERNOTOK: other == S.FAILED,
                            DepType.AFTER: other != S.PENDING,
                        }[d.type]
                    state[me] = S.RUNNING
                    moved = True
            elif state[me] == S.RUNNING and outcomes.random() < 0.5:
                state[me] = outcomes.choice([S.SUCCEEDED, S.FAILED])
                moved = True
        if not moved and all(s.is_final for s in state.values()):
            break
        if not moved:  # only running jobs left that chose not to end yet
            for me, s in state.items():
                if s == S.RUNNING:
                    state[me] = S.SUCCEEDED
    assert all(s.is_final for s in state.values()), "a job waits for ever"
    for j in failed_by_dependency:  # "never" is for good: it still holds at the end
        v = evaluate(deps[j], state.get)
        assert v.outcome == Outcome.NEVER and v.reason
        assert v.reason.startswith("dependency ") and "can never be met: job " in v.reason
