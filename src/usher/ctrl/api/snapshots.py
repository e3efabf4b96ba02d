"""``/v1/vms/{vm}/snapshots``, ``/clone`` and ``/image``: snapshots of a VM, and copies of
its disks as a new VM or a catalogue image. Each change is an operation (``202``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow, client_address, visible_vm
from usher.ctrl.api.params import RefPath
from usher.model import CloneVM, ImageFromVM, Operation, OpKind, Snapshot, SnapshotCreate

router = APIRouter(prefix="/v1/vms", tags=["snapshots"])


@router.get("/{vm}/snapshots", response_model=list[Snapshot])
async def list_snapshots(vm: RefPath, ctrl: CtrlDep, principal: PrincipalDep) -> list[Snapshot]:
    """The VM's snapshots, oldest first, as its node reported them after the last snapshot
    operation (sizes: the guest data each holds)."""
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.show", vms=[found.model_dump(mode="json")])
    return found.snapshots


@router.post("/{vm}/snapshots", status_code=202, response_model=Operation)
async def create_snapshot(
    vm: RefPath, body: SnapshotCreate, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Snapshot all of the VM's disks (running, paused or stopped) as ``name``; ``409`` if
    it has a snapshot of that name."""
    found = await visible_vm(ctrl, principal, vm)
    await allow(ctrl, principal, "vm.snapshot", vms=[found.model_dump(mode="json")])
    return await ctrl.engine.snapshot(
        principal, found, OpKind.SNAPSHOT, body.name, body.kwargs, client_address(request)
    )


@router.post("/{vm}/snapshots/{name}/revert", status_code=202, response_model=Operation)
async def revert_snapshot(
    vm: RefPath, name: RefPath, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Put the disks of the (stopped) VM back as snapshot ``name`` holds them; ``409`` for a
    VM that is not stopped, ``404`` for a snapshot it does not have."""
    found = await visible_vm(ctrl, principal, vm)
    return await ctrl.engine.snapshot(
        principal, found, OpKind.SNAPSHOT_REVERT, name, {}, client_address(request)
    )


@router.delete("/{vm}/snapshots/{name}", status_code=202, response_model=Operation)
async def delete_snapshot(
    vm: RefPath, name: RefPath, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Delete snapshot ``name`` of the VM; ``404`` for a snapshot it does not have."""
    found = await visible_vm(ctrl, principal, vm)
    return await ctrl.engine.snapshot(
        principal, found, OpKind.SNAPSHOT_DELETE, name, {}, client_address(request)
    )


@router.post("/{vm}/clone", status_code=202, response_model=Operation)
async def clone_vm(
    vm: RefPath, body: CloneVM, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Create the VM ``name`` from a copy of this VM's disks (stopped) or of its
    ``snapshot``, in its virtual cluster, with its own NICs; admitted as a create is."""
    found = await visible_vm(ctrl, principal, vm)
    return await ctrl.engine.clone(principal, found, body, client_address(request))


@router.post("/{vm}/image", status_code=202, response_model=Operation)
async def image_from_vm(
    vm: RefPath, body: ImageFromVM, request: Request, ctrl: CtrlDep, principal: PrincipalDep
) -> Operation:
    """Publish the VM's root disk (stopped) or its ``snapshot``'s, flattened, as the
    catalogue image ``name`` (needs ``image.import``); ``409`` if the name is taken."""
    found = await visible_vm(ctrl, principal, vm)
    return await ctrl.engine.image_from_vm(principal, found, body, client_address(request))
