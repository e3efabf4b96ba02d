"""The controller's state store: everything it must not forget, through SQLAlchemy.

SQLite (one file in the state dir) by default, PostgreSQL when the config gives a
``postgresql://`` URL. All methods take and return the pydantic models of :mod:`usher.model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Select,
    String,
    bindparam,
    cast,
    delete,
    event,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.schema import CreateColumn

from usher import wire
from usher.ctrl.listing import Listing, Text, text_of
from usher.ctrl.quarantine import Quarantined, sweep
from usher.ctrl.reservations import ChangeLog, Reservations
from usher.ctrl.tables import (
    Base,
    DestroyedVMRow,
    EventRow,
    NodeRow,
    OperationRow,
    PluginDataRow,
    TokenRow,
    VMRow,
)
from usher.model import VM, Event, Node, Operation, OpStatus, Page, Scope, now

T = TypeVar("T")
MAX_PAGE = 1000
TOKEN_CACHE_SECONDS = 5.0
log = logging.getLogger("usher.store")

# One statement for every VM update, so it compiles once and runs as an executemany.
_VMS = VMRow.__table__
_UPDATE_VM = update(_VMS).where(_VMS.c.id == bindparam("_vm_id"))
_INSERT_VMS = _VMS.insert().returning(_VMS.c.id, _VMS.c.seq)
# What a filtered listing reads of each VM on its page (its JSON comes from the Listing)
_VM_IDS = select(_VMS.c.seq, _VMS.c.id)


@dataclass
class _Batch:
    """Writes queued for the next flush: VM updates (whose callers wait for the commit),
    event rows and node records (written behind: nobody waits, but reads flush first)."""

    vm_updates: list[dict[str, Any]] = field(default_factory=list)
    vm_texts: list[Text] = field(default_factory=list)  # their JSON, for listings
    events: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, Node] = field(default_factory=dict)  # as they are when written
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.vm_updates or self.events or self.nodes or self.waiters)


def async_url(url: str) -> str:
    """Map a plain database URL to the async driver Usher uses for it."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _row_values(model: Any, row_cls: type[Base]) -> dict[str, Any]:
    """The columns of ``row_cls`` (but ``seq``) from a model, as the database takes them."""
    return model.model_dump(mode="json", include=_columns_of(type(model), row_cls))


@functools.cache
def _columns_of(model_cls: type[Any], row_cls: type[Base]) -> frozenset[str] | None:
    """What to dump of a ``model_cls`` for ``row_cls``: None if it is every field (a dump
    told which fields to include takes twice as long)."""
    columns = frozenset(row_cls.__table__.columns.keys()) - {"seq"}
    return None if columns == frozenset(model_cls.model_fields) else columns


def _page(items: list[Any], seqs: Sequence[int], limit: int, total: int) -> Page[Any]:
    """One page of ``limit`` items out of ``items`` (one more was fetched to tell whether
    another page follows); the cursor is the row number ``seq`` of its last item."""
    more = len(seqs) > limit
    return Page(items=items[:limit], total=total, next=str(seqs[limit - 1]) if more else None)


def _vm_filters(
    scope: Scope | None,
    *,
    cluster: str | None,
    owner: str | None,
    node: str | None,
    state: str | None,
) -> list[Any]:
    """The WHERE clauses of a VM listing: the caller's scope and the filters asked for."""
    filters: list[Any] = []
    if scope is not None:
        filters.append(or_(_VMS.c.owner.in_(scope.owners), _VMS.c.cluster.in_(scope.clusters)))
    for column, value in (("cluster", cluster), ("owner", owner), ("node", node), ("state", state)):
        if value is not None:
            filters.append(_VMS.c[column] == value)
    return filters


def _page_size(limit: int) -> int:
    """A page's size as asked, within 1 and the largest page."""
    return max(1, min(limit, MAX_PAGE))


def _cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise ValueError(f"invalid cursor {cursor[:40]!r}: pass back the 'next' of a page")
    return int(cursor)


