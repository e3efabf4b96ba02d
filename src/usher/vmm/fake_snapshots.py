"""Snapshots and copies of disks in the ``fake`` driver.

A simulated guest has no disk file: it holds ``disk_usage_mb`` (a driver option, default 64)
of guest data, which is what each of its snapshots holds (``size_bytes``), so quotas on
snapshot space can be tested. Snapshots live in the guest's record (journaled with it);
reverting and copying check what a real driver checks (states, names) and take the
``latency`` the options give their action. An exported disk is a small blank qcow2 in the
shared storage (``storage_dir`` option), enough for the catalogue and a fake guest.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable

from usher.model import Snapshot, VMState, now
from usher.vmm.base import DriverError, InvalidTransition, UnknownVM
from usher.vmm.fake_domain import ACTIVE, FakeDomain
from usher.vmm.fake_faults import Faults

SNAPSHOTTABLE = ACTIVE | {VMState.STOPPED}
"""States in which a guest's disks can be snapshot (and its snapshots deleted or copied)."""
EXPORTED_DISK_SIZE = "16M"
"""Virtual size of the blank qcow2 an export writes."""


class FakeSnapshots:
    """The snapshot and disk-copy methods of a :class:`usher.vmm.fake.FakeDriver`, over its
    table of guests; ``changed`` journals a guest."""

    def __init__(
        self,
        domains: dict[str, FakeDomain],
        faults: Faults,
        changed: Callable[[FakeDomain], None],
        *,
        disk_usage_mb: float,
        storage_dir: str | None,
    ) -> None:
        self._domains = domains
        self._faults = faults
        self._changed = changed
        self._disk_bytes = int(disk_usage_mb * 2**20)
        self._storage = storage_dir

    def _get(self, vm_id: str, action: str) -> FakeDomain:
        dom = self._domains.get(vm_id)
        if dom is None:
            raise UnknownVM(vm_id)
        if dom.state not in SNAPSHOTTABLE:
            raise InvalidTransition(vm_id, dom.state, action)
        return dom

    @staticmethod
    def _find(dom: FakeDomain, name: str) -> Snapshot:
        for snap in dom.snapshots:
            if snap.name == name:
                return snap
        raise DriverError(f"VM {dom.id} has no snapshot {name!r}")

    async def create(self, vm_id: str, name: str) -> Snapshot:
        dom = self._get(vm_id, "snapshot")
        if any(snap.name == name for snap in dom.snapshots):
            raise DriverError(f"VM {vm_id} has a snapshot {name!r} already")
        await self._faults.act("snapshot_create", vm_id)
        dom = self._get(vm_id, "snapshot")  # (it may have changed meanwhile)
        if any(snap.name == name for snap in dom.snapshots):
            raise DriverError(f"VM {vm_id} has a snapshot {name!r} already")
        snap = Snapshot(
            name=name,
            created_at=now(),
            size_bytes=self._disk_bytes,
            running=dom.state is not VMState.STOPPED,
        )
        dom.snapshots.append(snap)
        self._changed(dom)
        return snap

    def listed(self, vm_id: str) -> list[Snapshot]:
        dom = self._domains.get(vm_id)
        if dom is None:
            raise UnknownVM(vm_id)
        return list(dom.snapshots)

    async def revert(self, vm_id: str, name: str) -> None:
        dom = self._get(vm_id, "revert")
        if dom.state is not VMState.STOPPED:
            raise InvalidTransition(vm_id, dom.state, "revert")
        self._find(dom, name)
        await self._faults.act("snapshot_revert", vm_id)
        if dom.state is not VMState.STOPPED:
            raise InvalidTransition(vm_id, dom.state, "revert")
        dom.console.append(f"{dom.name}: disks reverted to snapshot {name}\n")
        self._changed(dom)

    async def delete(self, vm_id: str, name: str) -> None:
        dom = self._get(vm_id, "delete a snapshot of")
        self._find(dom, name)
        await self._faults.act("snapshot_delete", vm_id)
        dom.snapshots = [snap for snap in dom.snapshots if snap.name != name]
        self._changed(dom)

    def usage(self, vm_id: str) -> int:
        if vm_id not in self._domains:
            raise UnknownVM(vm_id)
        return self._disk_bytes

    def _check_source(self, vm_id: str, snapshot: str | None, action: str) -> None:
        dom = self._get(vm_id, action)
        if snapshot is None and dom.state is not VMState.STOPPED:
            raise InvalidTransition(vm_id, dom.state, f"{action} (without a snapshot)")
        if snapshot is not None:
            self._find(dom, snapshot)

    async def clone_disks(self, vm_id: str, new_vm_id: str, snapshot: str | None) -> None:
        self._check_source(vm_id, snapshot, "copy the disks of")
        if new_vm_id in self._domains:
            raise DriverError(f"cannot copy disks to VM {new_vm_id}: it has disks already")
        await self._faults.act("clone_disks", vm_id)
        self._check_source(vm_id, snapshot, "copy the disks of")

    async def export_disk(self, vm_id: str, staging: str, snapshot: str | None) -> int:
        self._check_source(vm_id, snapshot, "export the disk of")
        if self._storage is None:
            raise DriverError("the fake driver exports disks only with a storage_dir option")
        directory = os.path.join(self._storage, "images", staging)
        if not os.path.isdir(directory):
            raise DriverError(f"no staging directory {staging} in the image catalogue")
        await self._faults.act("export_disk", vm_id)
        disk = os.path.join(directory, "disk.qcow2")
        await asyncio.to_thread(_blank_qcow2, disk)
        return os.path.getsize(disk)


def _blank_qcow2(path: str) -> None:
    """A blank qcow2 at ``path`` (written beside it first, so no half a file is left)."""
    tmp = f"{path}.new"
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", tmp, EXPORTED_DISK_SIZE],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DriverError(f"cannot write a blank disk: {exc}") from None
    os.replace(tmp, path)
