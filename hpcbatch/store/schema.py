"""Versioned schema migrations for the controller's SQLite store.

Each migration is a list of statements applied in one transaction; the
applied version lives in `PRAGMA user_version`. Never edit a released
migration: append a new one.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: jobs, their transitions, attempts (one row per node of an attempt), hosts.
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
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
        "CREATE INDEX jobs_state ON jobs(state)",
        """
        CREATE TABLE transitions (
            job_id  INTEGER NOT NULL,
            ts      REAL    NOT NULL,
            old     TEXT,
            new     TEXT    NOT NULL,
            reason  TEXT
        )
        """,
        "CREATE INDEX transitions_job ON transitions(job_id)",
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
        "CREATE INDEX attempts_host_state ON attempts(host, state)",
        """
        CREATE TABLE hosts (
            name          TEXT PRIMARY KEY,
            admin_state   TEXT NOT NULL DEFAULT 'ACTIVE',
            admin_reason  TEXT,
            facts         TEXT,
            updated       REAL
        )
        """,
    ],
    # 2: array jobs (children point at their parent and inherit its request),
    # versioned job definitions, and operators' queue state overrides.
    [
        "ALTER TABLE jobs ADD COLUMN array_parent INTEGER",
        "ALTER TABLE jobs ADD COLUMN array_index INTEGER",
        "ALTER TABLE jobs ADD COLUMN array_size INTEGER",
        "CREATE INDEX jobs_array_parent ON jobs(array_parent, array_index)",
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
        CREATE TABLE queue_admin (
            name    TEXT PRIMARY KEY,
            state   TEXT NOT NULL,
            reason  TEXT,
            updated REAL NOT NULL
        )
        """,
    ],
]
