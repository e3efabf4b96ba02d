"""The event bus: every event goes to live subscribers (the event stream) and to plugins."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from usher.model import Event

Filter = Callable[[Event], bool]


class EventBus:
    """Fans events out to stream subscribers and to a notifier (the plugin host).

    Subscribers get their own bounded queue; one that falls too far behind loses its oldest
    events rather than slowing the controller down.
    """

    def __init__(self, queue_size: int = 10000) -> None:
        self._subscribers: set[tuple[asyncio.Queue[Event], Filter]] = set()
        self._queue_size = queue_size
        self.notifier: Callable[[Event], Awaitable[None]] | None = None

    async def emit(self, name: str, **fields: Any) -> Event:
        event = Event(name=name, **fields)
        await self.publish(event)
        return event

    async def publish(self, event: Event) -> None:
        for queue, wanted in list(self._subscribers):
            if not wanted(event):
                continue
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        if self.notifier is not None:
            await self.notifier(event)

    @contextlib.asynccontextmanager
    async def subscribe(self, wanted: Filter) -> AsyncIterator[asyncio.Queue[Event]]:
        entry: tuple[asyncio.Queue[Event], Filter] = (asyncio.Queue(self._queue_size), wanted)
        self._subscribers.add(entry)
        try:
            yield entry[0]
        finally:
            self._subscribers.discard(entry)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
