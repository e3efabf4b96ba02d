"""SQLite for the async engine without a thread per connection.

aiosqlite runs each call on a worker thread: every statement is several hand-offs between
that thread and the event loop (a queue put, a wake-up through the loop's self-pipe, the GIL
passed back and forth), which cost about 0.35 ms of CPU per simple query against 0.08 ms for
the same query through SQLAlchemy's synchronous engine. Under API load those hand-offs were
most of the controller's CPU. :class:`InlineConnection` is aiosqlite's connection with its
calls run at once on the loop's own thread, so SQLAlchemy's aiosqlite dialect works as before.

A statement then holds the event loop while it runs. That is what Usher's statements allow:
they are indexed lookups, pages and batched writes on a local file in WAL mode; a
checkpoint's ``fsync`` is the longest pause. What a statement must never do on the loop's
thread is wait for a lock: the writer it waits for may be a coroutine of the same loop (a
plugin's transaction, the usage sampler), which could then never finish. So SQLite's own
busy wait is off, and a statement that finds the database locked is tried again after an
``asyncio.sleep`` (the other writer runs meanwhile), until the connection's timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite

BUSY_PAUSE = 0.001
"""Seconds before a statement that found the database locked is first tried again."""
BUSY_PAUSE_MAX = 0.05


class _Inline:
    """Stands in for aiosqlite's queue to its thread: what is put runs at once. (SQLAlchemy's
    dialect puts its isolation-level changes on that queue itself.)"""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose calls run on the caller's thread (module doc)."""

    def __init__(self, connector: Callable[[], sqlite3.Connection], busy_timeout: float) -> None:
        super().__init__(connector, iter_chunk_size=64)
        self._tx = _Inline()  # type: ignore[assignment]
        self._busy_timeout = busy_timeout

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self._busy_timeout, BUSY_PAUSE
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not busy(exc) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(2 * pause, BUSY_PAUSE_MAX)

    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    def __await__(self) -> Generator[Any, None, InlineConnection]:
        return self._connect().__await__()

    def stop(self) -> None:
        self._running = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def busy(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds a lock (``SQLITE_BUSY``,
    ``SQLITE_LOCKED`` and their extended codes)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def inline_creator(path: str, timeout: float) -> Callable[[], Any]:
    """``create_async_engine``'s ``async_creator`` for the SQLite file at ``path``: a
    statement that finds it locked is tried again for up to ``timeout`` seconds."""

    async def create() -> InlineConnection:
        return await InlineConnection(lambda: sqlite3.connect(path, timeout=0), timeout)

    return create
