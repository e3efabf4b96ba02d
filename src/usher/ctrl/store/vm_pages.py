"""Pages of VMs: filtered and scoped listings, as models or as the API's JSON."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, Select, Text, cast, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from usher import wire
from usher.ctrl.listing import Listing
from usher.ctrl.store.database import Database
from usher.ctrl.store.rows import cursor as seq_after
from usher.ctrl.store.rows import page, page_size
from usher.ctrl.store.vms import CHUNK
from usher.ctrl.tables import VMRow
from usher.model import VM, Page, Scope

_VMS = VMRow.__table__
# What a filtered listing reads of each VM on its page (its JSON comes from the Listing)
_VM_IDS = select(_VMS.c.seq, _VMS.c.id)


def _vm_filters(
    scope: Scope | None,
    *,
    cluster: str | None,
    owner: str | None,
    node: str | None,
    state: str | None,
    tags: list[str] | None = None,
) -> list[Any]:
    """The WHERE clauses of a VM listing: the caller's scope and the filters asked for (a
    VM has every tag of ``tags``)."""
    filters: list[Any] = []
    if scope is not None:
        filters.append(or_(_VMS.c.owner.in_(scope.owners), _VMS.c.cluster.in_(scope.clusters)))
    for column, value in (("cluster", cluster), ("owner", owner), ("node", node), ("state", state)):
        if value is not None:
            filters.append(_VMS.c[column] == value)
    return filters + having_tags(tags)


class _Position(FunctionElement[int]):
    """Where the second argument first occurs in the first (1 on; 0: nowhere), in every
    database alike: case counts and nothing is a wildcard (unlike SQLite's LIKE)."""

    type = Integer()
    inherit_cache = True


@compiles(_Position, "sqlite")
def _instr(element: _Position, compiler: Any, **kw: Any) -> str:
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(_Position, "postgresql")
def _strpos(element: _Position, compiler: Any, **kw: Any) -> str:
    return f"strpos({compiler.process(element.clauses, **kw)})"


def having_tags(tags: list[str] | None) -> list[Any]:
    """WHERE clauses of VMs that have every tag of ``tags`` (valid tags: see
    :func:`usher.bounds.check_tags`)."""
    # the tags column holds a JSON list of strings; a valid tag has no quote or backslash to
    # escape there, so a tag is in the list when its quoted form is in the text
    text = cast(_VMS.c.tags, Text)
    return [_Position(text, f'"{tag}"') > 0 for tag in tags or ()]


class VMPages:
    def __init__(self, db: Database, listing: Listing) -> None:
        self._db = db
        self._listing = listing

    async def list_vms(
        self,
        *,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: str | None = None,
        tags: list[str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
    ) -> Page[VM]:
        """A page of VMs as models (for plugins); the API serves :meth:`list_vms_json`."""
        filters = _vm_filters(
            scope, cluster=cluster, owner=owner, node=node, state=state, tags=tags
        )
        rows, total, limit = await self.read_page(select(_VMS), filters, limit, cursor)
        items = [VM.model_validate(r._mapping) for r in rows]
        return page(items, [r.seq for r in rows], limit, total)

    async def list_vms_json(
        self,
        *,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: str | None = None,
        tags: list[str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
        scope: Scope | None = None,
    ) -> bytes:
        """The same page as :meth:`list_vms`, as the JSON of a ``Page[VM]``, built without a
        model per VM (a listing of a large cluster is the API's biggest answer). A filtered
        page's VMs come from a query; a page of every VM from the listing order in memory.
        Their JSON is the one held since they were written, or read from the database."""
        filters = _vm_filters(
            scope, cluster=cluster, owner=owner, node=node, state=state, tags=tags
        )
        if filters:
            rows, total, limit = await self.read_page(_VM_IDS, filters, limit, cursor)
            ids_on_page = [(seq, vm_id) for seq, vm_id, _total in rows[:limit]]
            more = len(rows) > limit
        else:
            ids_on_page, more = self._listing.page(seq_after(cursor), page_size(limit))
            total = len(self._listing)
        ids = [vm_id for _seq, vm_id in ids_on_page]
        found = self._listing.known(ids)
        missing = [vm_id for vm_id in ids if vm_id not in found]
        if missing:
            async with self._db.engine.connect() as conn:
                for start in range(0, len(missing), CHUNK):
                    chunk = missing[start : start + CHUNK]
                    for row in await conn.execute(select(_VMS).where(_VMS.c.id.in_(chunk))):
                        values = {k: v for k, v in row._mapping.items() if k != "seq"}
                        found[row.id] = self._listing.remember_row(values)
        # a VM deleted since the page was read is left out
        items = ",".join([found[vm_id] for vm_id in ids if vm_id in found])
        after = wire.dumps(str(ids_on_page[-1][0]) if more else None)
        return f'{{"items":[{items}],"total":{total},"next":{after}}}'.encode()

    async def read_page(
        self, stmt: Select[Any], filters: list[Any], limit: int, cursor: str | None
    ) -> tuple[list[Any], int, int]:
        """Up to ``limit + 1`` rows of ``stmt`` after ``cursor`` in ``seq`` order (one more
        tells whether another page follows), the count of all matching rows, and the limit
        as clamped to the largest page. One query: the count rides along as the last
        column of every row; ``stmt``'s first column must be ``seq``."""
        after = seq_after(cursor)
        limit = page_size(limit)
        count = select(func.count()).select_from(_VMS).where(*filters).scalar_subquery()
        stmt = stmt.add_columns(count.label("_total")).where(*filters)
        if after is not None:
            stmt = stmt.where(_VMS.c.seq > after)
        async with self._db.engine.connect() as conn:
            rows = list((await conn.execute(stmt.order_by(_VMS.c.seq).limit(limit + 1))).all())
            # no row: past the end, or nothing matches
            total = rows[0][-1] if rows else (await conn.execute(select(count))).scalar() or 0
        return rows, total, limit

    async def visible_vm_ids(self, scope: Scope) -> set[str]:
        """Ids of the VMs a principal limited to ``scope`` sees."""
        stmt = select(_VMS.c.id).where(
            *_vm_filters(scope, cluster=None, owner=None, node=None, state=None)
        )
        async with self._db.engine.connect() as conn:
            return set((await conn.execute(stmt)).scalars())
