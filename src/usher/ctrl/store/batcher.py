"""Write batching: concurrent small writes (operations, VM state changes, events, node usage)
share one transaction and one executemany per statement, for everything queued while the last
one ran (a group commit: SQLite takes one writer at a time, and under load a transaction per
write made every writer queue behind the others)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.exc import InterfaceError, OperationalError

from usher.ctrl.listing import Text
from usher.ctrl.store.database import Database
from usher.ctrl.store.derived import DerivedViews
from usher.ctrl.store.rows import row_values
from usher.ctrl.store.sqlite_inline import busy
from usher.ctrl.tables import EventRow, NodeRow, OperationRow, VMRow
from usher.model import Node

log = logging.getLogger("usher.store")

# One statement for every VM update, so it compiles once and runs as an executemany.
_VMS = VMRow.__table__
_UPDATE_VM = update(_VMS).where(_VMS.c.id == bindparam("_vm_id"))
_INSERT_EVENTS = EventRow.__table__.insert()
_OPS = OperationRow.__table__
_INSERT_OPS = _OPS.insert()
_UPDATE_OPS = update(_OPS).where(_OPS.c.id == bindparam("_op_id"))


@dataclass
class Batch:
    """Writes queued for the next flush: new and changed operations and VM updates (whose
    callers wait for the commit), event rows and node records (written behind: nobody waits,
    but reads flush first)."""

    new_ops: dict[str, dict[str, Any]] = field(default_factory=dict)  # by id, in order
    changed_ops: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last of each
    vm_updates: list[dict[str, Any]] = field(default_factory=list)
    vm_texts: list[Text] = field(default_factory=list)  # their JSON, for listings
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)  # as they are when written
    waiters: list[tuple[asyncio.Future[None], str | None]] = field(default_factory=list)
    """Each caller's future, with the id of the operation it wrote (None: any other write)."""

    def __bool__(self) -> bool:
        return bool(self.awaited or self.events or self.nodes or self.waiters)

    @property
    def awaited(self) -> bool:
        """Whether it holds writes whose callers wait for their commit (or its error)."""
        return bool(self.new_ops or self.changed_ops or self.vm_updates)


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
        self.batch.vm_updates.extend(rows)
        await self._committed()

    async def add_op(self, row: dict[str, Any]) -> None:
        """Queue a new operation's row; returns once committed."""
        self.batch.new_ops[row["id"]] = row
        await self._committed(row["id"])

    async def update_op(self, row: dict[str, Any]) -> None:
        """Queue an operation's row as it is now; returns once committed. Queued with its
        insert, it replaces the row to insert; queued after another change, that one."""
        if row["id"] in self.batch.new_ops:
            self.batch.new_ops[row["id"]] = row
        else:
            self.batch.changed_ops[row["id"]] = {**row, "_op_id": row["id"]}
        await self._committed(row["id"])

    async def _committed(self, op_id: str | None = None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.batch.waiters.append((waiter, op_id))
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
        await self._committed()

    def _queued(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_batches())

    async def _flush_batches(self) -> None:
        while self.batch:
            batch, self.batch = self.batch, Batch()
            try:
                await self.write_batch(batch)
            except Exception as exc:
                log.exception(
                    "could not write %d operations, %d VM updates, %d events and %d nodes",
                    len(batch.new_ops) + len(batch.changed_ops),
                    len(batch.vm_updates),
                    len(batch.events),
                    len(batch.nodes),
                )
                if _database_wide(exc):  # locked past the timeout, or out of reach: no row
                    # is to blame, and each part again would keep its caller one more timeout
                    failed = dict.fromkeys([None, *batch.new_ops, *batch.changed_ops], exc)
                else:
                    failed = await self._write_apart(batch)
            else:
                failed = {}
            if None not in failed:
                self._derived.updated(batch.vm_updates, batch.vm_texts)
            for waiter, op_id in batch.waiters:
                if waiter.done():
                    continue
                if op_id in failed:
                    waiter.set_exception(failed[op_id])
                else:
                    waiter.set_result(None)

    async def _write_apart(self, batch: Batch) -> dict[str | None, Exception]:
        """After ``batch`` failed as a whole: its VM updates in one transaction, each
        operation in one of its own, so a bad row fails only its own caller, then its events
        and node records together (a bad operation must not lose them; if they fail again,
        they are to blame and dropped, logged). Returns the error of each awaited part that
        failed again: by operation id, None for the VM updates."""
        parts: list[tuple[str | None, Batch]] = [(None, Batch(vm_updates=batch.vm_updates))]
        parts += [(i, Batch(new_ops={i: row})) for i, row in batch.new_ops.items()]
        parts += [(i, Batch(changed_ops={i: row})) for i, row in batch.changed_ops.items()]
        failed: dict[str | None, Exception] = {}
        for key, part in parts:
            try:
                await self.write_batch(part)
            except Exception as exc:
                failed[key] = exc
        try:
            await self.write_batch(Batch(events=batch.events, nodes=batch.nodes))
        except Exception:
            log.exception(
                "dropped %d events and %d node records that could not be written",
                len(batch.events),
                len(batch.nodes),
            )
        return failed

    async def write_batch(self, batch: Batch) -> None:
        """One transaction: the nodes, the new operations, the events, the changed
        operations, then the VM updates."""
        if not batch.awaited and not batch.events and not batch.nodes:
            return
        async with self._db.write() as s:
            if batch.nodes:
                rows = [row_values(node, NodeRow) for node in batch.nodes.values()]
                await s.execute(self._upsert_nodes, rows)
            if batch.new_ops:
                await s.execute(_INSERT_OPS, list(batch.new_ops.values()))
            if batch.events:
                await s.execute(_INSERT_EVENTS, batch.events)
            if batch.changed_ops:
                await s.execute(_UPDATE_OPS, list(batch.changed_ops.values()))
            if batch.vm_updates:
                await s.execute(_UPDATE_VM, batch.vm_updates)


def _database_wide(exc: Exception) -> bool:
    """Whether a write failed for the database as a whole (SQLite locked past its timeout, a
    connection lost), not for one of its rows nor a conflict that a retry may escape (a
    PostgreSQL deadlock)."""
    if isinstance(exc, InterfaceError) or getattr(exc, "connection_invalidated", False):
        return True
    return (
        isinstance(exc, OperationalError)
        and isinstance(exc.orig, sqlite3.OperationalError)
        and busy(exc.orig)
    )
