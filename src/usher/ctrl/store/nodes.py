"""The ``nodes`` table: node records, written at once or behind (usage updates)."""

from __future__ import annotations

from sqlalchemy import select

from usher.ctrl.store.batcher import WriteBatcher
from usher.ctrl.store.database import Database
from usher.ctrl.store.rows import row_values
from usher.ctrl.tables import NodeRow
from usher.model import Node


class Nodes:
    def __init__(self, db: Database, batcher: WriteBatcher) -> None:
        self._db = db
        self._batcher = batcher
        self._upsert = db.upsert(NodeRow.__table__, ["name"])

    async def save_node(self, node: Node) -> None:
        self._batcher.forget_node(node.name)  # this write is newer than a queued one
        async with self._db.write() as s:
            await s.execute(self._upsert, [row_values(node, NodeRow)])

    def save_node_later(self, node: Node) -> None:
        """Queue ``node`` (a live object: what it holds when the flush runs is written) for
        the next flush; for usage updates, which nobody waits on. Reads of nodes flush first."""
        self._batcher.save_node_later(node)

    async def get_node(self, name: str) -> Node | None:
        await self._batcher.flush()
        async with self._db.sessions() as s:
            row = await s.get(NodeRow, name)
        return Node.model_validate(row, from_attributes=True) if row else None

    async def list_nodes(self) -> list[Node]:
        await self._batcher.flush()
        async with self._db.sessions() as s:
            rows = (await s.execute(select(NodeRow).order_by(NodeRow.name))).scalars()
            return [Node.model_validate(r, from_attributes=True) for r in rows]
