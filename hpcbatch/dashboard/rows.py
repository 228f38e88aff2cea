"""The jobs table as data: squeue-style filters, columns, sorting, collapsed arrays.

Pure (standard library only) and fast: building the rows for 10,000 jobs is
one pass and one sort, and the table widget draws only the rows on screen.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hpcbatch.core.arrays import format_spec
from hpcbatch.dashboard.model import FINAL, Job, Model
from hpcbatch.dashboard.words import SHORT, counts_text, elapsed, limit, memory, stamp

LONG = {v: k for k, v in SHORT.items()} | {"CA": "FAILED", "CD": "SUCCEEDED", "PEND": "PENDING"}


class FilterError(ValueError):
    """A filter that does not parse; the message names the flag."""


@dataclass(frozen=True)
class JobFilter:
    """squeue's flags: -t states, -u user, -p queue, -n name, -w host, -j ids, and
    --tag KEY=VALUE (jobs carrying every tag given); words match names."""

    states: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()  # "KEY=VALUE" each
    words: tuple[str, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> JobFilter:
        try:
            tokens = shlex.split(text)
        except ValueError as exc:
            raise FilterError(f"filter: {exc}") from None
        sets: dict[str, set[str]] = {k: set() for k in ("t", "u", "p", "n", "w", "j", "g")}
        words: list[str] = []
        flags = {
            "-t": "t", "--states": "t", "--state": "t",
            "-u": "u", "--user": "u",
            "-p": "p", "--partition": "p", "--queue": "p",
            "-n": "n", "--name": "n",
            "-w": "w", "--nodelist": "w",
            "-j": "j", "--jobs": "j",
            "--tag": "g",
        }  # fmt: skip
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            flag, _, value = tok.partition("=")
            if flag in flags:
                if not value:
                    i += 1
                    if i >= len(tokens):
                        raise FilterError(f"filter: {flag} needs a value")
                    value = tokens[i]
                sets[flags[flag]].update(v.strip() for v in value.split(",") if v.strip())
            elif tok.startswith("-") and len(tok) > 1:
                raise FilterError(f"filter: unknown flag {tok} (use -t -u -p -n -w -j --tag)")
            else:
                words.append(tok.lower())
            i += 1
        states = set()
        for s in sets["t"]:
            name = LONG.get(s.upper(), s.upper())
            if name not in SHORT:
                raise FilterError(f"filter: -t {s}: not a job state ({', '.join(SHORT)})")
            states.add(name)
        return cls(
            states=frozenset(states),
            users=frozenset(sets["u"]),
            queues=frozenset(sets["p"]),
            names=frozenset(sets["n"]),
            hosts=frozenset(sets["w"]),
            ids=frozenset(sets["j"]),
            tags=frozenset(sets["g"]),
            words=tuple(words),
            text=text.strip(),
        )

    def matches(self, job: Job) -> bool:
        """Everything but the state (arrays apply the state to their children)."""
        return (
            (not self.users or job.get("user") in self.users)
            and (not self.queues or job.get("queue") in self.queues)
            and (not self.names or job.get("name") in self.names)
            and (not self.hosts or bool(self.hosts.intersection(job.get("hosts") or ())))
            and (
                not self.ids
                or str(job["id"]) in self.ids
                or str(job.get("display_id")) in self.ids
                or str(job.get("array_parent")) in self.ids
            )
            and all(w in str(job.get("name", "")).lower() for w in self.words)
            and (not self.tags or self.tags <= _tag_words(job))
        )

    def state_ok(self, job: Job) -> bool:
        return not self.states or job.get("state") in self.states


def _tag_words(job: Job) -> set[str]:
    tags = job.get("tags") or {}
    return {f"{k}={v}" for k, v in tags.items()} if isinstance(tags, dict) else set()


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # the least it needs; the flexible column takes what is left
    right: bool = False
    default: bool = True
    drop: int = 0  # at narrow widths, higher drops first (0: never)


COLUMNS: tuple[Column, ...] = (
    Column("id", "JOBID", 9),
    Column("name", "NAME", 12),
    Column("user", "USER", 8, drop=2),
    Column("queue", "QUEUE", 8, drop=3),
    Column("state", "STATE", 9),
    Column("nodes", "NODES", 5, right=True, drop=1),
    Column("cpus", "CPUS", 4, right=True, default=False),
    Column("gpus", "GPUS", 4, right=True, default=False),
    Column("memory", "MEM", 6, right=True, default=False),
    Column("elapsed", "TIME", 9, right=True),
    Column("limit", "LIMIT", 10, right=True, drop=4),
    Column("attempt", "TRY", 3, right=True, default=False),
    Column("exit", "EXIT", 4, right=True, default=False),
    Column("submitted", "SUBMITTED", 19, default=False),
    Column("reason", "NODELIST(REASON)", 16),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
DEFAULT_COLUMNS = tuple(c.key for c in COLUMNS if c.default)


@dataclass(slots=True)
class Row:
    """One line of the table; its cells are made when it is first drawn (see `cells`)."""

    key: str  # "12", "12_3"; unique in the table
    job_id: int
    kind: str  # "job", "array" (a collapsed or expanded parent), "child"
    state: str
    job: Job
    id_text: str
    now: float
    model: Model | None = None  # arrays: for their children's counts
    _values: dict[str, str] | None = field(default=None, repr=False)

    def retime(self, now: float) -> None:
        """Elapsed times move on: remake the cells when next drawn."""
        self.now = now
        self._values = None

    @property
    def values(self) -> dict[str, str]:
        if self._values is None:
            self._values = _values(self.job, self.now)
            self._values["id"] = self.id_text
            if self.kind == "array" and self.model is not None:
                counts = self.model.child_counts(self.job_id)
                self._values["reason"] = counts_text(dict(counts))
        return self._values


def _values(job: Job, now: float) -> dict[str, str]:
    state = job["state"]
    where = ",".join(job.get("hosts") or [])
    detail = where if state in ("STARTING", "RUNNING") else (job.get("reason") or "")
    return {
        "id": str(job.get("display_id") or job["id"]),
        "name": str(job.get("name", "")),
        "user": str(job.get("user", "")),
        "queue": str(job.get("queue", "")),
        "state": state,
        "nodes": str(job.get("nodes", 1)),
        "cpus": str(job.get("cpus", 1)),
        "gpus": str(job.get("gpus", 0)),
        "memory": memory(job.get("memory_mb")),
        "elapsed": elapsed(job, now),
        "limit": limit(job),
        "attempt": str(job.get("attempt") or "-"),
        "exit": "-" if job.get("exit_code") is None else str(job["exit_code"]),
        "submitted": stamp(job.get("submitted")),
        "reason": detail,
    }


SORT_KEYS: dict[str, Callable[[Job, float], Any]] = {
    "id": lambda j, now: int(j["id"]),
    "elapsed": lambda j, now: (now - j["started"]) if j.get("started") else 0.0,
    "limit": lambda j, now: j.get("time_limit_s") or 0,
    "nodes": lambda j, now: int(j.get("nodes") or 1),
    "cpus": lambda j, now: int(j.get("cpus") or 1),
    "gpus": lambda j, now: int(j.get("gpus") or 0),
    "memory": lambda j, now: int(j.get("memory_mb") or 0),
    "attempt": lambda j, now: int(j.get("attempt") or 0),
    "exit": lambda j, now: -1 if j.get("exit_code") is None else int(j["exit_code"]),
    "submitted": lambda j, now: j.get("submitted") or 0.0,
    "state": lambda j, now: (str(j.get("state")), int(j["id"])),
}


def sort_key(column: str, now: float) -> Callable[[Job], Any]:
    fn = SORT_KEYS.get(column)
    if fn is not None:
        return lambda j: fn(j, now)
    field_ = "reason" if column == "reason" else column
    return lambda j: (str(j.get(field_) or ""), int(j["id"]))


def job_rows(
    model: Model,
    flt: JobFilter,
    *,
    now: float,
    sort: str = "id",
    reverse: bool = False,
    expanded: Iterable[int] = (),
    hide_final: bool = False,
) -> list[Row]:
    """The table's rows: top-level jobs and array parents, children under expanded parents."""
    open_ = set(expanded)
    top: list[Job] = []
    for job in model.jobs.values():
        if job.get("array_parent") is not None and int(job["array_parent"]) in model.jobs:
            continue  # shown under its parent
        if not flt.matches(job):
            continue
        if job.get("array_size") is not None:
            kids = [k for k in model.array_children(int(job["id"])) if _shown(k, flt, hide_final)]
            if not kids and (flt.states or hide_final) and not _shown(job, flt, hide_final):
                continue
        elif not _shown(job, flt, hide_final):
            continue
        top.append(job)
    top.sort(key=sort_key(sort, now), reverse=reverse)
    rows: list[Row] = []
    for job in top:
        jid = int(job["id"])
        if job.get("array_size") is None:
            rows.append(Row(str(jid), jid, "job", job["state"], job, str(jid), now))
            continue
        rows.append(_array_row(model, job, now, jid in open_))
        if jid in open_:
            for kid in model.array_children(jid):
                if _shown(kid, flt, hide_final):
                    key = str(kid["display_id"])
                    rows.append(
                        Row(key, int(kid["id"]), "child", kid["state"], kid, "  " + key, now)
                    )
    return rows


