"""Tests for hpcbatch.core.units: Slurm time and memory formats."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.units import (
    MAX_MEMORY_MB,
    MAX_SECONDS,
    UnitError,
    format_duration,
    format_memory,
    parse_memory_mb,
    parse_time,
)

# --------------------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 60),
        ("90", 5400),
        ("1:30", 90),
        ("10:00", 600),
        ("1:30:00", 5400),
        ("48:00:00", 172800),
        ("2-0", 172800),
        ("1-12", 129600),
        ("1-02:03", 93780),
        ("1-02:03:04", 93784),
        ("0-36:00:00", 129600),  # fields are not range-checked, as in Slurm
        ("0:59", 59),
        (" 30 ", 1800),
    ],
)
def test_parse_time_formats(text: str, seconds: int) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize(
    "text", ["0", "00", "0:00", "0-0", "-1", "infinite", "INFINITE", "UNLIMITED", "unlimited"]
)
def test_parse_time_no_limit(text: str) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1h", "1:2:3:4", "1-2-3", "-5", "1.5", "1:", ":30", "1-", "1-2:3:4:5", "٣"],
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_time(text)
    assert repr(text) in str(info.value)
    assert "is not a time" in str(info.value)


def test_parse_time_too_long() -> None:
    with pytest.raises(UnitError, match="longer than the longest"):
        parse_time("999999999999")
    assert parse_time(str(MAX_SECONDS // 60)) == MAX_SECONDS // 60 * 60


def test_unit_error_is_value_error() -> None:
    assert issubclass(UnitError, ValueError)


# --------------------------------------------------------------------------- format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0:00"),
        (59, "0:59"),
        (184, "3:04"),
        (3600, "01:00:00"),
        (7384, "02:03:04"),
        (93784, "1-02:03:04"),
        (86400 * 10, "10-00:00:00"),
        (None, "UNLIMITED"),
    ],
)
def test_format_duration(seconds: int | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_negative() -> None:
    with pytest.raises(UnitError, match="negative"):
        format_duration(-1)


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_time(format_duration(seconds)) == seconds


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("512", 512),
        ("512M", 512),
        ("512m", 512),
        ("4G", 4096),
        ("4g", 4096),
        ("4GB", 4096),
        ("4GiB", 4096),
        ("1.5G", 1536),
        ("0.5G", 512),
        (".5G", 512),
        ("2T", 2 * 1024 * 1024),
        ("1024K", 1),
        ("1K", 1),  # rounded up
        ("1025K", 2),
        ("0.1M", 1),
        ("1.0001G", 1025),
        (" 8G ", 8192),
    ],
)
def test_parse_memory(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize(
    "text", ["", "4Q", "G", "abc", "-4G", "4 G B", "1,5G", "4B", "4KK", "1.2.3", ".", "4\u212a"]
)
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_memory_mb(text)
    assert str(info.value) == f"{text!r} is not a memory size (e.g. 4G, 512M)"


@pytest.mark.parametrize("text", ["0", "0G", "0.0"])
def test_parse_memory_zero(text: str) -> None:
    with pytest.raises(UnitError, match="no memory at all"):
        parse_memory_mb(text)


def test_parse_memory_too_large() -> None:
    with pytest.raises(UnitError, match="more than the largest"):
        parse_memory_mb("999999999T")


@pytest.mark.parametrize(
    ("mb", "text"),
    [
        (512, "512M"),
        (1023, "1023M"),
        (1024, "1G"),
        (1536, "1.5G"),
        (1280, "1.25G"),
        (1100, "1100M"),
        (4096, "4G"),
        (1024 * 1024, "1T"),
        (1024 * 1024 * 3 // 2, "1.5T"),
        (0, "0M"),
    ],
)
def test_format_memory(mb: int, text: str) -> None:
    assert format_memory(mb) == text


def test_format_memory_negative() -> None:
    with pytest.raises(UnitError, match="negative"):
        format_memory(-1)


@given(st.integers(min_value=1, max_value=MAX_MEMORY_MB))
def test_memory_round_trip(mb: int) -> None:
    assert parse_memory_mb(format_memory(mb)) == mb


@given(st.text(max_size=30))
def test_parsers_only_raise_unit_error(text: str) -> None:
    for parse in (parse_time, parse_memory_mb):
        with contextlib.suppress(UnitError):
            parse(text)
