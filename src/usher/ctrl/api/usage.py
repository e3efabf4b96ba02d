"""``/v1/usage``: a node's or a VM's usage over the last hour (the dashboard's charts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow
from usher.ctrl.engine import RequestError
from usher.ctrl.usage import UsageSeries
from usher.model import now

router = APIRouter(prefix="/v1", tags=["usage"])


@router.get("/usage", response_model=UsageSeries)
async def usage(
    ctrl: CtrlDep,
    principal: PrincipalDep,
    node: str | None = None,
    vm: str | None = None,
    since: float | None = None,
    points: Annotated[int, Query(ge=2, le=1000)] = 240,
) -> UsageSeries:
    """Samples of one node (``node``, authorized as ``node.show``) or one VM (``vm``, id or
    name, authorized as ``vm.show``) since ``since`` (default: the retention, one hour),
    oldest first, averaged down to at most ``points``."""
    if (node is None) == (vm is None):
        raise RequestError(400, "give exactly one of node or vm")
    start = since if since is not None else now() - ctrl.usage.retention
    if node is not None:
        if ctrl.nodes.get(node) is None:
            raise RequestError(404, f"unknown node {node!r}")
        await allow(ctrl, principal, "node.show", node=node)
        return await ctrl.usage.series("node", node, start, points)
    assert vm is not None
    found = await ctrl.store.get_vm(vm)
    if found is None:
        raise RequestError(404, f"unknown VM {vm!r}")
    await allow(ctrl, principal, "vm.show", vms=[found.model_dump(mode="json")])
    return await ctrl.usage.series("vm", found.id, start, points)