class Store:
    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {
            "json_serializer": wire.dumps,
            "json_deserializer": wire.loads,
            "hide_parameters": True,  # errors and logs never show values (hashes, digests)
        }
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time; queueing writers here beats retrying on "locked".
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # Concurrent small writes (VM state changes, events) are coalesced: one transaction
        # and one executemany per statement for everything queued while the last one ran.
        self._batch = _Batch()
        self._flusher: asyncio.Task[None] | None = None
        self._listing = Listing()
        # what the committed VM records reserve per node, for the scheduler; node records
        # that change are marked in the same log by the node registry
        self.changes = ChangeLog()
        self.reservations = Reservations(self.changes)
        self._tokens: dict[str, tuple[float, TokenRow]] = {}  # digest -> (when read, token)
        # Lookups of single VMs asked at about the same time share one query.
        self._vm_reads: dict[str, list[asyncio.Future[VM | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        # one statement for every node record written (compiled once; runs as executemany)
        nodes = (sqlite_insert if self.is_sqlite else pg_insert)(NodeRow.__table__)
        self._upsert_nodes = nodes.on_conflict_do_update(
            index_elements=["name"],
            set_={c.name: nodes.excluded[c.name] for c in NodeRow.__table__.columns},
        )

    async def open(self) -> list[Quarantined]:
        """Create or upgrade the schema and load what the store keeps in memory; returns
        the records that could not be read back and were moved to ``quarantine``."""
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(_add_new_columns)
            quarantined = await sweep(conn)
            columns = (_VMS.c.id, _VMS.c.node, _VMS.c.state, _VMS.c.cluster, _VMS.c.spec)
            rows = (await conn.execute(select(_VMS.c.seq, *columns))).all()
        self.reservations.apply(r._mapping for r in rows)
        self._listing.place((r.seq, r.id) for r in rows)
        return quarantined

    async def close(self) -> None:
        await self.flush()
        await self.engine.dispose()

    def _queued(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_batches())

    async def flush(self) -> None:
        """Wait until every write queued so far (events too) is committed."""
        if not self._batch and (self._flusher is None or self._flusher.done()):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(waiter)
        self._queued()
        await waiter

    async def _flush_batches(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, _Batch()
            error: Exception | None = None
            try:
                await self._write_batch(batch.events, batch.vm_updates, batch.nodes)
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
                        await self._write_batch([], batch.vm_updates, {})
                        error = None
                    except Exception as again:
                        error = again
            if error is None:
                self.reservations.apply(batch.vm_updates)
                self._listing.remember(batch.vm_texts)
            for waiter in batch.waiters:
                if waiter.done():
                    continue
                if error is not None and batch.vm_updates:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(None)

    async def _write_batch(
        self,
        events: list[dict[str, Any]],
        vm_updates: list[dict[str, Any]],
        nodes: dict[str, Node],
    ) -> None:
        if not events and not vm_updates and not nodes:
            return
        async with self._write() as s:
            if nodes:
                rows = [_row_values(node, NodeRow) for node in nodes.values()]
                await s.execute(self._upsert_nodes, rows)
            if events:
                await s.execute(EventRow.__table__.insert(), events)
            if vm_updates:
                await s.execute(_UPDATE_VM, vm_updates)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.sessions() as session, session.begin():
            yield session

    def _insert(self, row_cls: type[Base]) -> Any:
        return (sqlite_insert if self.is_sqlite else pg_insert)(row_cls)

    # --- VMs ---------------------------------------------------------------------------

    async def add_vms(self, vms: Iterable[VM]) -> None:
        rows = [_row_values(vm, VMRow) for vm in vms]
        if rows:
            texts = [text_of(row) for row in rows]
            async with self._write() as s:
                placed = (await s.execute(_INSERT_VMS, rows)).all()
            self.reservations.apply(rows)
            self._listing.place((seq, vm_id) for vm_id, seq in placed)
            self._listing.remember(texts)

    async def update_vms(self, vms: Iterable[VM]) -> None:
        """Write the VMs' records; returns once committed (along with other queued writes)."""
        rows = [_row_values(vm, VMRow) for vm in vms]
        if not rows:
            return
        self._batch.vm_texts.extend(text_of(row) for row in rows)
        for row in rows:
            row["_vm_id"] = row["id"]
        waiter = asyncio.get_running_loop().create_future()
        self._batch.vm_updates.extend(rows)
        self._batch.waiters.append(waiter)
        self._queued()
        await waiter

    async def update_vm(self, vm: VM) -> None:
        await self.update_vms([vm])

    async def delete_vm(self, vm: VM) -> None:
        """Remove ``vm``'s record, leaving a tombstone (:meth:`was_destroyed`)."""
        async with self._write() as s:
            await s.execute(delete(VMRow).where(VMRow.id == vm.id))
            await s.execute(
                self._insert(DestroyedVMRow)
                .values(id=vm.id, name=vm.name, destroyed_at=now())
                .on_conflict_do_nothing(index_elements=["id"])
            )
        self.reservations.forget(vm.id)
        self._listing.remove(vm.id)

    async def was_destroyed(self, vm_id: str) -> bool:
        async with self.sessions() as s:
            return await s.get(DestroyedVMRow, vm_id) is not None

    async def get_vm(self, ref: str) -> VM | None:
        """A VM by id or by name (an id wins); concurrent lookups share one query."""
        waiter: asyncio.Future[VM | None] = asyncio.get_running_loop().create_future()
        self._vm_reads.setdefault(ref, []).append(waiter)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_vms())
        return await waiter

    async def _read_vms(self) -> None:
        while self._vm_reads:
            wanted, self._vm_reads = self._vm_reads, {}
            refs = list(wanted)
            by_id: dict[str, dict[str, Any]] = {}
            by_name: dict[str, dict[str, Any]] = {}
            try:
                async with self.engine.connect() as conn:
                    for start in range(0, len(refs), 500):
                        chunk = refs[start : start + 500]
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

    async def get_vms(self, ids: Iterable[str]) -> dict[str, VM]:
        ids = list(ids)
        found: dict[str, VM] = {}
        async with self.sessions() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = (await s.execute(select(VMRow).where(VMRow.id.in_(chunk)))).scalars()
                found.update((r.id, _vm(r)) for r in rows)
        return found

    async def resolve_vms(self, refs: Iterable[str]) -> tuple[list[VM], list[str]]:
        """VMs by id or name, in the order given; also the references that match nothing."""
        refs = list(dict.fromkeys(refs))
        by_ref: dict[str, VM] = {}
        async with self.sessions() as s:
            for start in range(0, len(refs), 500):
                chunk = refs[start : start + 500]
                stmt = select(VMRow).where(VMRow.id.in_(chunk) | VMRow.name.in_(chunk))
                for row in (await s.execute(stmt)).scalars():
                    vm = _vm(row)
                    by_ref[vm.id] = by_ref[vm.name] = vm
        missing = [r for r in refs if r not in by_ref]
        vms = list({by_ref[r].id: by_ref[r] for r in refs if r in by_ref}.values())
        return vms, missing

    async def list_vms(
        self,
        *,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
    ) -> Page[VM]:
        """A page of VMs as models (for plugins); the API serves :meth:`list_vms_json`."""
        filters = _vm_filters(scope, cluster=cluster, owner=owner, node=node, state=state)
        rows, total, limit = await self._vm_page(select(_VMS), filters, limit, cursor)
        items = [VM.model_validate(r._mapping) for r in rows]
        return _page(items, [r.seq for r in rows], limit, total)

    async def list_vms_json(
        self,
        *,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
    ) -> bytes:
        """The same page as :meth:`list_vms`, as the JSON of a ``Page[VM]``, built without a
        model per VM (a listing of a large cluster is the API's biggest answer). A filtered
        page's VMs come from a query; a page of every VM from the listing order in memory.
        Their JSON is the one held since they were written, or read from the database."""
        filters = _vm_filters(scope, cluster=cluster, owner=owner, node=node, state=state)
        if filters:
            rows, total, limit = await self._vm_page(_VM_IDS, filters, limit, cursor)
            page, more = [(seq, vm_id) for seq, vm_id, _total in rows[:limit]], len(rows) > limit
        else:
            page, more = self._listing.page(_cursor(cursor), _page_size(limit))
            total = len(self._listing)
        ids = [vm_id for _seq, vm_id in page]
        found = self._listing.known(ids)
        missing = [vm_id for vm_id in ids if vm_id not in found]
        if missing:
            async with self.engine.connect() as conn:
                for start in range(0, len(missing), 500):
                    chunk = missing[start : start + 500]
                    for row in await conn.execute(select(_VMS).where(_VMS.c.id.in_(chunk))):
                        values = {k: v for k, v in row._mapping.items() if k != "seq"}
                        found[row.id] = self._listing.remember_row(values)
        # a VM deleted since the page was read is left out
        items = ",".join([found[vm_id] for vm_id in ids if vm_id in found])
        after = wire.dumps(str(page[-1][0]) if more else None)
        return f'{{"items":[{items}],"total":{total},"next":{after}}}'.encode()

    async def _vm_page(
        self, stmt: Select[Any], filters: list[Any], limit: int, cursor: str | None
    ) -> tuple[list[Any], int, int]:
        """Up to ``limit + 1`` rows of ``stmt`` after ``cursor`` in ``seq`` order (one more
        tells whether another page follows), the count of all matching rows, and the limit
        as clamped to the largest page. One query: the count rides along as the last
        column of every row; ``stmt``'s first column must be ``seq``."""
        after = _cursor(cursor)
        limit = _page_size(limit)
        count = select(func.count()).select_from(_VMS).where(*filters).scalar_subquery()
        stmt = stmt.add_columns(count.label("_total")).where(*filters)
        if after is not None:
            stmt = stmt.where(_VMS.c.seq > after)
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(stmt.order_by(_VMS.c.seq).limit(limit + 1))).all())
            # no row: past the end, or nothing matches
            total = rows[0][-1] if rows else (await conn.execute(select(count))).scalar() or 0
        return rows, total, limit

    async def visible_vm_ids(self, scope: Scope) -> set[str]:
        """Ids of the VMs a principal limited to ``scope`` sees."""
        stmt = select(_VMS.c.id).where(
            *_vm_filters(scope, cluster=None, owner=None, node=None, state=None)
        )
        async with self.engine.connect() as conn:
            return set((await conn.execute(stmt)).scalars())

    async def count_vms(self, *, image: str) -> int:
        stmt = select(func.count()).select_from(VMRow)
        stmt = stmt.where(VMRow.spec["image"].as_string() == image)
        async with self.sessions() as s:
            return int((await s.execute(stmt)).scalar() or 0)

    async def names_with_prefix(self, prefix: str) -> set[str]:
        async with self.sessions() as s:
            stmt = select(VMRow.name).where(VMRow.name.startswith(prefix, autoescape=True))
            return set((await s.execute(stmt)).scalars())

    async def names_taken(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        taken: list[str] = []
        async with self.sessions() as s:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                stmt = select(VMRow.name).where(VMRow.name.in_(chunk))
                taken.extend((await s.execute(stmt)).scalars())
        return taken

    async def vms_where(
        self,
        *,
        node: str | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
    ) -> list[VM]:
        stmt = select(VMRow).order_by(VMRow.seq)
        if node is not None:
            stmt = stmt.where(VMRow.node == node)
        if target_node is not None:
            stmt = stmt.where(VMRow.target_node == target_node)
        if cluster is not None:
            stmt = stmt.where(VMRow.cluster == cluster)
        async with self.sessions() as s:
            return [_vm(r) for r in (await s.execute(stmt)).scalars()]

    # --- nodes -------------------------------------------------------------------------

    async def save_node(self, node: Node) -> None:
        self._batch.nodes.pop(node.name, None)  # this write is newer than a queued one
        async with self._write() as s:
            await s.execute(self._upsert_nodes, [_row_values(node, NodeRow)])

    def save_node_later(self, node: Node) -> None:
        """Queue ``node`` (a live object: what it holds when the flush runs is written) for
        the next flush; for usage updates, which nobody waits on. Reads of nodes flush first."""
        self._batch.nodes[node.name] = node
        self._queued()

    async def get_node(self, name: str) -> Node | None:
        await self.flush()
        async with self.sessions() as s:
            row = await s.get(NodeRow, name)
        return Node.model_validate(row, from_attributes=True) if row else None

    async def list_nodes(self) -> list[Node]:
        await self.flush()
        async with self.sessions() as s:
            rows = (await s.execute(select(NodeRow).order_by(NodeRow.name))).scalars()
            return [Node.model_validate(r, from_attributes=True) for r in rows]

    # --- operations --------------------------------------------------------------------

    async def add_op(self, op: Operation) -> None:
        async with self._write() as s:
            await s.execute(self._insert(OperationRow), [_row_values(op, OperationRow)])

    async def update_op(self, op: Operation) -> None:
        async with self._write() as s:
            values = _row_values(op, OperationRow)
            await s.execute(update(OperationRow).where(OperationRow.id == op.id).values(**values))

    async def get_op(self, op_id: str) -> Operation | None:
        async with self.sessions() as s:
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
        filters = []
        if scope is not None:
            filters.append(OperationRow.principal.in_(scope.principals))
        if vm is not None:
            filters.append(cast(OperationRow.targets, String).contains(f'"{vm}"', autoescape=True))
        if status is not None:
            filters.append(OperationRow.status == status)
        if kind is not None:
            filters.append(OperationRow.kind == kind)
        before = _cursor(cursor)
        limit = _page_size(limit)
        async with self.sessions() as s:
            count = select(func.count()).select_from(OperationRow).where(*filters)
            total = (await s.execute(count)).scalar()
            stmt = select(OperationRow).where(*filters)
            if before is not None:
                stmt = stmt.where(OperationRow.seq < before)
            stmt = stmt.order_by(OperationRow.seq.desc()).limit(limit + 1)
            rows = (await s.execute(stmt)).scalars().all()
        items = [Operation.model_validate(r, from_attributes=True) for r in rows]
        return _page(items, [r.seq for r in rows], limit, total or 0)

    async def unfinished_ops(self) -> list[Operation]:
        unfinished = [OpStatus.QUEUED.value, OpStatus.RUNNING.value]
        async with self.sessions() as s:
            stmt = select(OperationRow).where(OperationRow.status.in_(unfinished))
            rows = (await s.execute(stmt)).scalars()
            return [Operation.model_validate(r, from_attributes=True) for r in rows]

    # --- events ------------------------------------------------------------------------

    async def add_events(self, events: Iterable[Event]) -> None:
        """Queue events to be written with the next flush (reads of events flush first)."""
        rows = [_writable_event(_row_values(e, EventRow)) for e in events]
        if rows:
            self._batch.events.extend(rows)
            self._queued()

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
    ) -> Page[Event]:
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
        after = _cursor(cursor)
        limit = _page_size(limit)
        await self.flush()
        async with self.sessions() as s:
            count = select(func.count()).select_from(EventRow).where(*filters)
            total = (await s.execute(count)).scalar()
            stmt = select(EventRow).where(*filters)
            if after is not None:
                stmt = stmt.where(EventRow.seq > after)
            rows = (await s.execute(stmt.order_by(EventRow.seq).limit(limit + 1))).scalars().all()
        items = [Event.model_validate(r, from_attributes=True) for r in rows]
        return _page(items, [r.seq for r in rows], limit, total or 0)

    # --- tokens ------------------------------------------------------------------------

    async def add_token(self, row: TokenRow) -> None:
        async with self._write() as s:
            s.add(row)

    async def find_token(self, digest: str) -> TokenRow | None:
        """The token with this digest. Every API request looks its token up, so one found is
        remembered for :data:`TOKEN_CACHE_SECONDS`; a revocation (:meth:`revoke_token`)
        forgets them all, and expiry is checked by the caller on each use."""
        hit = self._tokens.get(digest)
        if hit is not None and time.monotonic() - hit[0] < TOKEN_CACHE_SECONDS:
            return hit[1]
        async with self.sessions() as s:
            stmt = select(TokenRow).where(TokenRow.digest == digest)
            row = (await s.execute(stmt)).scalar_one_or_none()
        if row is not None:
            if len(self._tokens) >= 10_000:
                self._tokens.clear()
            self._tokens[digest] = (time.monotonic(), row)
        return row

    async def tokens_with_role(self, role: str) -> list[TokenRow]:
        async with self.sessions() as s:
            rows = (await s.execute(select(TokenRow))).scalars()
            return [r for r in rows if role in r.roles]

    async def get_token(self, token_id: str) -> TokenRow | None:
        async with self.sessions() as s:
            return await s.get(TokenRow, token_id)

    async def list_tokens(self, principal: str | None = None) -> list[TokenRow]:
        """Tokens (revoked and expired ones too), oldest first; only ``principal``'s if given."""
        stmt = select(TokenRow).order_by(TokenRow.created_at, TokenRow.id)
        if principal is not None:
            stmt = stmt.where(TokenRow.principal == principal)
        async with self.sessions() as s:
            return list((await s.execute(stmt)).scalars())

    async def revoke_token(self, token_id: str, *, keep_one_of: str | None = None) -> None:
        """Revoke a token. With ``keep_one_of``, refuse (:class:`LastCredential`) when it is
        the last active token with that role: the check and the revocation are one
        transaction with the role's tokens locked, so two at once cannot both pass."""
        self._tokens.clear()
        async with self._write() as s:
            if keep_one_of is not None:
                stmt = select(TokenRow).where(TokenRow.revoked == false())
                if not self.is_sqlite:  # (SQLite: the store's write lock serializes)
                    stmt = stmt.with_for_update()
                rows = (await s.execute(stmt)).scalars().all()
                holders = [r for r in rows if keep_one_of in r.roles and _active(r)]
                if [r.id for r in holders] == [token_id]:
                    raise LastCredential(f"token {token_id} is the last {keep_one_of} credential")
            await s.execute(update(TokenRow).where(TokenRow.id == token_id).values(revoked=True))
        self._tokens.clear()  # a lookup may have raced the write

    # --- plugin data -------------------------------------------------------------------

    async def plugin_get(self, plugin: str, key: str, default: Any = None) -> Any:
        async with self.sessions() as s:
            row = await s.get(PluginDataRow, (plugin, key))
        return row.value if row else default

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
                async with self._write() as s:
                    return await change(PluginData(s, plugin, self))
            except IntegrityError:
                if attempt == 4:
                    raise
                log.info("plugin %s: a concurrent change created the same value; again", plugin)
        raise AssertionError("unreachable")

    async def plugin_set(self, plugin: str, key: str, value: Any) -> None:
        stmt = self._insert(PluginDataRow).values(plugin=plugin, key=key, value=value)
        stmt = stmt.on_conflict_do_update(index_elements=["plugin", "key"], set_={"value": value})
        async with self._write() as s:
            await s.execute(stmt)


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


class PluginData:
    """A plugin's values within one transaction (:meth:`Store.plugin_atomically`)."""

    def __init__(self, session: AsyncSession, plugin: str, store: Store) -> None:
        self._session = session
        self._plugin = plugin
        self._store = store
        self._absent: set[str] = set()  # read as missing: created with a plain INSERT

    async def get(self, key: str, default: Any = None) -> Any:
        stmt = select(PluginDataRow.value).where(
            PluginDataRow.plugin == self._plugin, PluginDataRow.key == key
        )
        if not self._store.is_sqlite:
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
            stmt = self._store._insert(PluginDataRow).values(
                plugin=self._plugin, key=key, value=value
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["plugin", "key"], set_={"value": value}
            )
        await self._session.execute(stmt)


class LastCredential(Exception):
    """The token is the last active one with a role that must not be left without one."""


def _active(row: TokenRow) -> bool:
    return not row.revoked and (row.expires_at is None or row.expires_at > now())


def _vm(row: VMRow) -> VM:
    return VM.model_validate(row, from_attributes=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _add_new_columns(conn: Connection) -> None:
    """Upgrade a database made by an older Usher: add the columns it lacks (a new column
    always has a server default, so existing rows stay valid)."""
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                ddl = CreateColumn(column).compile(dialect=conn.dialect)
                log.warning("upgrading the database: adding %s.%s", table.name, column.name)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
