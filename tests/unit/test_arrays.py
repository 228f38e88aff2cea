"""Tests for hpcbatch.core.arrays: specs, child ids, the parent's state."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.arrays import (
    MAX_CHILDREN,
    ArraySpec,
    ArraySpecError,
    child_id,
    format_spec,
    parent_state,
    parse_job_id,
    parse_spec,
)
from hpcbatch.core.states import JobState as S


@pytest.mark.parametrize(
    ("text", "indices", "throttle"),
    [
        ("0-3", (0, 1, 2, 3), None),
        ("7", (7,), None),
        ("1,5,9-17:2", (1, 5, 9, 11, 13, 15, 17), None),
        ("0-99%4", tuple(range(100)), 4),
        ("3,1,2,3", (1, 2, 3), None),
        (" 0-4:3 ", (0, 3), None),
        ("0-9999", tuple(range(10_000)), None),
    ],
)
def test_parse_spec(text: str, indices: tuple[int, ...], throttle: int | None) -> None:
    assert parse_spec(text) == ArraySpec(indices, throttle)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty array spec"),
        ("0-10000", "more than 10000 children"),
        ("0-5000,6000-11000", "more than 10000 children"),
        ("5-1", "'5-1' in '5-1' ends before it starts"),
        ("1-5:0", "step in '1-5:0' must be at least 1"),
        ("1,a", "array item 'a'"),
        ("1,,2", "array item ''"),
        ("0-9%0", "throttle '%0'"),
        ("0-9%x", "throttle '%x'"),
        ("4000001", "above the maximum 4000000"),
        ("-1", "array item '-1'"),
    ],
)
def test_bad_specs_name_the_piece(text: str, message: str) -> None:
    with pytest.raises(ArraySpecError, match=None) as err:
        parse_spec(text)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_max_children_is_accepted() -> None:
    assert parse_spec(f"0-{MAX_CHILDREN - 1}").size == MAX_CHILDREN


@given(st.sets(st.integers(0, 3000), min_size=1, max_size=200), st.none() | st.integers(1, 50))
def test_format_spec_round_trips(indices: set[int], throttle: int | None) -> None:
    ordered = tuple(sorted(indices))
    text = format_spec(ordered, throttle)
    assert parse_spec(text) == ArraySpec(ordered, throttle)
    assert len(text) <= len(",".join(map(str, ordered))) + 4


def test_format_spec_is_compact() -> None:
    assert format_spec((0, 1, 2, 3)) == "0-3"
    assert format_spec((0, 2, 4, 6, 7)) == "0-6:2,7"
    assert format_spec((1, 2, 5)) == "1-2,5"
    assert format_spec((1, 2), 3) == "1-2%3"
    assert str(parse_spec("0-99%4")) == "0-99%4"


def test_child_ids() -> None:
    assert child_id(12, 7) == "12_7"
    assert parse_job_id("12_7") == (12, 7)
    assert parse_job_id("12") == (12, None)
    for bad in ("12_", "_7", "a", "12_7_1", ""):
        with pytest.raises(ArraySpecError, match="is not N or N_INDEX"):
            parse_job_id(bad)


@pytest.mark.parametrize(
    ("counts", "state"),
    [
        ({}, S.SUBMITTED),
        ({S.SUCCEEDED: 3}, S.SUCCEEDED),
        ({S.SUCCEEDED: 3, S.FAILED: 1}, S.FAILED),
        ({S.FAILED: 1, S.RUNNING: 1}, S.RUNNING),  # failed only once every child is final
        ({S.FAILED: 1, S.PENDING: 1}, S.PENDING),
        ({S.STARTING: 1, S.RUNNABLE: 5}, S.RUNNING),
        ({S.RUNNABLE: 5, S.PENDING: 2, S.SUCCEEDED: 1}, S.RUNNABLE),
        ({S.SUBMITTED: 2}, S.SUBMITTED),
        ({S.SUBMITTED: 2, S.SUCCEEDED: 0}, S.SUBMITTED),
    ],
)
def test_parent_state(counts: dict[S, int], state: S) -> None:
    assert parent_state(counts) == state


@given(st.dictionaries(st.sampled_from(list(S)), st.integers(0, 5)))
def test_parent_is_final_exactly_when_every_child_is(counts: dict[S, int]) -> None:
    state = parent_state(counts)
    children = [s for s, n in counts.items() if n > 0]
    if children and all(s.is_final for s in children):
        assert state == (S.FAILED if S.FAILED in children else S.SUCCEEDED)
    else:
        assert not state.is_final
