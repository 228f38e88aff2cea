"""The event bus drops a subscriber that falls too far behind, with an `overflow` event,
without failing the publisher (a 10,000-child array submit publishes 10,001 events)."""

from __future__ import annotations

from hpcbatch.controller.events import MAX_BACKLOG, EventBus


async def test_a_slow_subscriber_is_dropped_with_overflow_and_publish_goes_on() -> None:
    bus = EventBus()
    slow = bus.subscribe()
    for i in range(MAX_BACKLOG + 5):
        bus.publish({"event": "job", "n": i})  # must not raise
    assert await slow.get() == {"event": "overflow"}
    assert await slow.get() is None
    assert slow.empty()
    fresh = bus.subscribe()
    bus.publish({"event": "job", "n": -1})
    assert fresh.get_nowait() == {"event": "job", "n": -1}
    assert slow.empty()  # no longer subscribed
