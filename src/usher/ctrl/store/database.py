"""The connection to the database: an async SQLAlchemy engine, sessions to read, and one way
to write (a transaction; on SQLite one writer at a time)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import Table, event, make_url
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from usher import wire
from usher.ctrl.store.sqlite_inline import inline_creator


def async_url(url: str) -> str:
    """Map a plain database URL to the async driver Usher uses for it."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


class Database:
    """SQLite (aiosqlite) or PostgreSQL (psycopg), by the URL; JSON columns through
    :mod:`usher.wire`, and statement parameters never shown in errors or logs."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {
            "json_serializer": wire.dumps,
            "json_deserializer": wire.loads,
            "hide_parameters": True,  # errors and logs never show values (hashes, digests)
        }
        if self.is_sqlite:
            kwargs["async_creator"] = inline_creator(str(make_url(self.url).database), 30)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; queueing writers here beats retrying on "locked".
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed when the block ends without an error."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.sessions() as session, session.begin():
            yield session

    def insert(self, table: Any) -> Any:
        """An ``INSERT`` into ``table`` (a table or row class) that can take an ``ON CONFLICT``
        clause in this database's dialect."""
        return (sqlite_insert if self.is_sqlite else pg_insert)(table)

    def upsert(self, table: Table, keys: Iterable[str]) -> Any:
        """One statement that writes whole rows of ``table``, replacing the row with the same
        ``keys`` (compiled once; given a list of rows, it runs as an executemany)."""
        stmt = self.insert(table)
        return stmt.on_conflict_do_update(
            index_elements=list(keys),
            set_={c.name: stmt.excluded[c.name] for c in table.columns},
        )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
