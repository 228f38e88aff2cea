"""Versioned schema migrations for the controller's store, on either engine.

Each migration is a list of statements applied in one transaction; the
applied version lives in `PRAGMA user_version` (SQLite) or the
`hpcbatch_schema` table (PostgreSQL). A statement both engines accept is a
string; where they cannot share one (PostgreSQL has no rowid: its ids are
BIGSERIAL, its REAL is 4 bytes, `user` is a reserved word there) it is a
`PerEngine` pair, each side the same table. Never edit a released migration:
append a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Engine = Literal["sqlite", "postgresql"]


@dataclass(frozen=True, slots=True)
class PerEngine:
    """One statement spelled for each engine."""

    sqlite: str
    postgresql: str


def statements(migration: list[str | PerEngine], engine: Engine) -> list[str]:
    """A migration's statements as `engine` runs them."""
    return [s if isinstance(s, str) else getattr(s, engine) for s in migration]


def add_columns(table: str, *columns: tuple[str, str, str]) -> list[str | PerEngine]:
    """`ALTER TABLE table ADD COLUMN` for each (name, SQLite type, PostgreSQL type)."""
    return [
        PerEngine(
            f"ALTER TABLE {table} ADD COLUMN {name} {lite}",
            f"ALTER TABLE {table} ADD COLUMN {name} {pg}",
        )
        for name, lite, pg in columns
    ]


