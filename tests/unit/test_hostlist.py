"""Tests for hpcbatch.core.hostlist: Slurm hostlist expressions."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpcbatch.core.hostlist import MAX_HOSTS, HostlistError, compress, expand

# --------------------------------------------------------------------------- expand


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("node1", ["node1"]),
        ("node[1-4]", ["node1", "node2", "node3", "node4"]),
        ("node[01-04,7]", ["node01", "node02", "node03", "node04", "node7"]),
        ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
        ("n1,n[3-5]", ["n1", "n3", "n4", "n5"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        ("[1-2]", ["1", "2"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("n[3]", ["n3"]),
        ("n[5,1,3]", ["n5", "n1", "n3"]),
        ("n1,n1", ["n1", "n1"]),
        ("login, n[1-2] ", ["login", "n1", "n2"]),
        ("", []),
        ("  ", []),
        ("host.example.com", ["host.example.com"]),
    ],
)
def test_expand(expr: str, names: list[str]) -> None:
    assert expand(expr) == names


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("n[1-", "unclosed '[' in 'n[1-'"),
        ("n1]", "unmatched ']' in 'n1]' at position 2"),
        ("n[[1]]", "nested '[' in 'n[[1]]' at position 2"),
        ("n[a]", "'a' in 'n[a]' is not a number or a range lo-hi"),
        ("n[1-a]", "'1-a' in 'n[1-a]' is not a number or a range lo-hi"),
        ("n[3-1]", "range '3-1' in 'n[3-1]' goes backwards"),
        ("n[]", "empty number in brackets in 'n[]'"),
        ("n[1,,2]", "empty number in brackets in 'n[1,,2]'"),
        ("a,,b", "empty name in 'a,,b'"),
        ("a,", "empty name in 'a,'"),
        ("a b", "space inside 'a b'"),
        ("n[1 - 2]", "space inside 'n[1 - 2]'"),
        ("n[1-999999]", f"has more than {MAX_HOSTS} hosts"),
        ("n[1-1000]m[1-1000]", f"'n[1-1000]m[1-1000]' expands to more than {MAX_HOSTS}"),
        ("n[1-99999999999999999999999]", "not a number or a range"),
    ],
)
def test_expand_errors(expr: str, message: str) -> None:
    with pytest.raises(HostlistError) as info:
        expand(expr)
    assert message in str(info.value)


def test_expand_total_limit_across_items() -> None:
    expr = ",".join(f"r{i}n[1-50000]" for i in range(3))
    with pytest.raises(HostlistError, match="expands to more than"):
        expand(expr)


def test_hostlist_error_is_value_error() -> None:
    assert issubclass(HostlistError, ValueError)


# --------------------------------------------------------------------------- compress


@pytest.mark.parametrize(
    ("names", "expr"),
    [
        (["node1", "node2", "node3", "node4"], "node[1-4]"),
        (["node01", "node02"], "node[01-02]"),
        (["node1"], "node1"),
        (["login"], "login"),
        ([], ""),
        (["node3", "node1", "node2"], "node[1-3]"),
        (["node1", "node2", "node4", "node5", "node7"], "node[1-2,4-5,7]"),
        (["node08", "node09", "node10"], "node[08-10]"),
        (["node9", "node10"], "node[9-10]"),
        (["node1", "node01"], "node[1,01]"),
        (["gpu1", "cpu1", "gpu2", "cpu2"], "gpu[1-2],cpu[1-2]"),
        (["login", "n1", "n2", "db"], "login,n[1-2],db"),
        (["n1-ib", "n2-ib", "n1"], "n[1-2]-ib,n1"),
        (["a1b3", "a1b4", "a2b3", "a2b4"], "a1b[3-4],a2b[3-4]"),
        (["n1", "n1"], "n[1,1]"),
        (["x", "x"], "x,x"),
    ],
)
def test_compress(names: list[str], expr: str) -> None:
    assert compress(names) == expr


@pytest.mark.parametrize(("name", "why"), [("", "is empty"), ("a,b", "','"), ("n[1]", "'[]'")])
def test_compress_rejects(name: str, why: str) -> None:
    with pytest.raises(HostlistError) as info:
        compress(["ok", name])
    assert why in str(info.value)


def test_compress_huge_numbers_stay_plain() -> None:
    name = "n" + "9" * 40
    assert compress([name]) == name
    assert expand(compress([name, "n1"])) == [name, "n1"]


def test_compress_many_is_fast() -> None:
    names = [f"n{i}" for i in range(0, 100_000, 2)]
    assert expand(compress(names)) == names


# --------------------------------------------------------------------------- round trip

_names = st.builds(
    lambda prefix, number, width, suffix: f"{prefix}{str(number).zfill(width)}{suffix}",
    st.sampled_from(["n", "node", "gpu-", "a1b", "rack2-n", "x.y"]),
    st.integers(min_value=0, max_value=120),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(["", "-ib", ".lan"]),
) | st.sampled_from(["login", "db", "head"])


@given(st.lists(_names, unique=True, max_size=40))
def test_round_trip_keeps_every_name(names: list[str]) -> None:
    again = expand(compress(names))
    assert Counter(again) == Counter(names)
    assert compress(again) == compress(names)  # canonical
    assert expand(compress(again)) == again


@given(
    st.sampled_from(["n", "node", "gpu-"]),
    st.sets(st.integers(min_value=0, max_value=500), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=4),
)
def test_round_trip_sorted_names_exactly(prefix: str, numbers: set[int], width: int) -> None:
    names = [f"{prefix}{n:0{width}d}" for n in sorted(numbers)]
    assert expand(compress(names)) == names


@given(st.text(max_size=30))
def test_expand_only_raises_hostlist_error(expr: str) -> None:
    with contextlib.suppress(HostlistError):
        expand(expr)
