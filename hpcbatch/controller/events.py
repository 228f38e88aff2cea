"""Fan-out of controller events to subscribers (the `watch` API, the dashboard).

Each subscriber gets a bounded queue; a subscriber too slow to keep up is
dropped with a final `overflow` event rather than slowing the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

MAX_BACKLOG = 10_000


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(MAX_BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.discard(queue)

    @property
    def watched(self) -> bool:
        """Whether anyone listens: callers skip building events nobody will read."""
        return bool(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Dropped: what it had not read is useless to it now (it must resync),
                # and the two closing items need two free slots.
                self._subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"event": "overflow"})
                queue.put_nowait(None)

    def close(self) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        self._subscribers.clear()
