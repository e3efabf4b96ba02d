"""The ``operations`` table: every operation asked for, and how it went."""

from __future__ import annotations

from sqlalchemy import String, cast, func, select

from usher.ctrl.store.batcher import WriteBatcher
from usher.ctrl.store.database import Database
from usher.ctrl.store.rows import cursor as seq_before
from usher.ctrl.store.rows import page, page_size, row_values
from usher.ctrl.tables import OperationRow
from usher.model import Operation, OpStatus, Page, Scope


class Operations:
    """Operations are written through the write batcher (one transaction with the other
    writes queued meanwhile); each call returns once its row is committed."""

    def __init__(self, db: Database, batcher: WriteBatcher) -> None:
        self._db = db
        self._batcher = batcher

    async def add_op(self, op: Operation) -> None:
        await self._batcher.add_op(row_values(op, OperationRow))

    async def update_op(self, op: Operation) -> None:
        await self._batcher.update_op(row_values(op, OperationRow))

    async def get_op(self, op_id: str) -> Operation | None:
        async with self._db.sessions() as s:
            stmt = select(OperationRow).where(OperationRow.id == op_id)
            row = (await s.execute(stmt)).scalar_one_or_none()
        return Operation.model_validate(row, from_attributes=True) if row else None

    async def list_ops(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        vm: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
    ) -> Page[Operation]:
        """A page of operations, newest first."""
        filters = []
        if scope is not None:
            filters.append(OperationRow.principal.in_(scope.principals))
        if vm is not None:
            filters.append(cast(OperationRow.targets, String).contains(f'"{vm}"', autoescape=True))
        if status is not None:
            filters.append(OperationRow.status == status)
        if kind is not None:
            filters.append(OperationRow.kind == kind)
        before = seq_before(cursor)
        limit = page_size(limit)
        async with self._db.sessions() as s:
            count = select(func.count()).select_from(OperationRow).where(*filters)
            total = (await s.execute(count)).scalar()
            stmt = select(OperationRow).where(*filters)
            if before is not None:
                stmt = stmt.where(OperationRow.seq < before)
            stmt = stmt.order_by(OperationRow.seq.desc()).limit(limit + 1)
            rows = (await s.execute(stmt)).scalars().all()
        items = [Operation.model_validate(r, from_attributes=True) for r in rows]
        return page(items, [r.seq for r in rows], limit, total or 0)

    async def unfinished_ops(self) -> list[Operation]:
        unfinished = [OpStatus.QUEUED.value, OpStatus.RUNNING.value]
        async with self._db.sessions() as s:
            stmt = select(OperationRow).where(OperationRow.status.in_(unfinished))
            rows = (await s.execute(stmt)).scalars()
            return [Operation.model_validate(r, from_attributes=True) for r in rows]
