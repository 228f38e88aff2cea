"""`hpcbatch store copy SOURCE TARGET`: move an installation's state from one store
to another (SQLite to PostgreSQL, or back), with its controller stopped.

Both stores are opened as a controller opens them, exclusively: a controller
still running on the source (or already on the target) makes the copy refuse,
since it would go on writing what is being copied. The target must be empty
(a new file or database, migrated here to the same schema); every table is
copied in one transaction on the target, the cluster id included (it names
this cluster's files on the hosts, so running jobs are found again), job ids
and each job's history order kept. Then each table is counted on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcbatch.store.db import Store
from hpcbatch.store.definitions import DEFINITION_FIELDS
from hpcbatch.store.engine import Engine, Rows, StoreError, column_list
from hpcbatch.store.logs import LOG_FIELDS
from hpcbatch.store.outbox import OUTBOX_FIELDS
from hpcbatch.store.rows import ATTEMPT_FIELDS, JOB_FIELDS, TRANSITION_FIELDS
from hpcbatch.store.secrets import SECRET_FIELDS
from hpcbatch.store.steps import STEP_FIELDS
from hpcbatch.store.url import StoreUrl

TABLES: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "jobs": JOB_FIELDS,
    "transitions": TRANSITION_FIELDS,
    "attempts": ATTEMPT_FIELDS,
    "hosts": ("name", "admin_state", "admin_reason", "facts", "updated", "power_state"),
    "definitions": DEFINITION_FIELDS,
    "queue_admin": ("name", "state", "reason", "updated"),
    "outbox": OUTBOX_FIELDS,
    "job_steps": STEP_FIELDS,
    "inventory_changes": ("kind", "name", "entry", "updated"),
    "secrets": SECRET_FIELDS,
    "job_logs": LOG_FIELDS,
}
"""Every table of the schema (schema.py) with all its columns: what a copy moves."""


@dataclass(frozen=True, slots=True)
class Copied:
    table: str
    source: int
    target: int


async def copy_store(source: StoreUrl, target: StoreUrl) -> list[Copied]:
    """Copy every row of `source` into the empty store `target`; the rows counted on both."""
    if str(source) == str(target):
        raise StoreError(f"the source and the target are the same store ({source})")
    src = await Store.open(source, exclusive=True)
    try:
        dst = await Store.open(target, exclusive=True)
        try:
            return await _copy(src.db, dst.db)
        finally:
            await dst.close()
    finally:
        await src.close()


async def counts(db: Engine) -> dict[str, int]:
    """Rows per table."""
    result: dict[str, int] = {}
    for table in TABLES:
        row = await db.fetchone(f"SELECT COUNT(*) FROM {table}")
        result[table] = int(row[0]) if row else 0
    return result


async def _copy(src: Engine, dst: Engine) -> list[Copied]:
    for db in (src, dst):
        unknown = await db.table_names() - TABLES.keys()
        if unknown:
            raise StoreError(
                f"{db.where} has tables this hpcbatch cannot copy ({', '.join(sorted(unknown))}):"
                " use the hpcbatch that made it"
            )
    held = {t: n for t, n in (await counts(dst)).items() if n and t != "meta"}
    if held:
        what = ", ".join(f"{t}: {n}" for t, n in held.items())
        raise StoreError(f"the target {dst.where} is not empty ({what}): copy into a new store")
    data: dict[str, Rows] = {}
    for table, columns in TABLES.items():
        order = f" ORDER BY {src.INSERTION_ORDER}" if table == "transitions" else ""
        rows = await src.fetchall(f"SELECT {column_list(columns)} FROM {table}{order}")
        data[table] = (columns, [tuple(r) for r in rows])
    await dst.replace_all(data)
    before, after = await counts(src), await counts(dst)
    copied = [Copied(t, before[t], after[t]) for t in TABLES]
    wrong = [c for c in copied if c.source != c.target]
    if wrong:
        detail = ", ".join(f"{c.table}: {c.source} -> {c.target}" for c in wrong)
        raise StoreError(f"the copy's counts differ ({detail}): do not use {dst.where}")
    return copied
