"""The history and outbox tables on both engines (SQLite, and a real PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store, StoreUrl
from hpcbatch.store.outbox import OutboxItem
from hpcbatch.store.rows import NewJob


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    if request.param == "sqlite":
        return StoreUrl.sqlite(tmp_path / "s.db")
    return StoreUrl.parse(request.getfixturevalue("pg_url"))


async def test_history_and_outbox(url: StoreUrl) -> None:
    store = await Store.open(url)
    try:
        new = NewJob("train", "ann", 1000, "gpu", {"script": "x", "mail_type": "END"}, 100.0)
        (job_id,) = await store.jobs.insert_jobs([new], JobState.RUNNABLE, "queued")
        changes = await store.history.job_changes(0.0, user="ann", requests=True)
        assert [(c.job_id, c.old, c.new, c.user, c.queue) for c in changes][-1] == (
            job_id, "SUBMITTED", "RUNNABLE", "ann", "gpu",
        )  # fmt: skip
        assert '"mail_type"' in (changes[-1].request or "")
        assert await store.history.job_changes(0.0, user="bob") == []
        assert await store.history.job_changes(0.0, states=["FAILED"]) == []

        assert await store.outbox.mark() is None
        item = OutboxItem("k1", "webhook", "ops", "{}")
        await store.outbox.enqueue([item], 200.0, 150.25)
        await store.outbox.enqueue([item], 201.0, 151.5)  # the same key: nothing added
        assert await store.outbox.mark() == 151.5
        (row,) = await store.outbox.due(300.0)
        assert (row.key, row.created, row.attempts) == ("k1", 200.0, 0)
        await store.outbox.settle([], [("k1", 400.125, "refused")], 300.0)
        assert await store.outbox.due(300.0) == []
        assert await store.outbox.next_due() == 400.125
        await store.outbox.settle(["k1"], [], 401.0)
        assert await store.outbox.pending() == 0 and await store.outbox.due(1e10) == []
    finally:
        await store.close()
