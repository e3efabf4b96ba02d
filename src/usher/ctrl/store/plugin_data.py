"""The ``plugin_data`` table: free storage for plugins, one JSON value per (plugin, key)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from usher.ctrl.store.database import Database
from usher.ctrl.tables import PluginDataRow

T = TypeVar("T")
log = logging.getLogger("usher.store")


def _set(db: Database, plugin: str, key: str, value: Any) -> Any:
    """The statement that writes one value, replacing the one there was."""
    stmt = db.insert(PluginDataRow).values(plugin=plugin, key=key, value=value)
    return stmt.on_conflict_do_update(index_elements=["plugin", "key"], set_={"value": value})


class PluginData:
    """A plugin's values within one transaction (:meth:`PluginValues.plugin_atomically`)."""

    def __init__(self, session: AsyncSession, plugin: str, db: Database) -> None:
        self._session = session
        self._plugin = plugin
        self._db = db
        self._absent: set[str] = set()  # read as missing: created with a plain INSERT

    async def get(self, key: str, default: Any = None) -> Any:
        stmt = select(PluginDataRow.value).where(
            PluginDataRow.plugin == self._plugin, PluginDataRow.key == key
        )
        if not self._db.is_sqlite:
            stmt = stmt.with_for_update()
        found = (await self._session.execute(stmt)).first()
        if found is None:
            self._absent.add(key)
            return default
        return found[0]

    async def put(self, key: str, value: Any) -> None:
        if key in self._absent:  # two that both saw it missing: the second fails, retries
            stmt = PluginDataRow.__table__.insert().values(
                plugin=self._plugin, key=key, value=value
            )
            self._absent.discard(key)
        else:
            stmt = _set(self._db, self._plugin, key, value)
        await self._session.execute(stmt)


class PluginValues:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def plugin_get(self, plugin: str, key: str, default: Any = None) -> Any:
        async with self._db.sessions() as s:
            row = await s.get(PluginDataRow, (plugin, key))
        return row.value if row else default

    async def plugin_set(self, plugin: str, key: str, value: Any) -> None:
        async with self._db.write() as s:
            await s.execute(_set(self._db, plugin, key, value))

    async def plugin_atomically(
        self, plugin: str, change: Callable[[PluginData], Awaitable[T]]
    ) -> T:
        """Run ``change`` on the plugin's values in one transaction: what it reads is locked
        until it commits, so two changes at once behave as one after the other (on SQLite the
        store's single writer serializes them; on PostgreSQL rows read are locked ``FOR
        UPDATE``, and a value two changes both created is retried). ``change`` may run more
        than once; raising from it changes nothing. It must use only the ``PluginData`` it
        is given (another write of the store from it would wait for itself)."""
        for attempt in range(5):
            try:
                async with self._db.write() as s:
                    return await change(PluginData(s, plugin, self._db))
            except IntegrityError:
                if attempt == 4:
                    raise
                log.info("plugin %s: a concurrent change created the same value; again", plugin)
        raise AssertionError("unreachable")
