"""Tests for hpcbatch.core.params (Ref:: substitution) and hpcbatch.core.retry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.params import ParameterError, check, substitute, unresolved
from hpcbatch.core.retry import (
    Action,
    ExitRule,
    RetryStrategy,
    RetryStrategyError,
    decide,
)

# --------------------------------------------------------------------------- params

ARGV = ["ffmpeg", "-i", "Ref::inputfile", "-c", "Ref::codec", "-o", "Ref::outputfile"]


def test_aws_example() -> None:
    got = substitute(ARGV, {"codec": "mp4"}, {"inputfile": "in.mov", "outputfile": "out.mp4"})
    assert got == ["ffmpeg", "-i", "in.mov", "-c", "mp4", "-o", "out.mp4"]


def test_override_wins_and_unknown_stays() -> None:
    got = substitute(ARGV, {"codec": "mp4"}, {"codec": "h264"})
    assert got[4] == "h264"
    assert got[2] == "Ref::inputfile"
    assert unresolved(ARGV, {"codec": "mp4"}) == ["inputfile", "outputfile"]


def test_inside_an_argument_and_not_rescanned() -> None:
    got = substitute(["--in=Ref::a,Ref::b", "Ref::c"], {"a": "1", "b": "Ref::c", "c": "3"})
    assert got == ["--in=1,Ref::c", "3"]


def test_check_names_and_values() -> None:
    assert check({"in-file_1": "x"}) == {"in-file_1": "x"}
    with pytest.raises(ParameterError, match="parameter name 'a b'"):
        check({"a b": "x"})
    with pytest.raises(ParameterError, match="parameter 'n' must be a string"):
        check({"n": 3})  # type: ignore[dict-item]


@given(
    st.lists(st.text(max_size=20), max_size=6),
    st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=8)),
)
def test_substitute_without_placeholders_is_identity(
    argv: list[str], values: dict[str, str]
) -> None:
    plain = [a.replace("Ref::", "") for a in argv]
    assert substitute(plain, values) == plain


# --------------------------------------------------------------------------- retry


def strategy(attempts: int, *rules: dict[str, str]) -> RetryStrategy:
    return RetryStrategy.from_json({"attempts": attempts, "evaluateOnExit": list(rules)})


def test_no_rules_retries_while_attempts_remain() -> None:
    s = strategy(3)
    assert decide(s, 1, exit_code=1).retry
    assert decide(s, 2, exit_code=1).retry
    last = decide(s, 3, exit_code=1)
    assert not last.retry and last.why == "attempt 3 of 3: no attempts left"
    assert not decide(RetryStrategy(), 1, exit_code=1).retry


def test_first_matching_rule_wins() -> None:
    s = strategy(
        5,
        {"onExitCode": "137", "action": "retry"},
        {"onExitCode": "1*", "action": "EXIT"},
        {"onReason": "host*", "action": "RETRY"},
    )
    assert decide(s, 1, exit_code=137).retry
    no = decide(s, 1, exit_code=12)
    assert not no.retry and "retry rule 2 (onExitCode=1* -> EXIT)" in no.why
    assert decide(s, 1, exit_code=None, reason="host node3 lost").retry
    assert decide(s, 1, exit_code=2).retry  # nothing matches: retry (AWS semantics)


def test_every_condition_of_a_rule_must_match() -> None:
    s = strategy(3, {"onExitCode": "1", "onStatusReason": "Host*", "action": "EXIT"})
    assert decide(s, 1, exit_code=1, status_reason="other").retry
    assert not decide(s, 1, exit_code=1, status_reason="Host gone").retry
    assert decide(s, 1, exit_code=None, status_reason="Host gone").retry  # no code: no match


def test_timeout_and_cancel_are_never_retried() -> None:
    s = strategy(10, {"onExitCode": "*", "action": "RETRY"})
    assert not decide(s, 1, exit_code=143, timed_out=True).retry
    assert not decide(s, 1, cancelled=True).retry


def test_a_timeout_is_retried_only_by_a_rule_about_the_reason() -> None:
    s = strategy(3, {"onReason": "timeout*", "action": "RETRY"})
    why = "timeout: exceeded its time limit of 0:05"
    assert decide(s, 1, reason=why, status_reason=why, timed_out=True).retry
    assert not decide(s, 3, reason=why, status_reason=why, timed_out=True).retry  # none left
    assert not decide(strategy(3), 1, reason=why, timed_out=True).retry  # no rule: not retried


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"attempts": 0}, "retry attempts must be 1 to 10, got 0"),
        ({"attempts": 11}, "1 to 10, got 11"),
        ({"attempts": "3"}, "attempts must be a whole number"),
        ({"attempts": 2, "evaluateOnExit": [{"action": "RETRY"}]}, "evaluateOnExit[0] needs"),
        ({"evaluateOnExit": [{"action": "MAYBE", "onExitCode": "1"}]}, "RETRY or EXIT"),
        ({"evaluateOnExit": [{"action": "EXIT", "onExitCode": "1a"}]}, "onExitCode '1a'"),
        ({"evaluateOnExit": [{"action": "EXIT", "onReason": "a*b"}]}, "onReason 'a*b'"),
        ({"evaluateOnExit": [{"action": "EXIT", "onExitCode": "1"}] * 6}, "at most 5"),
        ({"tries": 3}, "unknown field 'tries'"),
        ({"evaluateOnExit": [{"action": "EXIT", "code": "1"}]}, "unknown field 'code'"),
    ],
)
def test_bad_strategies_name_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(RetryStrategyError) as err:
        RetryStrategy.from_json(data)
    assert message in str(err.value)


@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.none() | st.integers(0, 255),
    st.lists(st.sampled_from(["0", "1*", "2", "*", "13*"]), max_size=5),
)
def test_never_more_attempts_than_allowed(
    attempts: int, attempt: int, code: int | None, patterns: list[str]
) -> None:
    s = RetryStrategy(attempts, tuple(ExitRule(Action.RETRY, on_exit_code=p) for p in patterns))
    d = decide(s, attempt, exit_code=code)
    assert d.retry == (attempt < attempts)
