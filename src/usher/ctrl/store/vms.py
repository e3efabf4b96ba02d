"""The ``vms`` table (and ``destroyed_vms``, the tombstones): VM records written and looked up.

Every VM record is written through here, so the views derived from them stay in step."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, delete, func, or_, select

from usher.ctrl.listing import text_of
from usher.ctrl.store.batcher import WriteBatcher
from usher.ctrl.store.database import Database
from usher.ctrl.store.derived import DerivedViews
from usher.ctrl.store.rows import row_values
from usher.ctrl.tables import DestroyedVMRow, VMRow
from usher.model import VM, now

_VMS = VMRow.__table__
_INSERT_VMS = _VMS.insert().returning(_VMS.c.id, _VMS.c.seq)
_SELECT = select(_VMS)
CHUNK = 500  # references per IN (...) of a query


class VMs:
    def __init__(self, db: Database, batcher: WriteBatcher, derived: DerivedViews) -> None:
        self._db = db
        self._batcher = batcher
        self._derived = derived
        # Lookups of single VMs asked at about the same time share one query.
        self._reads: dict[str, list[asyncio.Future[VM | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def add_vms(self, vms: Iterable[VM]) -> None:
        rows = [row_values(vm, VMRow) for vm in vms]
        if rows:
            texts = [text_of(row) for row in rows]
            async with self._db.write() as s:
                placed = (await s.execute(_INSERT_VMS, rows)).all()
            self._derived.added(rows, placed, texts)

    async def update_vms(self, vms: Iterable[VM]) -> None:
        """Write the VMs' records; returns once committed (along with other queued writes)."""
        rows = [row_values(vm, VMRow) for vm in vms]
        if not rows:
            return
        texts = [text_of(row) for row in rows]
        for row in rows:
            row["_vm_id"] = row["id"]
        await self._batcher.update_vms(rows, texts)

    async def update_vm(self, vm: VM) -> None:
        await self.update_vms([vm])

    async def delete_vm(self, vm: VM) -> None:
        """Remove ``vm``'s record, leaving a tombstone (:meth:`was_destroyed`)."""
        async with self._db.write() as s:
            await s.execute(delete(VMRow).where(VMRow.id == vm.id))
            await s.execute(
                self._db.insert(DestroyedVMRow)
                .values(id=vm.id, name=vm.name, destroyed_at=now())
                .on_conflict_do_nothing(index_elements=["id"])
            )
        self._derived.deleted(vm.id)

    async def was_destroyed(self, vm_id: str) -> bool:
        async with self._db.sessions() as s:
            return await s.get(DestroyedVMRow, vm_id) is not None

    async def get_vm(self, ref: str) -> VM | None:
        """A VM by id or by name (an id wins); concurrent lookups share one query."""
        waiter: asyncio.Future[VM | None] = asyncio.get_running_loop().create_future()
        self._reads.setdefault(ref, []).append(waiter)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_vms())
        return await waiter

    async def _read_vms(self) -> None:
        while self._reads:
            wanted, self._reads = self._reads, {}
            refs = list(wanted)
            by_id: dict[str, dict[str, Any]] = {}
            by_name: dict[str, dict[str, Any]] = {}
            try:
                async with self._db.engine.connect() as conn:
                    for start in range(0, len(refs), CHUNK):
                        chunk = refs[start : start + CHUNK]
                        stmt = select(_VMS).where(_VMS.c.id.in_(chunk) | _VMS.c.name.in_(chunk))
                        for row in (await conn.execute(stmt)).mappings():
                            by_id[row["id"]] = by_name[row["name"]] = dict(row)
            except Exception as exc:
                for waiters in wanted.values():
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                continue
            for ref, waiters in wanted.items():
                row = by_id.get(ref) or by_name.get(ref)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(VM.model_validate(row) if row else None)

    async def _read(self, *statements: Select[Any]) -> list[VM]:
        """The VMs the ``statements`` (selects of whole rows) find, read as plain rows: the
        ORM's objects took a tenth of the controller's CPU under API load."""
        async with self._db.engine.connect() as conn:
            return [
                VM.model_validate(dict(row))
                for stmt in statements
                for row in (await conn.execute(stmt)).mappings()
            ]

    async def get_vms(self, ids: Iterable[str]) -> dict[str, VM]:
        ids = list(ids)
        chunks = (ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK))
        return {
            vm.id: vm for vm in await self._read(*(_SELECT.where(_VMS.c.id.in_(c)) for c in chunks))
        }

    async def resolve_vms(self, refs: Iterable[str]) -> tuple[list[VM], list[str]]:
        """VMs by id or name, in the order given; also the references that match nothing.
        One reference is looked up with the lookups of other requests (:meth:`get_vm`)."""
        refs = list(dict.fromkeys(refs))
        by_ref: dict[str, VM] = {}
        if len(refs) == 1:
            found = [vm] if (vm := await self.get_vm(refs[0])) else []
        else:
            chunks = (refs[start : start + CHUNK] for start in range(0, len(refs), CHUNK))
            found = await self._read(
                *(_SELECT.where(_VMS.c.id.in_(c) | _VMS.c.name.in_(c)) for c in chunks)
            )
        for vm in found:
            by_ref[vm.id] = by_ref[vm.name] = vm
        missing = [r for r in refs if r not in by_ref]
        vms = list({by_ref[r].id: by_ref[r] for r in refs if r in by_ref}.values())
        return vms, missing

    async def count_vms(self, *, image: str) -> int:
        stmt = select(func.count()).select_from(VMRow)
        stmt = stmt.where(VMRow.spec["image"].as_string() == image)
        async with self._db.sessions() as s:
            return int((await s.execute(stmt)).scalar() or 0)

    async def names_with_prefix(self, prefix: str) -> set[str]:
        async with self._db.sessions() as s:
            stmt = select(VMRow.name).where(VMRow.name.startswith(prefix, autoescape=True))
            return set((await s.execute(stmt)).scalars())

    async def names_taken(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        taken: list[str] = []
        async with self._db.sessions() as s:
            for start in range(0, len(names), CHUNK):
                chunk = names[start : start + CHUNK]
                stmt = select(VMRow.name).where(VMRow.name.in_(chunk))
                taken.extend((await s.execute(stmt)).scalars())
        return taken

    async def vms_on(self, node: str) -> list[VM]:
        """The VMs recorded on ``node`` or migrating to it, in one query (what a node that
        says hello is reconciled against)."""
        stmt = _SELECT.where(or_(_VMS.c.node == node, _VMS.c.target_node == node))
        return await self._read(stmt.order_by(_VMS.c.seq))

    async def vms_where(
        self,
        *,
        node: str | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
    ) -> list[VM]:
        stmt = _SELECT.order_by(_VMS.c.seq)
        if node is not None:
            stmt = stmt.where(_VMS.c.node == node)
        if target_node is not None:
            stmt = stmt.where(_VMS.c.target_node == target_node)
        if cluster is not None:
            stmt = stmt.where(_VMS.c.cluster == cluster)
        return await self._read(stmt)
