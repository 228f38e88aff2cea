"""Where the store is, as an operator writes it: `--store URL`.

`sqlite:///var/lib/hpcbatch/hpcbatch.db` (or a plain path) is the embedded
default, one file beside the controller; `postgresql://user@host:5432/db`
(any libpq-style URL asyncpg reads, `?host=/run/postgresql` for a Unix
socket, a password from `~/.pgpass` or `PGPASSWORD` rather than the URL) is a
PostgreSQL database that outlives the controller's machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from hpcbatch.store.engine import StoreError

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class StoreUrl:
    engine: Literal["sqlite", "postgresql"]
    path: Path | None = None
    """The SQLite file (sqlite only)."""
    dsn: str = ""
    """The connection URL as given (postgresql only)."""

    @classmethod
    def sqlite(cls, path: Path) -> StoreUrl:
        return cls("sqlite", path=path)

    @classmethod
    def parse(cls, text: str) -> StoreUrl:
        """`sqlite:///abs/path`, `sqlite:relative/path`, a plain path, or a postgresql:// URL."""
        if text.startswith(POSTGRES_SCHEMES):
            return cls("postgresql", dsn=text)
        if text.startswith("sqlite:"):
            rest = text[len("sqlite:") :]
            if rest.startswith("//"):
                rest = rest[2:]
            if rest.startswith("//"):  # sqlite:////abs/path, as SQLAlchemy spells it
                rest = rest[1:]
            text = rest
        elif "://" in text:
            scheme = text.split("://", 1)[0]
            raise StoreError(f"unknown store {scheme}://: use sqlite:///PATH or postgresql://...")
        if not text:
            raise StoreError("the store URL names no file: use sqlite:///PATH")
        return cls("sqlite", path=Path(text).expanduser())

    def full(self) -> str:
        """The URL with everything in it (a password too, if it was given in the URL)."""
        if self.path is not None:
            return f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        return self.dsn

    def __str__(self) -> str:
        """The URL for messages and logs: without its password."""
        return redact(self.full())


def redact(dsn: str) -> str:
    """The URL with its password (if any) replaced, for messages and logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
