"""The secrets, collected logs and retention tables on both engines (SQLite, and a real
PostgreSQL): a sealed value round trip, compressed logs, and a purge that leaves a job
not yet old enough, or not final, where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcbatch.core.states import JobState
from hpcbatch.store.db import Store, StoreUrl
from hpcbatch.store.logs import CollectedLog
from hpcbatch.store.outbox import OutboxItem
from hpcbatch.store.retention import Batch
from hpcbatch.store.rows import NewJob
from hpcbatch.store.secrets import SecretRow


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUrl:
    if request.param == "sqlite":
        return StoreUrl.sqlite(tmp_path / "s.db")
    return StoreUrl.parse(request.getfixturevalue("pg_url"))


async def test_secrets_logs_and_a_purge(url: StoreUrl) -> None:
    store = await Store.open(url)
    try:
        row = SecretRow("db-pass", "ann", ("bob", "@ops"), "value", "c2VhbGVk", 1.0, 1.0)
        await store.secrets.put(row)
        await store.secrets.put(SecretRow("db-pass", "ann", (), "value", "bmV3", 1.0, 2.0))
        got = await store.secrets.get("db-pass")
        assert got is not None and (got.sealed, got.access, got.created) == ("bmV3", (), 1.0)
        assert [r.name for r in await store.secrets.all()] == ["db-pass"]
        assert await store.secrets.delete("db-pass") and not await store.secrets.delete("db-pass")

        new = NewJob("j", "ann", 1000, "batch", {"script": "x"}, 100.0)
        old, young, live = await store.jobs.insert_jobs([new] * 3, JobState.RUNNABLE, "queued")
        for job_id, ended in ((old, 1000.0), (young, 5000.0)):
            await store.jobs.set_summary_state(
                job_id, JobState.SUCCEEDED, "done", ended, ended=ended
            )
        text = b"line\n" * 1000
        await store.logs.put([CollectedLog(old, 1, 0, "stdout", text, False)], 1000.0)
        kept = await store.logs.get(old, 1, 0, "stdout")
        assert kept is not None and kept.text == text and not kept.truncated
        assert 0 < await store.logs.stored_bytes() < len(text) // 10
        await store.outbox.enqueue([OutboxItem("k", "webhook", "ops", "{}")], 900.0, None)
        await store.outbox.settle(["k"], [], 950.0)

        assert await store.retention.count_final(2000.0) == 1
        assert await store.retention.purge_batch(2000.0, 100) == Batch(1, more=False)
        assert await store.retention.purge_batch(2000.0, 100) == Batch(0, more=False)
        assert await store.retention.purge_outbox(2000.0) == 1
        assert await store.jobs.get_job(old) is None
        assert await store.jobs.transitions(old) == []
        assert not await store.logs.collected(old)
        assert await store.jobs.get_job(young) is not None  # ended after the cutoff
        assert await store.jobs.get_job(live) is not None  # not final
    finally:
        await store.close()
