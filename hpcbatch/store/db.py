"""The controller's durable state: one database and the tables on it.

`Store.open` opens the engine its URL names (store/url.py): SQLite in WAL
mode through aiosqlite (`SqliteDatabase`, the embedded default) or PostgreSQL
through asyncpg (`PgDatabase`), migrated to the same schema either way. It
gives each table the engine: `jobs` (jobs, attempts, transitions; its
hot-path writes spelled per engine), `admin` (operators' queue and host
states, hosts' facts), `definitions` (job definitions), `steps` (job steps:
each srun inside a job), `history` (transitions by time), `outbox`
(notifications to deliver), `leader` (the active controller's epoch and the
standbys), `secrets` (sealed values, never plain), `logs` (collected output)
and `retention` (purging finished jobs). The store package
is the only code that speaks SQL; the tables hold their statements, the
engine runs them.
"""

from __future__ import annotations

from pathlib import Path

from hpcbatch.store.admin import AdminTable
from hpcbatch.store.database import SqliteDatabase, SyncMode
from hpcbatch.store.definitions import DefinitionsTable
from hpcbatch.store.engine import Engine, StoreError, lost_the_lead
from hpcbatch.store.history import HistoryTable
from hpcbatch.store.jobs import JobsTable
from hpcbatch.store.jobs_sqlite import SqliteJobsTable
from hpcbatch.store.leader import Leader, LeaderTable, Standby
from hpcbatch.store.logs import LogsTable
from hpcbatch.store.outbox import OutboxTable
from hpcbatch.store.retention import RetentionTable
from hpcbatch.store.rows import AttemptUpdate, JobWrite, NewJob, StartOrder, Transition
from hpcbatch.store.secrets import SecretsTable
from hpcbatch.store.steps import StepRow, StepsTable
from hpcbatch.store.url import StoreUrl

__all__ = [
    "AttemptUpdate",
    "JobWrite",
    "Leader",
    "NewJob",
    "Standby",
    "StartOrder",
    "StepRow",
    "Store",
    "StoreError",
    "StoreUrl",
    "SyncMode",
    "Transition",
    "lost_the_lead",
]


class Store:
    """The tables of one database. Open with `Store.open`, close with `close`."""

    def __init__(self, db: Engine, jobs: JobsTable) -> None:
        self.db = db
        self.jobs = jobs
        self.admin = AdminTable(db)
        self.definitions = DefinitionsTable(db)
        self.history = HistoryTable(db)
        self.outbox = OutboxTable(db)
        self.steps = StepsTable(db)
        self.secrets = SecretsTable(db)
        self.logs = LogsTable(db)
        self.retention = RetentionTable(db)
        self.leader = LeaderTable(db)

    @classmethod
    async def open(
        cls,
        where: StoreUrl | Path,
        *,
        sync: SyncMode = "NORMAL",
        exclusive: bool = False,
        standby: bool = False,
    ) -> Store:
        """Open the store at `where` (a URL, or a path: SQLite), creating and migrating it.

        `exclusive`: hold the store's lock for as long as it is open (a controller
        does), or refuse with StoreError if another process holds it. `sync` is
        SQLite's synchronous mode (PostgreSQL's durability is the server's). `standby`
        (PostgreSQL only): wait for the lock instead of refusing (active/standby).
        """
        url = StoreUrl.sqlite(where) if isinstance(where, Path) else where
        if url.path is not None and standby:
            raise StoreError("--standby needs a PostgreSQL store (--store postgresql://...)")
        if url.path is not None:
            sqlite = await SqliteDatabase.open(url.path, sync=sync, exclusive=exclusive)
            return cls(sqlite, SqliteJobsTable(sqlite))
        # asyncpg is loaded only for a PostgreSQL store: the embedded default never pays
        # for its import.
        from hpcbatch.store.jobs_pg import PgJobsTable
        from hpcbatch.store.postgres import PgDatabase

        pg = await PgDatabase.open(url.dsn, exclusive=exclusive, standby=standby)
        return cls(pg, PgJobsTable(pg))

    async def close(self) -> None:
        await self.db.close()

    async def take_lead(self, host: str, pid: int, now: float) -> Leader:
        """Become the leader (a controller holding the store exclusively): a new epoch,
        which this store's engine then insists on if it must reconnect."""
        leader = await self.leader.take(host, pid, now)
        self.db.epoch = leader.epoch
        return leader

    @property
    def cluster_id(self) -> str:
        """A random id made with the store: it namespaces this cluster's files on hosts."""
        return self.db.cluster_id
