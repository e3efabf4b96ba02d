"""``/v1/nodes``: the physical hosts and their LNMs."""

from __future__ import annotations

from fastapi import APIRouter

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow, visible
from usher.ctrl.api.params import RefPath
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.model import Node, Operation, Principal

router = APIRouter(prefix="/v1/nodes", tags=["nodes"])


def _node(ctrl: Controller, name: str) -> Node:
    node = ctrl.nodes.get(name)
    if node is None:
        raise RequestError(404, f"unknown node {name!r}")
    return node


async def _scoped(ctrl: Controller, principal: Principal, nodes: list[Node]) -> list[Node]:
    """``nodes`` as ``principal`` may see them: the VMs in their usage only if it may see
    those VMs too (a node's usage names every VM on it)."""
    scope = await visible(ctrl, principal)
    if scope is None:
        return nodes
    mine = await ctrl.store.visible_vm_ids(scope)
    return [
        node.model_copy(
            update={
                "usage": node.usage.model_copy(
                    update={"per_vm": {k: v for k, v in node.usage.per_vm.items() if k in mine}}
                )
            }
        )
        for node in nodes
    ]


@router.get("", response_model=list[Node])
async def list_nodes(ctrl: CtrlDep, principal: PrincipalDep) -> list[Node]:
    await allow(ctrl, principal, "node.list")
    return await _scoped(ctrl, principal, ctrl.nodes.snapshot())


@router.get("/{name}", response_model=Node)
async def show_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Node:
    await allow(ctrl, principal, "node.show", node=name)
    return (await _scoped(ctrl, principal, [_node(ctrl, name)]))[0]


@router.post("/{name}/drain", response_model=Node)
async def drain_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Node:
    """No new VMs go to a drained node; those on it stay."""
    _node(ctrl, name)
    await allow(ctrl, principal, "node.drain", node=name)
    return await ctrl.nodes.set_drained(name, True)


@router.post("/{name}/undrain", response_model=Node)
async def undrain_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Node:
    _node(ctrl, name)
    await allow(ctrl, principal, "node.undrain", node=name)
    return await ctrl.nodes.set_drained(name, False)


@router.post("/{name}/evacuate", status_code=202, response_model=Operation)
async def evacuate_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Operation:
    """Move every VM off the node: running and paused ones live, stopped ones cold, each
    where the scheduler puts it. The answer is the (``migrate``) operation, which runs on."""
    _node(ctrl, name)
    await allow(ctrl, principal, "node.evacuate", node=name)
    return await ctrl.engine.evacuate(principal, name)


@router.post("/{name}/maintenance", status_code=202, response_model=Operation)
async def maintain_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Operation:
    """Put the node in maintenance (no new VMs go there), then evacuate it."""
    _node(ctrl, name)
    await allow(ctrl, principal, "node.maintenance", node=name)
    await ctrl.nodes.set_drained(name, True, maintenance=True)
    return await ctrl.engine.evacuate(principal, name)


@router.post("/{name}/activate", response_model=Node)
async def activate_node(name: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> Node:
    """Return a node from maintenance (or a drain): new VMs may go there again."""
    _node(ctrl, name)
    await allow(ctrl, principal, "node.activate", node=name)
    return await ctrl.nodes.set_drained(name, False)
