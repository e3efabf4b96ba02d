"""``/v1/operations``: what was asked, and how it went."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow, visible, vm_filter
from usher.ctrl.api.params import Cursor, FilterRef, Limit, RefPath
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.model import Operation, OpKind, OpStatus, Page, Principal

router = APIRouter(prefix="/v1/operations", tags=["operations"])


@router.get("", response_model=Page[Operation])
async def list_operations(
    ctrl: CtrlDep,
    principal: PrincipalDep,
    status: OpStatus | None = None,
    kind: OpKind | None = None,
    vm: FilterRef = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[Operation]:
    """Operations, newest first; ``vm`` (a name or id) keeps those that targeted that VM."""
    await allow(ctrl, principal, "operation.list")
    page = await ctrl.store.list_ops(
        scope=await visible(ctrl, principal),
        status=status.value if status else None,
        kind=kind.value if kind else None,
        vm=await vm_filter(ctrl, vm),
        limit=limit,
        cursor=cursor,
    )
    page.items = [ctrl.engine.live.get(op.id, op) for op in page.items]
    return page


async def _visible_op(ctrl: Controller, principal: Principal, op_id: str) -> Operation:
    """The operation, if ``principal`` may see it (else 404, as for one that does not
    exist), and may look at it (``operation.show``)."""
    op = await ctrl.engine.get_op(op_id)
    scope = await visible(ctrl, principal)
    if scope is not None and op.principal not in scope.principals:
        raise RequestError(404, f"unknown operation {op_id!r}")
    await allow(ctrl, principal, "operation.show", operation=op.model_dump(mode="json"))
    return op


@router.get("/{op_id}", response_model=Operation)
async def get_operation(op_id: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Operation:
    return await _visible_op(ctrl, principal, op_id)


@router.get("/{op_id}/wait", response_model=Operation)
async def wait_operation(
    op_id: RefPath,
    ctrl: CtrlDep,
    principal: PrincipalDep,
    timeout: Annotated[float, Query(ge=0, le=300, allow_inf_nan=False)] = 30,
) -> Operation:
    """Answer once the operation is done, or as it stands after ``timeout`` seconds."""
    await _visible_op(ctrl, principal, op_id)
    return await ctrl.engine.wait(op_id, timeout)


@router.post("/{op_id}/cancel", response_model=Operation)
async def cancel_operation(op_id: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Operation:
    """Cancel what can be: VM steps not yet begun never run; a running migration is called
    off (the VM stays on its source); other running steps go on, and ``result.cancel.refused``
    says why for each. The operation ends ``cancelled`` if a step was cancelled and none
    failed. 409 if it is already over."""
    op = await _visible_op(ctrl, principal, op_id)
    await allow(ctrl, principal, "operation.cancel", operation=op.model_dump(mode="json"))
    return await ctrl.engine.cancel(op_id)
