"""Snapshots of a VM and copies of its disks (a clone, an image), written once for both
clients (see :mod:`usher.client.protocol`)."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from usher.client.call import Call, request_body, segment
from usher.model import CloneVM, ImageFromVM, Operation, Snapshot, SnapshotCreate

_SNAPSHOTS = TypeAdapter(list[Snapshot])


def snapshots(vm: str) -> Call[list[Snapshot]]:
    """The snapshots of ``vm``, oldest first."""
    return Call("GET", f"/vms/{segment(vm)}/snapshots", _SNAPSHOTS.validate_python)


def snapshot_create(vm: str, name: str, kwargs: dict[str, Any] | None = None) -> Call[Operation]:
    """Snapshot all of ``vm``'s disks (running, paused or stopped) as ``name``."""
    body = request_body(SnapshotCreate, name=name, kwargs=kwargs or {})
    return Call("POST", f"/vms/{segment(vm)}/snapshots", Operation.model_validate, body=body)


def snapshot_revert(vm: str, name: str) -> Call[Operation]:
    """Put the disks of the stopped ``vm`` back as snapshot ``name`` holds them."""
    path = f"/vms/{segment(vm)}/snapshots/{segment(name)}/revert"
    return Call("POST", path, Operation.model_validate)


def snapshot_delete(vm: str, name: str) -> Call[Operation]:
    """Delete snapshot ``name`` of ``vm``."""
    path = f"/vms/{segment(vm)}/snapshots/{segment(name)}"
    return Call("DELETE", path, Operation.model_validate)


def clone(
    vm: str,
    name: str,
    snapshot: str | None = None,
    node: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Create the VM ``name`` from a copy of ``vm``'s disks (stopped) or of its
    ``snapshot``; it boots."""
    body = request_body(CloneVM, name=name, snapshot=snapshot, node=node, kwargs=kwargs or {})
    return Call("POST", f"/vms/{segment(vm)}/clone", Operation.model_validate, body=body)


def image_from_vm(
    vm: str, name: str, snapshot: str | None = None, description: str = ""
) -> Call[Operation]:
    """Publish ``vm``'s root disk (stopped) or its ``snapshot``'s as catalogue image
    ``name``."""
    body = request_body(ImageFromVM, name=name, snapshot=snapshot, description=description)
    return Call("POST", f"/vms/{segment(vm)}/image", Operation.model_validate, body=body)
