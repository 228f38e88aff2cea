"""Retry strategies as AWS Batch defines them: attempts and exit rules.

A job may run up to `attempts` times (1-10). When an attempt fails, the rules
of `evaluateOnExit` are tried in order and the first that matches decides:
`RETRY` (run another attempt, if any remain) or `EXIT` (fail now). A rule
matches when every condition it gives matches (conditions it leaves out match
anything):

* `onExitCode`: the exit code in decimal, e.g. `137`, or a prefix with a
  trailing `*` (`1*`, `*`); digits only.
* `onReason`: the attempt's reason as hpcbatch records it (e.g. `killed by
  SIGKILL`, `exit code 3`, `host node3 lost: ...`).
* `onStatusReason`: the job's status reason (e.g. `terminated by user`).

Reason patterns may hold letters, digits, spaces, tabs, `.` and `:` (as in
AWS Batch), and may end with `*`; matching is case-sensitive and whole-text.
As in AWS Batch, when no rule matches the attempt is retried while attempts
remain, and a user's cancel or terminate is never retried. A timeout is not
retried either (a job that ran out of time will again), unless a RETRY rule
about the reason matches it (`onReason: "timeout*"`): rules on exit codes
alone never retry a timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAX_ATTEMPTS = 10
MAX_RULES = 5
_EXIT_PATTERN = re.compile(r"[0-9]*\*?")
_REASON_PATTERN = re.compile(r"[A-Za-z0-9 \t.:]*\*?")


class RetryStrategyError(ValueError):
    """A retry strategy that cannot be accepted; the message names the field."""


class Action(StrEnum):
    RETRY = "RETRY"
    """Run another attempt, if any remain."""
    EXIT = "EXIT"
    """Fail the job now."""


def _glob(pattern: str, text: str | None) -> bool:
    if text is None:
        return False
    if pattern.endswith("*"):
        return text.startswith(pattern[:-1])
    return text == pattern


@dataclass(frozen=True, slots=True)
class ExitRule:
    action: Action
    on_exit_code: str | None = None
    on_reason: str | None = None
    on_status_reason: str | None = None

    def matches(self, exit_code: int | None, reason: str | None, status: str | None) -> bool:
        code = None if exit_code is None else str(exit_code)
        return (
            (self.on_exit_code is None or _glob(self.on_exit_code, code))
            and (self.on_reason is None or _glob(self.on_reason, reason))
            and (self.on_status_reason is None or _glob(self.on_status_reason, status))
        )

    def __str__(self) -> str:
        conds = [
            f"{k}={v}"
            for k, v in (
                ("onExitCode", self.on_exit_code),
                ("onReason", self.on_reason),
                ("onStatusReason", self.on_status_reason),
            )
            if v is not None
        ]
        return f"{' '.join(conds)} -> {self.action}"


@dataclass(frozen=True, slots=True)
class RetryStrategy:
    attempts: int = 1
    rules: tuple[ExitRule, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise RetryStrategyError(
                f"retry attempts must be 1 to {MAX_ATTEMPTS}, got {self.attempts}"
            )
        if len(self.rules) > MAX_RULES:
            raise RetryStrategyError(
                f"at most {MAX_RULES} evaluateOnExit rules, got {len(self.rules)}"
            )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "retryStrategy") -> RetryStrategy:
        """From AWS Batch's JSON shape: `{"attempts": 3, "evaluateOnExit": [...]}`."""
        unknown = set(data) - {"attempts", "evaluateOnExit"}
        if unknown:
            raise RetryStrategyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
        attempts = data.get("attempts", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool):
            raise RetryStrategyError(f"{where}.attempts must be a whole number, got {attempts!r}")
        raw = data.get("evaluateOnExit", [])
        if not isinstance(raw, Sequence) or isinstance(raw, str):
            raise RetryStrategyError(f"{where}.evaluateOnExit must be a list")
        rules = tuple(rule_from_json(r, f"{where}.evaluateOnExit[{i}]") for i, r in enumerate(raw))
        try:
            return cls(attempts, rules)
        except RetryStrategyError as exc:
            raise RetryStrategyError(f"{where}: {exc}") from None


def rule_from_json(data: Any, where: str) -> ExitRule:
    if not isinstance(data, Mapping):
        raise RetryStrategyError(f"{where} must be an object")
    unknown = set(data) - {"action", "onExitCode", "onReason", "onStatusReason"}
    if unknown:
        raise RetryStrategyError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    action = data.get("action")
    if not isinstance(action, str) or action.upper() not in Action.__members__:
        raise RetryStrategyError(f"{where}.action must be RETRY or EXIT, got {action!r}")
    fields: dict[str, str | None] = {}
    for key, pattern in (
        ("onExitCode", _EXIT_PATTERN),
        ("onReason", _REASON_PATTERN),
        ("onStatusReason", _REASON_PATTERN),
    ):
        value = data.get(key)
        if value is not None and (
            not isinstance(value, str) or len(value) > 512 or not pattern.fullmatch(value)
        ):
            allowed = "digits" if key == "onExitCode" else "letters, digits, spaces, '.' and ':'"
            raise RetryStrategyError(
                f"{where}.{key} {value!r} must be up to 512 {allowed}, optionally ending in '*'"
            )
        fields[key] = value
    if all(v is None for v in fields.values()):
        raise RetryStrategyError(f"{where} needs onExitCode, onReason or onStatusReason")
    return ExitRule(
        Action(action.upper()), fields["onExitCode"], fields["onReason"], fields["onStatusReason"]
    )


def rule_from_fields(rule: Mapping[str, Any], where: str) -> ExitRule:
    """A rule given with snake_case fields (`on_exit_code`, ...), as hpcbatch stores them."""
    aws = {"action": rule.get("action")}
    for ours, theirs in (
        ("on_exit_code", "onExitCode"),
        ("on_reason", "onReason"),
        ("on_status_reason", "onStatusReason"),
    ):
        if rule.get(ours) is not None:
            aws[theirs] = rule[ours]
    return rule_from_json(aws, where)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    why: str


def decide(
    strategy: RetryStrategy,
    attempt: int,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    status_reason: str | None = None,
    timed_out: bool = False,
    cancelled: bool = False,
) -> RetryDecision:
    """Whether a failed attempt (number `attempt`, from 1) is followed by another."""
    if cancelled:
        return RetryDecision(False, "cancelled or terminated: not retried")
    asked = False
    for n, rule in enumerate(strategy.rules, 1):
        if rule.matches(exit_code, reason, status_reason):
            if rule.action == Action.EXIT:
                return RetryDecision(False, f"retry rule {n} ({rule}) matched")
            # Only a rule about the reason (`onReason: "timeout*"`) retries a timeout.
            asked = rule.on_reason is not None or rule.on_status_reason is not None
            break
    if timed_out and not asked:
        return RetryDecision(False, "timed out: a timeout is not retried unless a rule says so")
    if attempt >= strategy.attempts:
        return RetryDecision(False, f"attempt {attempt} of {strategy.attempts}: no attempts left")
    return RetryDecision(True, f"retrying: attempt {attempt + 1} of {strategy.attempts}")
