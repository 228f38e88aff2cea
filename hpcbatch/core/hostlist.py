"""Slurm hostlist expressions: `node[1-4]` <-> `node1,node2,node3,node4`.

Inventories name many similar hosts at once, and the job environment
(`SLURM_JOB_NODELIST`) and the CLI print sets of hosts compactly. Both use
Slurm's hostlist syntax, so this module implements it once, purely:

* `expand("node[01-03,7],login")` -> `["node01", "node02", "node03", "node7", "login"]`
* `compress(["node1", "node2", "node3", "login"])` -> `"node[1-3],login"`

Syntax: a comma-separated list of items; an item is text with any number of
bracket groups, each a comma-separated list of numbers and ranges `lo-hi`. A
range is printed with the width of its `lo` (`[08-10]` is `08, 09, 10`), so
zero padding survives. Several groups in one item are a product, the last
varying fastest: `a[1-2]b[3-4]` is `a1b3, a1b4, a2b3, a2b4`. Duplicates are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import product

__all__ = ["MAX_HOSTS", "HostlistError", "compress", "expand"]

MAX_HOSTS = 100_000
"""The most names one expression may expand to (a guard against `n[1-999999999]`)."""

_MAX_DIGITS = 18
_RANGE_RE = re.compile(rf"([0-9]{{1,{_MAX_DIGITS}}})(?:-([0-9]{{1,{_MAX_DIGITS}}}))?")
_LAST_NUMBER_RE = re.compile(r"^(.*?)([0-9]+)([^0-9]*)$", re.DOTALL)
_FORBIDDEN = frozenset("[],") | frozenset(" \t\r\n\v\f")


class HostlistError(ValueError):
    """A hostlist expression (or host name) that cannot be expanded (or compressed)."""


def _split_top(expr: str) -> list[str]:
    """Split at commas outside brackets; checks that brackets balance and do not nest."""
    items: list[str] = []
    depth = 0
    start = 0
    for i, char in enumerate(expr):
        if char == "[":
            if depth:
                raise HostlistError(f"nested '[' in {expr!r} at position {i}")
            depth = 1
        elif char == "]":
            if not depth:
                raise HostlistError(f"unmatched ']' in {expr!r} at position {i}")
            depth = 0
        elif char == "," and not depth:
            items.append(expr[start:i])
            start = i + 1
    if depth:
        raise HostlistError(f"unclosed '[' in {expr!r}")
    items.append(expr[start:])
    return items


def _expand_group(group: str, item: str) -> list[str]:
    """The numbers in one bracket group (`01-03,7`), as strings with their padding."""
    numbers: list[str] = []
    for part in group.split(","):
        if not part:
            raise HostlistError(f"empty number in brackets in {item!r}")
        match = _RANGE_RE.fullmatch(part)
        if match is None:
            raise HostlistError(
                f"{part!r} in {item!r} is not a number or a range lo-hi"
                f" (of at most {_MAX_DIGITS} digits)"
            )
        lo_text, hi_text = match[1], match[2]
        if hi_text is None:
            numbers.append(lo_text)
            continue
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise HostlistError(f"range {part!r} in {item!r} goes backwards")
        if hi - lo + 1 + len(numbers) > MAX_HOSTS:
            raise HostlistError(f"range {part!r} in {item!r} has more than {MAX_HOSTS} hosts")
        width = len(lo_text)
        numbers.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return numbers


def _expand_item(item: str) -> list[str]:
    pieces = re.split(r"\[([^\]]*)\]", item)  # text, group, text, group, ..., text
    choices: list[list[str]] = []
    total = 1
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            choices.append([piece])
        else:
            numbers = _expand_group(piece, item)
            total *= len(numbers)
            if total > MAX_HOSTS:
                raise HostlistError(f"{item!r} expands to more than {MAX_HOSTS} hosts")
            choices.append(numbers)
    return ["".join(parts) for parts in product(*choices)]


def expand(expr: str) -> list[str]:
    """Every host name an expression stands for, in order (an empty expression: none).

    >>> expand("node[1-3],gpu[08-09]")
    ['node1', 'node2', 'node3', 'gpu08', 'gpu09']
    """
    if not expr.strip():
        return []
    names: list[str] = []
    for item in _split_top(expr):
        item = item.strip()
        if not item:
            raise HostlistError(f"empty name in {expr!r} (two commas in a row?)")
        if any(char.isspace() for char in item):
            raise HostlistError(f"space inside {item!r} in {expr!r}")
        names.extend(_expand_item(item))
        if len(names) > MAX_HOSTS:
            raise HostlistError(f"{expr!r} expands to more than {MAX_HOSTS} hosts")
    return names


def compress(names: Iterable[str]) -> str:
    """The shortest-form hostlist expression for names (the inverse of `expand`).

    Names are grouped on the text around their last number; groups keep the
    order of their first name, and the numbers of a group are sorted into
    ranges (`node3,node1,node2` -> `node[1-3]`). A group of one stays as is.

    >>> compress(["node1", "node2", "node3", "node4", "login", "gpu01", "gpu02"])
    'node[1-4],login,gpu[01-02]'
    """
    groups: dict[tuple[str, str], list[str]] = {}
    plain: dict[str, int] = {}
    order: list[tuple[str, str] | str] = []
    for name in names:
        bad = _FORBIDDEN.intersection(name)
        if not name or bad:
            why = "is empty" if not name else f"contains {''.join(sorted(bad))!r}"
            raise HostlistError(f"host name {name!r} {why}")
        match = _LAST_NUMBER_RE.match(name)
        if match is None or len(match[2]) > _MAX_DIGITS:
            if name not in plain:
                order.append(name)
                plain[name] = 0
            plain[name] += 1
            continue
        key = (match[1], match[3])
        if key not in groups:
            order.append(key)
            groups[key] = []
        groups[key].append(match[2])
    out: list[str] = []
    for entry in order:
        if isinstance(entry, str):
            out.extend([entry] * plain[entry])
            continue
        prefix, suffix = entry
        numbers = groups[entry]
        if len(numbers) == 1:
            out.append(f"{prefix}{numbers[0]}{suffix}")
        else:
            out.append(f"{prefix}[{_ranges(numbers)}]{suffix}")
    return ",".join(out)


def _ranges(numbers: list[str]) -> str:
    """`["3", "1", "2", "07"]` -> `"1-3,07"`: consecutive numbers that print alike joined."""
    runs: list[list[str]] = []  # [lo text, hi text]; a run prints with the width of lo
    ending: dict[int, list[int]] = {}  # hi value -> indexes of the runs ending there
    for text in sorted(numbers, key=lambda t: (int(t), len(t))):
        value = int(text)
        candidates = ending.get(value - 1, [])
        for position, index in enumerate(candidates):
            if str(value).zfill(len(runs[index][0])) == text:
                del candidates[position]
                runs[index][1] = text
                ending.setdefault(value, []).append(index)
                break
        else:
            ending.setdefault(value, []).append(len(runs))
            runs.append([text, text])
    return ",".join(lo if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
