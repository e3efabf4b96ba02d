"""``/v1/vms``: create, list, show, and act on VMs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from usher.ctrl.api.deps import (
    CtrlDep,
    PrincipalDep,
    allow,
    client_address,
    visible,
    visible_vm,
)
from usher.ctrl.api.params import Cursor, FilterPrincipal, FilterRef, FilterTags, Limit, RefPath
from usher.model import (
    VM,
    ConsoleChunk,
    CreateVMs,
    Operation,
    OpKind,
    Page,
    Plan,
    ResizeVM,
    SSHAccess,
    VMAction,
    VMChange,
    VMState,
)

router = APIRouter(prefix="/v1/vms", tags=["vms"])
MAX_OFFSET = 2**53
"""Largest console offset asked for (a byte position in the VM's console log)."""


@router.post("", status_code=202, response_model=Operation)
async def create_vms(
    body: CreateVMs, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Start new VMs; the answer is the operation, which runs on."""
    return await ctrl.engine.create(principal, body, client_address(request))


@router.post("/plan", response_model=Plan)
async def plan_vms(
    body: CreateVMs, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Plan:
    """Dry run of a start: where the VMs would go and why other nodes would not do."""
    return await ctrl.engine.plan_start(principal, body, client_address(request))


@router.post("/actions/migrate/plan", response_model=Plan)
async def plan_migration(
    body: VMAction, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Plan:
    """Dry run of a migration: where each VM would go, and why other nodes would not do."""
    return await ctrl.engine.plan_migrate(principal, body, client_address(request))


@router.get("", response_model=Page[VM])
async def list_vms(
    ctrl: CtrlDep,
    principal: PrincipalDep,
    cluster: FilterRef = None,
    owner: FilterPrincipal = None,
    node: FilterRef = None,
    state: VMState | None = None,
    tag: FilterTags = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Response:
    await allow(ctrl, principal, "vm.list", cluster=cluster, owner=owner, node=node)
    page = await ctrl.store.list_vms_json(
        scope=await visible(ctrl, principal),
        cluster=cluster,
        owner=owner,
        node=node,
        state=state.value if state else None,
        tags=tag,
        limit=limit,
        cursor=cursor,
    )
    return Response(page, media_type="application/json")


@router.get("/{vm}", response_model=VM)
async def show_vm(vm: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> VM:
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.show", vms=[found.model_dump(mode="json")])
    return found


@router.patch("/{vm}", response_model=VM)
async def change_vm(vm: RefPath, body: VMChange, ctrl: CtrlDep, principal: PrincipalDep) -> VM:
    """Rename the VM and/or change its tags; the answer is the VM as it is now."""
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.change", vms=[found.model_dump(mode="json")])
    return await ctrl.engine.change_vm(principal, found.id, body)


@router.get("/{vm}/console", response_model=ConsoleChunk)
async def console(
    vm: RefPath,
    ctrl: CtrlDep,
    principal: PrincipalDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ConsoleChunk:
    """The VM's serial console output from byte ``offset`` on; ``next`` is the offset to
    ask for to follow it."""
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.console", vms=[found.model_dump(mode="json")])
    return await ctrl.engine.console(found, offset)


@router.get("/{vm}/ssh", response_model=SSHAccess)
async def ssh_access(vm: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> SSHAccess:
    """Where the caller logs into the VM's guest with SSH, and as which account: the VM's
    address, or a port its node forwards to the guest's port 22 (user-mode networking)."""
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.ssh", vms=[found.model_dump(mode="json")])
    return await ctrl.engine.ssh_access(found, principal)


@router.post("/actions/{kind}", status_code=202, response_model=Operation)
async def act(
    kind: OpKind, body: VMAction, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Run an action on many VMs (ids or names in ``vms``) and/or a whole ``cluster``."""
    return await ctrl.engine.act(principal, kind, body, client_address(request))


# (after /actions/{kind}: declared before it, it would take "actions" for a VM's name)
@router.post("/{vm}/resize", status_code=202, response_model=Operation)
async def resize_vm(
    vm: RefPath, body: ResizeVM, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Change the VM's vCPUs and memory (it must be stopped) and grow its disks (stopped or
    running; never shrink). The answer is the ``resize`` operation, which runs on; the VM's
    spec changes once its node did it."""
    found = await visible_vm(ctrl, principal, vm)
    return await ctrl.engine.resize(principal, found, body, client_address(request))
