"""`--store URL`: how an operator names the store, and how it is shown back."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.controller.settings import ControllerSettings
from hpcbatch.store.engine import StoreError
from hpcbatch.store.url import StoreUrl


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("sqlite:///var/lib/hb/hpcbatch.db", "/var/lib/hb/hpcbatch.db"),
        ("sqlite:////var/lib/hb/hpcbatch.db", "/var/lib/hb/hpcbatch.db"),
        ("sqlite:state/hpcbatch.db", "state/hpcbatch.db"),
        ("/srv/hpcbatch.db", "/srv/hpcbatch.db"),
    ],
)
def test_sqlite_urls_and_paths(text: str, path: str) -> None:
    url = StoreUrl.parse(text)
    assert (url.engine, url.path) == ("sqlite", Path(path))
    assert StoreUrl.parse(url.full()) == url


def test_postgresql_urls_keep_their_password_out_of_messages() -> None:
    url = StoreUrl.parse("postgresql://hb:s3cret@db.example:5433/hpcbatch?sslmode=require")
    assert url.engine == "postgresql" and url.path is None
    assert url.full() == "postgresql://hb:s3cret@db.example:5433/hpcbatch?sslmode=require"
    assert str(url) == "postgresql://hb:***@db.example:5433/hpcbatch?sslmode=require"
    socket = StoreUrl.parse("postgres://hb@/hpcbatch?host=/run/postgresql")
    assert str(socket) == socket.full() == "postgres://hb@/hpcbatch?host=/run/postgresql"


@pytest.mark.parametrize("text", ["mysql://db/x", "sqlite://", ""])
def test_unknown_or_empty_stores_are_refused(text: str) -> None:
    with pytest.raises(StoreError):
        StoreUrl.parse(text)


def test_the_settings_store_is_the_home_file_unless_named(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.toml"
    plain = ControllerSettings.build(inventory, home=tmp_path)
    assert plain.store_url == StoreUrl.sqlite(tmp_path / "hpcbatch.db")
    other = ControllerSettings.build(inventory, home=tmp_path, database=tmp_path / "x.db")
    assert other.store_url.path == tmp_path / "x.db"
    named = ControllerSettings.build(inventory, home=tmp_path, store="sqlite:///srv/y.db")
    assert named.database == Path("/srv/y.db") and named.store_url.path == Path("/srv/y.db")
    pg = ControllerSettings.build(inventory, home=tmp_path, store="postgresql://h/db")
    assert pg.store_url.dsn == "postgresql://h/db"
