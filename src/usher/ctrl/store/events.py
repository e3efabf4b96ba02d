"""The ``events`` table: every event kept, written behind in batches."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select

from usher import wire
from usher.ctrl.store.batcher import WriteBatcher
from usher.ctrl.store.database import Database
from usher.ctrl.store.rows import cursor as seq_after
from usher.ctrl.store.rows import page, page_size, row_values
from usher.ctrl.tables import EventRow
from usher.model import Event, Page, Scope

log = logging.getLogger("usher.store")


def _writable_event(row: dict[str, Any]) -> dict[str, Any]:
    """An event row whose data JSON can carry (a plugin's event with, say, an integer beyond
    64 bits keeps its name and says why its data is gone, and the batch it is written with,
    VM updates and other events, is not lost with it)."""
    try:
        wire.dumps(row["data"])
    except ValueError as exc:
        log.warning("event %s: its data cannot be stored: %s", row.get("name"), exc)
        row["data"] = {"unwritable": str(exc)[:200]}
    return row


class Events:
    def __init__(self, db: Database, batcher: WriteBatcher) -> None:
        self._db = db
        self._batcher = batcher

    async def add_events(self, events: Iterable[Event]) -> None:
        """Queue events to be written with the next flush (reads of events flush first)."""
        rows = [_writable_event(row_values(e, EventRow)) for e in events]
        if rows:
            self._batcher.add_events(rows)

    async def list_events(
        self,
        *,
        name: str | None = None,
        vm: str | None = None,
        node: str | None = None,
        operation: str | None = None,
        since: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
        newest: bool = False,
    ) -> Page[Event]:
        """A page of events, oldest first (``newest``: newest first)."""
        filters = []
        if scope is not None:
            filters.append(EventRow.principal.in_(scope.principals))
        for column, value in (
            (EventRow.name, name),
            (EventRow.vm_id, vm),
            (EventRow.node, node),
            (EventRow.operation_id, operation),
        ):
            if value is not None:
                filters.append(column == value)
        if since is not None:
            filters.append(EventRow.time >= since)
        after = seq_after(cursor)
        limit = page_size(limit)
        await self._batcher.flush()
        async with self._db.sessions() as s:
            count = select(func.count()).select_from(EventRow).where(*filters)
            total = (await s.execute(count)).scalar()
            stmt = select(EventRow).where(*filters)
            if after is not None:
                stmt = stmt.where(EventRow.seq < after if newest else EventRow.seq > after)
            order = EventRow.seq.desc() if newest else EventRow.seq
            rows = (await s.execute(stmt.order_by(order).limit(limit + 1))).scalars().all()
        items = [Event.model_validate(r, from_attributes=True) for r in rows]
        return page(items, [r.seq for r in rows], limit, total or 0)