MIGRATIONS: list[list[str | PerEngine]] = [
    # 1: jobs, their transitions, attempts (one row per node of an attempt), hosts.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        PerEngine(
            """
            CREATE TABLE jobs (
                id          INTEGER PRIMARY KEY,
                name        TEXT    NOT NULL,
                user        TEXT    NOT NULL,
                uid         INTEGER NOT NULL,
                queue       TEXT    NOT NULL,
                state       TEXT    NOT NULL,
                reason      TEXT,
                request     TEXT    NOT NULL,
                submitted   REAL    NOT NULL,
                started     REAL,
                ended       REAL,
                exit_code   INTEGER,
                attempt     INTEGER NOT NULL DEFAULT 0
            )
            """,
            """
            CREATE TABLE jobs (
                id          BIGSERIAL PRIMARY KEY,
                name        TEXT    NOT NULL,
                "user"      TEXT    NOT NULL,
                uid         BIGINT  NOT NULL,
                queue       TEXT    NOT NULL,
                state       TEXT    NOT NULL,
                reason      TEXT,
                request     TEXT    NOT NULL,
                submitted   DOUBLE PRECISION NOT NULL,
                started     DOUBLE PRECISION,
                ended       DOUBLE PRECISION,
                exit_code   BIGINT,
                attempt     BIGINT  NOT NULL DEFAULT 0
            )
            """,
        ),
        "CREATE INDEX jobs_state ON jobs(state)",
        PerEngine(
            """
            CREATE TABLE transitions (
                job_id  INTEGER NOT NULL,
                ts      REAL    NOT NULL,
                old     TEXT,
                new     TEXT    NOT NULL,
                reason  TEXT
            )
            """,
            # seq: the insertion order that SQLite's rowid gives (a job's history).
            """
            CREATE TABLE transitions (
                seq     BIGSERIAL PRIMARY KEY,
                job_id  BIGINT  NOT NULL,
                ts      DOUBLE PRECISION NOT NULL,
                old     TEXT,
                new     TEXT    NOT NULL,
                reason  TEXT
            )
            """,
        ),
        "CREATE INDEX transitions_job ON transitions(job_id)",
        PerEngine(
            """
            CREATE TABLE attempts (
                job_id      INTEGER NOT NULL,
                attempt     INTEGER NOT NULL,
                node        INTEGER NOT NULL,
                host        TEXT    NOT NULL,
                cpus        INTEGER NOT NULL,
                memory_mb   INTEGER NOT NULL,
                gpus        TEXT    NOT NULL,
                state       TEXT    NOT NULL,
                created     REAL    NOT NULL,
                started     REAL,
                ended       REAL,
                exit_code   INTEGER,
                signal      INTEGER,
                reason      TEXT,
                stdout      TEXT,
                stderr      TEXT,
                PRIMARY KEY (job_id, attempt, node)
            )
            """,
            """
            CREATE TABLE attempts (
                job_id      BIGINT  NOT NULL,
                attempt     BIGINT  NOT NULL,
                node        BIGINT  NOT NULL,
                host        TEXT    NOT NULL,
                cpus        BIGINT  NOT NULL,
                memory_mb   BIGINT  NOT NULL,
                gpus        TEXT    NOT NULL,
                state       TEXT    NOT NULL,
                created     DOUBLE PRECISION NOT NULL,
                started     DOUBLE PRECISION,
                ended       DOUBLE PRECISION,
                exit_code   BIGINT,
                signal      BIGINT,
                reason      TEXT,
                stdout      TEXT,
                stderr      TEXT,
                PRIMARY KEY (job_id, attempt, node)
            )
            """,
        ),
        "CREATE INDEX attempts_host_state ON attempts(host, state)",
        PerEngine(
            """
            CREATE TABLE hosts (
                name          TEXT PRIMARY KEY,
                admin_state   TEXT NOT NULL DEFAULT 'ACTIVE',
                admin_reason  TEXT,
                facts         TEXT,
                updated       REAL
            )
            """,
            """
            CREATE TABLE hosts (
                name          TEXT PRIMARY KEY,
                admin_state   TEXT NOT NULL DEFAULT 'ACTIVE',
                admin_reason  TEXT,
                facts         TEXT,
                updated       DOUBLE PRECISION
            )
            """,
        ),
    ],
    # 2: array jobs (children point at their parent and inherit its request),
    # versioned job definitions, and operators' queue state overrides.
    [
        PerEngine(
            "ALTER TABLE jobs ADD COLUMN array_parent INTEGER",
            "ALTER TABLE jobs ADD COLUMN array_parent BIGINT",
        ),
        "ALTER TABLE jobs ADD COLUMN array_index INTEGER",
        "ALTER TABLE jobs ADD COLUMN array_size INTEGER",
        "CREATE INDEX jobs_array_parent ON jobs(array_parent, array_index)",
        PerEngine(
            """
            CREATE TABLE definitions (
                name        TEXT    NOT NULL,
                revision    INTEGER NOT NULL,
                status      TEXT    NOT NULL DEFAULT 'ACTIVE',
                body        TEXT    NOT NULL,
                user        TEXT    NOT NULL,
                created     REAL    NOT NULL,
                PRIMARY KEY (name, revision)
            )
            """,
            """
            CREATE TABLE definitions (
                name        TEXT    NOT NULL,
                revision    INTEGER NOT NULL,
                status      TEXT    NOT NULL DEFAULT 'ACTIVE',
                body        TEXT    NOT NULL,
                "user"      TEXT    NOT NULL,
                created     DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (name, revision)
            )
            """,
        ),
        PerEngine(
            """
            CREATE TABLE queue_admin (
                name    TEXT PRIMARY KEY,
                state   TEXT NOT NULL,
                reason  TEXT,
                updated REAL NOT NULL
            )
            """,
            """
            CREATE TABLE queue_admin (
                name    TEXT PRIMARY KEY,
                state   TEXT NOT NULL,
                reason  TEXT,
                updated DOUBLE PRECISION NOT NULL
            )
            """,
        ),
    ],
    # 3: job control (issue 20): a job's hold, `user` or `admin` (NULL: not held).
    # Begin, deadline, priority, nice and updates live in the request.
    [
        "ALTER TABLE jobs ADD COLUMN hold TEXT",
    ],
    # 4: a definition's name has an owner (who registered its first revision): only
    # they or an administrator register the next. Plain SQL that PostgreSQL runs too
    # (`"user"` quoted: a reserved word there).
    [
        "ALTER TABLE definitions ADD COLUMN owner TEXT",
        """
        UPDATE definitions SET owner = (
            SELECT d0."user" FROM definitions AS d0
            WHERE d0.name = definitions.name
            ORDER BY d0.revision LIMIT 1
        )
        """,
    ],
    # 5: what each attempt used on each node (recorded at its end: issue 15), and
    # an index for `acct`'s user + time window.
    [
        *add_columns(
            "attempts",
            ("elapsed_s", "REAL", "DOUBLE PRECISION"),
            ("cpu_user_s", "REAL", "DOUBLE PRECISION"),
            ("cpu_sys_s", "REAL", "DOUBLE PRECISION"),
            ("mem_peak_bytes", "INTEGER", "BIGINT"),
            ("gpu_util", "REAL", "DOUBLE PRECISION"),
            ("gpu_mem_peak_bytes", "INTEGER", "BIGINT"),
        ),
        "ALTER TABLE attempts ADD COLUMN usage_source TEXT",
        'CREATE INDEX jobs_user_ended ON jobs("user", ended)',
        "CREATE INDEX jobs_ended ON jobs(ended)",
    ],
    # 6: job steps (each `srun` inside a job: JOB.STEP), written by the agents' step
    # reports (controller/steps.py). One statement both engines accept (BIGINT and
    # DOUBLE PRECISION are SQLite's INTEGER and REAL).
    [
        """
        CREATE TABLE job_steps (
            job_id      BIGINT  NOT NULL,
            attempt     INTEGER NOT NULL,
            step        INTEGER NOT NULL,
            command     TEXT    NOT NULL,
            ntasks      INTEGER NOT NULL,
            nodes       INTEGER NOT NULL,
            node_list   TEXT    NOT NULL,
            started     DOUBLE PRECISION NOT NULL,
            ended       DOUBLE PRECISION,
            exit_code   INTEGER,
            PRIMARY KEY (job_id, attempt, step)
        )
        """,
    ],
    # 7: the history read by time (`hpcbatch events --since`, the notifier).
    ["CREATE INDEX transitions_ts ON transitions(ts)"],
    # 8: the notifications' outbox: each mail or webhook POST to make, kept until it is
    # delivered, so none is lost across a crash.
    [
        PerEngine(
            """
            CREATE TABLE outbox (
                key         TEXT    PRIMARY KEY,
                channel     TEXT    NOT NULL,
                target      TEXT    NOT NULL,
                body        TEXT    NOT NULL,
                created     REAL    NOT NULL,
                attempts    INTEGER NOT NULL DEFAULT 0,
                next_try    REAL    NOT NULL,
                delivered   REAL,
                error       TEXT
            )
            """,
            """
            CREATE TABLE outbox (
                key         TEXT    PRIMARY KEY,
                channel     TEXT    NOT NULL,
                target      TEXT    NOT NULL,
                body        TEXT    NOT NULL,
                created     DOUBLE PRECISION NOT NULL,
                attempts    INTEGER NOT NULL DEFAULT 0,
                next_try    DOUBLE PRECISION NOT NULL,
                delivered   DOUBLE PRECISION,
                error       TEXT
            )
            """,
        ),
        "CREATE INDEX outbox_due ON outbox(delivered, next_try)",
    ],
    # 9: live administration (docs/operations.md): queues, compute environments and
    # hosts created, changed or deleted through the API, over the inventory file's
    # (`entry` is the entry as the inventory's TOML would hold it, as JSON; NULL: the
    # file's entry of that name is deleted); and each elastic host's last power state,
    # so a restarted controller keeps powered-down hosts down.
    [
        PerEngine(
            """
            CREATE TABLE inventory_changes (
                kind        TEXT NOT NULL,
                name        TEXT NOT NULL,
                entry       TEXT,
                updated     REAL NOT NULL,
                PRIMARY KEY (kind, name)
            )
            """,
            """
            CREATE TABLE inventory_changes (
                kind        TEXT NOT NULL,
                name        TEXT NOT NULL,
                entry       TEXT,
                updated     DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (kind, name)
            )
            """,
        ),
        "ALTER TABLE hosts ADD COLUMN power_state TEXT",
    ],
    # 10: secrets (docs/security.md): a value sealed with the controller's key (never the
    # plain text), or a reference to a file or command on the controller; who may use it.
    [
        PerEngine(
            """
            CREATE TABLE secrets (
                name        TEXT    PRIMARY KEY,
                owner       TEXT    NOT NULL,
                access      TEXT    NOT NULL,
                source      TEXT    NOT NULL,
                sealed      TEXT    NOT NULL,
                created     REAL    NOT NULL,
                updated     REAL    NOT NULL
            )
            """,
            """
            CREATE TABLE secrets (
                name        TEXT    PRIMARY KEY,
                owner       TEXT    NOT NULL,
                access      TEXT    NOT NULL,
                source      TEXT    NOT NULL,
                sealed      TEXT    NOT NULL,
                created     DOUBLE PRECISION NOT NULL,
                updated     DOUBLE PRECISION NOT NULL
            )
            """,
        ),
    ],
    # 11: collected logs (docs/operations.md): each attempt's output, compressed (zlib),
    # copied from its host when the job ended, so `logs` works without the host.
    [
        PerEngine(
            """
            CREATE TABLE job_logs (
                job_id      INTEGER NOT NULL,
                attempt     INTEGER NOT NULL,
                node        INTEGER NOT NULL,
                stream      TEXT    NOT NULL,
                data        BLOB    NOT NULL,
                size        INTEGER NOT NULL,
                truncated   INTEGER NOT NULL,
                collected   REAL    NOT NULL,
                PRIMARY KEY (job_id, attempt, node, stream)
            )
            """,
            """
            CREATE TABLE job_logs (
                job_id      BIGINT  NOT NULL,
                attempt     INTEGER NOT NULL,
                node        INTEGER NOT NULL,
                stream      TEXT    NOT NULL,
                data        BYTEA   NOT NULL,
                size        BIGINT  NOT NULL,
                truncated   INTEGER NOT NULL,
                collected   DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (job_id, attempt, node, stream)
            )
            """,
        ),
    ],
    # 12: the core numbers each node of an attempt was pinned to (a JSON list; NULL: not
    # pinned), so a restarted controller knows which cores are taken (issue 15).
    ["ALTER TABLE attempts ADD COLUMN cores TEXT"],
    # 13: what each job step used (srun's report at its end: `acct`'s JOB.STEP rows).
    add_columns(
        "job_steps",
        ("cpu_user_s", "REAL", "DOUBLE PRECISION"),
        ("cpu_sys_s", "REAL", "DOUBLE PRECISION"),
        ("mem_peak_bytes", "INTEGER", "BIGINT"),
    ),
]