def _shown(job: Job, flt: JobFilter, hide_final: bool) -> bool:
    return flt.state_ok(job) and not (hide_final and job.get("state") in FINAL)


def _array_row(model: Model, job: Job, now: float, is_open: bool) -> Row:
    kids = model.array_children(int(job["id"]))
    indices = sorted(int(k["array_index"]) for k in kids if k.get("array_index") is not None)
    spec = format_spec(indices) if indices else f"0-{int(job.get('array_size') or 1) - 1}"
    id_text = f"{'▾' if is_open else '▸'}{job['id']}_[{spec}]"
    return Row(str(job["id"]), int(job["id"]), "array", job["state"], job, id_text, now, model)


def fit_columns(wanted: Iterable[str], width: int, id_width: int = 0) -> list[tuple[Column, int]]:
    """The wanted columns that fit in `width` cells, with their widths.

    `id_width` widens the id column to the longest id shown (array ranges).
    The name takes spare room up to 24 cells, the last column the rest; when
    the minimum widths do not fit, columns with the highest `drop` go first
    (so 80 columns keep id, name, state, time and the reason).
    """
    keep = set(wanted)
    cols = [c for c in COLUMNS if c.key in keep]
    widths = {c.key: (max(c.width, min(id_width, 16)) if c.key == "id" else c.width) for c in cols}

    def need(cs: list[Column]) -> int:
        return sum(widths[c.key] for c in cs) + max(len(cs) - 1, 0)

    while need(cols) > width and any(c.drop for c in cols):
        cols.remove(max(cols, key=lambda c: c.drop))
    spare = max(width - need(cols), 0)
    if "name" in widths and any(c.key == "name" for c in cols):
        grow = min(spare, 24 - widths["name"])
        widths["name"] += max(grow, 0)
        spare -= max(grow, 0)
    if cols:
        widths[cols[-1].key] += spare
    return [(c, widths[c.key]) for c in cols]
