"""``/v1/search/vms``: VMs found by part of their name or id and sorted by the server.

What the dashboard's table pages through: ``GET /v1/vms`` lists in creation order only; this
adds a search and a sort, with the same filters, visibility and authorization (``vm.list``).
The cursor is an offset (a sorted listing has no stable key to resume from).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from sqlalchemy import func, or_, select

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow, visible
from usher.ctrl.api.params import FilterPrincipal, FilterRef, FilterTags, Limit
from usher.ctrl.store.vm_pages import having_tags
from usher.ctrl.tables import VMRow
from usher.model import VM, Page, VMState

router = APIRouter(prefix="/v1/search", tags=["vms"])
SORTS: dict[str, Any] = {
    "created": VMRow.seq,
    "name": VMRow.name,
    "state": VMRow.state,
    "node": VMRow.node,
    "owner": VMRow.owner,
    "cluster": VMRow.cluster,
}
SortKey = Literal["created", "name", "state", "node", "owner", "cluster"]


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 10):
        raise ValueError(f"invalid cursor {cursor[:40]!r}: pass back the 'next' of a page")
    return int(cursor)


@router.get("/vms", response_model=Page[VM])
async def search_vms(
    ctrl: CtrlDep,
    principal: PrincipalDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    cluster: FilterRef = None,
    owner: FilterPrincipal = None,
    node: FilterRef = None,
    state: VMState | None = None,
    tag: FilterTags = None,
    sort: SortKey = "created",
    desc: bool = False,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(max_length=10)] = None,
) -> Page[VM]:
    """VMs whose name contains ``q`` (any case) or whose id starts with it, filtered like
    ``GET /v1/vms``, sorted by ``sort`` (``desc`` reverses; VMs without a node or cluster come
    last), a page of ``limit`` from ``cursor`` on."""
    await allow(ctrl, principal, "vm.list", cluster=cluster, owner=owner, node=node)
    scope = await visible(ctrl, principal)
    offset = _offset(cursor)
    wanted = {"cluster": cluster, "owner": owner, "node": node, "state": state}
    filters = [getattr(VMRow, k) == v for k, v in wanted.items() if v is not None]
    filters += having_tags(tag)
    if scope is not None:
        filters.append(or_(VMRow.owner.in_(scope.owners), VMRow.cluster.in_(scope.clusters)))
    if q:
        filters.append(
            or_(
                func.lower(VMRow.name).contains(q.lower(), autoescape=True),
                VMRow.id.startswith(q, autoescape=True),
            )
        )
    column = SORTS[sort]
    order = [(column.desc() if desc else column.asc()).nulls_last(), VMRow.seq]
    async with ctrl.store.sessions() as s:
        total = (await s.execute(select(func.count()).select_from(VMRow).where(*filters))).scalar()
        stmt = select(VMRow).where(*filters).order_by(*order).offset(offset).limit(limit + 1)
        rows = (await s.execute(stmt)).scalars().all()
    items = [VM.model_validate(r, from_attributes=True) for r in rows[:limit]]
    more = len(rows) > limit
    return Page(items=items, total=total or 0, next=str(offset + limit) if more else None)
