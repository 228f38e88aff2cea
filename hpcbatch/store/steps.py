"""Job steps in the store: each `srun` inside a job is a step `JOB.STEP`.

A step row is written when the step starts (its command, task and node
counts, node list) and completed when it ends (end time, exit code). Other
readers (`hpcbatch show`, per-step accounting) join on (job_id, attempt,
step). Plain portable SQL only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hpcbatch.store.engine import Engine


@dataclass(frozen=True, slots=True)
class StepRow:
    job_id: int
    attempt: int
    step: int
    command: str
    ntasks: int
    nodes: int
    node_list: str
    started: float
    ended: float | None = None
    exit_code: int | None = None
    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    mem_peak_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "id": f"{self.job_id}.{self.step}"}


@dataclass(frozen=True, slots=True)
class StepUsage:
    """What a step's tasks on srun's node used, as srun reports it at the step's end."""

    cpu_user_s: float | None = None
    cpu_sys_s: float | None = None
    mem_peak_bytes: int | None = None


STEP_FIELDS = (
    "job_id", "attempt", "step", "command", "ntasks", "nodes", "node_list", "started", "ended",
    "exit_code", "cpu_user_s", "cpu_sys_s", "mem_peak_bytes",
)  # fmt: skip
_COLUMNS = ", ".join(STEP_FIELDS)


def _row(row: Sequence[Any]) -> StepRow:
    return StepRow(*row)


class StepsTable:
    """The `job_steps` table."""

    def __init__(self, db: Engine) -> None:
        self._db = db

    async def started(self, row: StepRow) -> None:
        """Record a step's start (a repeated report of the same step changes nothing)."""
        async with self._db.transaction() as db:
            cur = await db.execute(
                "SELECT 1 FROM job_steps WHERE job_id = ? AND attempt = ? AND step = ?",
                (row.job_id, row.attempt, row.step),
            )
            if await cur.fetchone() is None:
                await db.execute(
                    f"INSERT INTO job_steps ({_COLUMNS})"
                    f" VALUES ({', '.join('?' * len(STEP_FIELDS))})",
                    tuple(getattr(row, f) for f in STEP_FIELDS),
                )

    async def ended(
        self, job_id: int, attempt: int, step: int, ended: float, exit_code: int,
        usage: StepUsage | None = None,
    ) -> None:  # fmt: skip
        used = usage or StepUsage()
        async with self._db.transaction() as db:
            await db.execute(
                "UPDATE job_steps SET ended = ?, exit_code = ?, cpu_user_s = ?, cpu_sys_s = ?,"
                " mem_peak_bytes = ? WHERE job_id = ? AND attempt = ? AND step = ?",
                (ended, exit_code, used.cpu_user_s, used.cpu_sys_s, used.mem_peak_bytes,
                 job_id, attempt, step),
            )  # fmt: skip

    async def close_open(self, job_id: int, ended: float) -> None:
        """The job ended: steps that never reported their end (killed) end now, exit unknown."""
        async with self._db.transaction() as db:
            await db.execute(
                "UPDATE job_steps SET ended = ? WHERE job_id = ? AND ended IS NULL",
                (ended, job_id),
            )

    async def of_jobs(self, job_ids: Sequence[int]) -> list[StepRow]:
        """The steps of these jobs (acct), in job and step order: one query per 500."""
        out: list[StepRow] = []
        ids = sorted(set(job_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows = await self._db.fetchall(
                f"SELECT {_COLUMNS} FROM job_steps WHERE job_id IN ({', '.join('?' * len(chunk))})"
                " ORDER BY job_id, attempt, step",
                tuple(chunk),
            )
            out += [_row(r) for r in rows]
        return out

    async def of_job(self, job_id: int) -> list[StepRow]:
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM job_steps WHERE job_id = ? ORDER BY attempt, step",
            (job_id,),
        )
        return [_row(r) for r in rows]
