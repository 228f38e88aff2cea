"""The `postgres` fixture: one real PostgreSQL server per test session;
`pg_url`: a fresh empty database on it for one test; `store_engine`: which
store a test's controllers use (tests/integration/conftest.py's factory).

The server is Debian's (tests/postgres_server.py): started on first use, torn
down at the end of the session. Tests that use it fail when PostgreSQL is not
installed (CI must never pass by skipping them; make prereqs installs it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import TemporaryPostgres, missing


@pytest.fixture(scope="session")
def postgres() -> Iterator[TemporaryPostgres]:
    why = missing()
    if why:
        pytest.fail(f"the PostgreSQL store tests need {why}")
    with TemporaryPostgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: TemporaryPostgres) -> Iterator[str]:
    """The URL of a new empty database, dropped after the test."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def store_engine() -> str:
    """The store the test's controllers use: "sqlite", unless a module overrides this
    with a parametrized fixture to run its tests on both engines (test_controller.py)."""
    return "sqlite"
