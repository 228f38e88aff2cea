"""A real PostgreSQL server for tests and benchmarks: Debian's `postgresql`
binaries, an ordinary cluster made by `initdb` in a temporary directory and
run by `pg_ctl`, reached on a Unix socket in that directory only (no TCP
port, so nothing on the machine can collide with it or reach it).

initdb refuses to run as root: as root, the cluster's directory is given to
the unprivileged `postgres` account (or `nobody`) and the server runs as that
user; the tests connect as the cluster's superuser `hpcbatch` with trust
authentication on the private socket.

    with TemporaryPostgres() as pg:
        url = pg.url(pg.create_database())    # postgresql://hpcbatch@/t1?host=...
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

USER = "hpcbatch"
PORT = 5432  # names the socket file only: the server listens on no TCP port


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's server binaries ($HPCBATCH_PG_BIN overrides)."""
    if os.environ.get("HPCBATCH_PG_BIN"):
        return Path(os.environ["HPCBATCH_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else None


def missing() -> str | None:
    """Why no server can be started here, or None."""
    where = bin_dir()
    if where is None or not (where / "pg_ctl").exists():
        return "PostgreSQL's server binaries (Debian package postgresql; make prereqs installs it)"
    if shutil.which("psql") is None and not (where / "psql").exists():
        return "psql (Debian package postgresql-client)"
    return None


def _server_account() -> pwd.struct_passwd | None:
    """Who runs the server: None (this user) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is no postgres or nobody account to run initdb")


class TemporaryPostgres:
    """One PostgreSQL cluster in a temporary directory; `durable=False` turns fsync off
    (tests), `durable=True` keeps the server's defaults (benchmarks)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="hb-pg-"))  # short: a socket lives here
        self.data = self.root / "data"
        self.bin = bin_dir() or Path("/nonexistent")
        self._account = _server_account()
        self._databases = 0

    def _run(self, *argv: str, as_server: bool = True) -> str:
        kw: dict[str, Any] = {}
        if as_server and self._account is not None:
            kw = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}
        out = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.root, check=False, timeout=60, **kw
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def start(self) -> TemporaryPostgres:
        if self._account is not None:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.root}'",
            f"-c port={PORT}",
            "-c max_connections=200",
        ]
        if not self.durable:
            settings += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
            "-o", " ".join(settings), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@/{database}?host={self.root}&port={PORT}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        psql = self.bin / "psql"
        argv = [str(psql) if psql.exists() else "psql", "-h", str(self.root), "-p", str(PORT)]
        return self._run(
            *argv, "-U", USER, "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement,
            as_server=False,
        )  # fmt: skip

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (named `name`, or t1, t2, ...); its name."""
        if name is None:
            self._databases += 1
            name = f"t{self._databases}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
