"""One lock per key (a VM id), created on demand and dropped when nobody holds or waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Busy(TimeoutError):
    """A lock that was not free in time."""


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold ``key``'s lock; :class:`Busy` if it is not free within ``timeout`` s."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except TimeoutError:
                raise Busy(key) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def held(self, key: str) -> bool:
        entry = self._locks.get(key)
        return entry is not None and entry[0].locked()
