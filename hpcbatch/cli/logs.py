"""Reading a job's output through the controller: all at once, or following it."""

from __future__ import annotations

import time
from typing import IO, Any

from hpcbatch.client import Client, ClientError

FOLLOW_INTERVAL_S = 0.2


def _read(client: Client, job: int, stream: str, offset: int, **where: Any) -> dict[str, Any]:
    args = {k: v for k, v in where.items() if v is not None}
    result: dict[str, Any] = client.call("logs", job_id=job, stream=stream, offset=offset, **args)
    return result


def read_all(client: Client, job: int, stream: str, out: IO[str], **where: Any) -> None:
    offset = 0
    while True:
        chunk = _read(client, job, stream, offset, **where)
        out.write(chunk["data"])
        if not chunk["data"] or chunk["offset"] == offset:
            break
        offset = chunk["offset"]
    out.flush()


def follow(client: Client, job: int, stream: str, out: IO[str], **where: Any) -> None:
    """Print output as it grows until the job is final and everything is read.

    The agent has no file-change notification to offer, so a follower re-reads
    at a short interval; between reads it waits on the controller's own
    completion event (`wait` with a short timeout) rather than sleeping, so the
    end of a job is seen at once and the last output is read straight away.
    """
    offset = 0
    while True:
        try:
            chunk = _read(client, job, stream, offset, **where)
        except ClientError as exc:
            if exc.kind in ("unavailable",):
                _pause(client, job, 1.0)
                continue
            raise
        if chunk["data"]:
            out.write(chunk["data"])
            out.flush()
            offset = chunk["offset"]
            continue
        if chunk.get("state") in ("SUCCEEDED", "FAILED"):
            return
        _pause(client, job, FOLLOW_INTERVAL_S)


def _pause(client: Client, job: int, seconds: float) -> None:
    """Up to `seconds`, returning early when the job becomes final."""
    try:
        client.call("wait", job_ids=[job], timeout_s=seconds)
    except ClientError as exc:
        if exc.kind not in ("timeout", "unavailable"):
            raise
        if exc.kind == "unavailable":
            time.sleep(seconds)
