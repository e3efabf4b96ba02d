"""Write batching: concurrent small writes (VM state changes, events, node usage) share one
transaction and one executemany per statement, for everything queued while the last one ran."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, update

from usher.ctrl.listing import Text
from usher.ctrl.store.database import Database
from usher.ctrl.store.derived import DerivedViews
from usher.ctrl.store.rows import row_values
from usher.ctrl.tables import EventRow, NodeRow, VMRow
from usher.model import Node

log = logging.getLogger("usher.store")

# One statement for every VM update, so it compiles once and runs as an executemany.
_VMS = VMRow.__table__
_UPDATE_VM = update(_VMS).where(_VMS.c.id == bindparam("_vm_id"))
_INSERT_EVENTS = EventRow.__table__.insert()


@dataclass
class Batch:
    """Writes queued for the next flush: VM updates (whose callers wait for the commit),
    event rows and node records (written behind: nobody waits, but reads flush first)."""

    vm_updates: list[dict[str, Any]] = field(default_factory=list)
    vm_texts: list[Text] = field(default_factory=list)  # their JSON, for listings
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)  # as they are when written
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.vm_updates or self.events or self.nodes or self.waiters)


class WriteBatcher:
    """Queues writes and flushes them in one task; a VM update's caller waits for its commit
    (and the views derived from VM records follow only what was committed)."""

    def __init__(self, db: Database, derived: DerivedViews) -> None:
        self._db = db
        self._derived = derived
        self._upsert_nodes = db.upsert(NodeRow.__table__, ["name"])
        self.batch = Batch()
        self._flusher: asyncio.Task[None] | None = None

    async def update_vms(self, rows: list[dict[str, Any]], texts: list[Text]) -> None:
        """Queue VM rows (with ``_vm_id``) and their JSON; returns once committed."""
        self.batch.vm_texts.extend(texts)
        waiter = asyncio.get_running_loop().create_future()
        self.batch.vm_updates.extend(rows)
        self.batch.waiters.append(waiter)
        self._queued()
        await waiter

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        self.batch.events.extend(rows)
        self._queued()

    def save_node_later(self, node: Node) -> None:
        self.batch.nodes[node.name] = node
        self._queued()

    def forget_node(self, name: str) -> None:
        """A node written at once: a queued write of it is older."""
        self.batch.nodes.pop(name, None)

    async def flush(self) -> None:
        """Wait until every write queued so far (events too) is committed."""
        if not self.batch and (self._flusher is None or self._flusher.done()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self.batch.waiters.append(waiter)
        self._queued()
        await waiter

    def _queued(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_batches())

    async def _flush_batches(self) -> None:
        while self.batch:
            batch, self.batch = self.batch, Batch()
            error: Exception | None = None
            try:
                await self.write_batch(batch.events, batch.vm_updates, batch.nodes)
            except Exception as exc:
                log.exception(
                    "could not write %d VM updates, %d events and %d nodes",
                    len(batch.vm_updates),
                    len(batch.events),
                    len(batch.nodes),
                )
                error = exc
                if (batch.events or batch.nodes) and batch.vm_updates:  # others may be to blame
                    try:
                        await self.write_batch([], batch.vm_updates, {})
                        error = None
                    except Exception as again:
                        error = again
            if error is None:
                self._derived.updated(batch.vm_updates, batch.vm_texts)
            for waiter in batch.waiters:
                if waiter.done():
                    continue
                if error is not None and batch.vm_updates:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(None)

    async def write_batch(
        self,
        events: list[dict[str, Any]],
        vm_updates: list[dict[str, Any]],
        nodes: dict[str, Node],
    ) -> None:
        """One transaction: the nodes, then the events, then the VM updates."""
        if not events and not vm_updates and not nodes:
            return
        async with self._db.write() as s:
            if nodes:
                rows = [row_values(node, NodeRow) for node in nodes.values()]
                await s.execute(self._upsert_nodes, rows)
            if events:
                await s.execute(_INSERT_EVENTS, events)
            if vm_updates:
                await s.execute(_UPDATE_VM, vm_updates)
