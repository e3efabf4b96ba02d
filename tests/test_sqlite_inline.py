"""SQLite run on the event loop's thread (``usher.ctrl.store.sqlite_inline``): a writer that
finds another coroutine's transaction holding the database waits for it without holding the
loop, and a writer held for longer than the timeout gets SQLite's "locked" error."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from usher.ctrl.store.sqlite_inline import inline_creator


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    path = str(tmp_path / "t.db")
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (n INTEGER)")
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}", async_creator=inline_creator(path, 2.0)
    )
    yield engine
    await engine.dispose()


async def test_writers_of_one_loop_wait_for_each_other(engine: AsyncEngine) -> None:
    """Ten transactions at once, each holding the write lock across an await: all commit,
    one after the other, and the loop keeps turning meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def writer(n: int) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            await asyncio.sleep(0.02)  # holds the lock while other coroutines run
            await conn.execute(text("INSERT INTO t VALUES (:n)"), {"n": -n})

    tick = asyncio.ensure_future(ticker())
    began = time.monotonic()
    await asyncio.gather(*(writer(n) for n in range(1, 11)))
    took = time.monotonic() - began
    tick.cancel()
    async with engine.connect() as conn:
        rows = sorted(r[0] for r in await conn.execute(text("SELECT n FROM t")))
    assert rows == sorted([*range(1, 11), *range(-10, 0)])
    assert took < 1.5, f"ten 20 ms transactions took {took:.2f} s"
    assert ticks >= took / 0.005 / 3, "the loop was held while a writer waited"


async def test_a_writer_held_past_the_timeout_is_told(engine: AsyncEngine) -> None:
    async def holder(release: asyncio.Event) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            await release.wait()

    release = asyncio.Event()
    held = asyncio.ensure_future(holder(release))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    with pytest.raises(OperationalError, match="locked"):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (2)"))
    assert 1.9 < time.monotonic() - began < 3.5
    release.set()
    await held
    async with engine.connect() as conn:
        assert [r[0] for r in await conn.execute(text("SELECT n FROM t"))] == [1]


async def test_readers_are_not_held_by_a_writer(engine: AsyncEngine) -> None:
    async with engine.begin() as writing:
        await writing.execute(text("INSERT INTO t VALUES (7)"))
        async with engine.connect() as reading:  # WAL: the last committed state, at once
            assert (await reading.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    async with engine.connect() as reading:
        assert (await reading.execute(text("SELECT count(*) FROM t"))).scalar() == 1
