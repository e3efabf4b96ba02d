"""Where the ``qemu`` driver keeps a VM's files, and the files themselves.

* in the LNM's state dir, ``<state_dir>/vms/<vm_id>/``: ``vm.json`` (the record), ``qemu.pid``,
  ``qmp.sock``, ``console.sock`` (the serial console's input) and ``qemu.log`` (what QEMU
  printed: a daemon's stderr goes there);
* in the shared storage, ``<storage>/vms/<vm_id>/`` (:mod:`usher.images.catalog`): the disk,
  ``console.log``, ``seed.iso`` (the cloud-init seed of a guest whose image runs cloud-init)
  and ``node``, naming the node that runs the VM (its lease).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from usher.images import catalog

RECORD = "vm.json"
PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONSOLE_SOCKET = "console.sock"
CONSOLE = "console.log"
QEMU_LOG = "qemu.log"
LEASE = "node"
SEED = "seed.iso"

CONSOLE_CHUNK = 4 << 20
"""Most bytes :meth:`VMFiles.read_console` returns at once; ask again from where it ended."""


class VMFiles:
    """The files of this node's VMs: ``vms_dir`` holds their records, ``storage`` is the
    shared storage; ``node`` names this node in the leases it takes."""

    def __init__(self, vms_dir: str, storage: str, node: str) -> None:
        self.vms_dir = vms_dir
        self.storage = storage
        self.node = node

    def local(self, vm_id: str, name: str = "") -> str:
        return os.path.join(self.vms_dir, vm_id, name)

    def shared(self, vm_id: str, name: str = "") -> str:
        return os.path.join(catalog.vm_dir(self.storage, vm_id), name)

    def has_disk(self, vm_id: str) -> bool:
        return os.path.exists(self.shared(vm_id, catalog.DISK))

    def read_record(self, vm_id: str) -> dict[str, Any]:
        with open(self.local(vm_id, RECORD), encoding="utf-8") as file:
            record: dict[str, Any] = json.load(file)
        return record

    def save_record(self, vm_id: str, record: dict[str, Any]) -> None:
        """Write a VM's record atomically."""
        path = self.local(vm_id, RECORD)
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.replace(f"{path}.tmp", path)

    def remove_runtime_files(self, vm_id: str) -> None:
        """The pidfile and sockets of a QEMU that is gone."""
        for name in (PIDFILE, QMP_SOCKET, CONSOLE_SOCKET):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.local(vm_id, name))

    def last_qemu_message(self, vm_id: str) -> str | None:
        """The last line QEMU printed for this VM (why it quit, when it quit on an error)."""
        try:
            with open(self.local(vm_id, QEMU_LOG), "rb") as file:
                file.seek(max(0, os.fstat(file.fileno()).st_size - 4096))
                lines = file.read().decode(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return None
        return lines[-1].removeprefix("qemu-system-x86_64: ") if lines else None

    def take_lease(self, vm_id: str) -> None:
        """Note in the shared VM dir that this node runs the VM now."""
        with open(self.shared(vm_id, LEASE), "w", encoding="utf-8") as file:
            file.write(self.node)

    def never_ran(self, vm_id: str) -> bool:
        """The VM has files in the shared storage but no node ever took its lease (its
        disks were made or copied, and it never booted)."""
        return os.path.isdir(self.shared(vm_id)) and not os.path.exists(self.shared(vm_id, LEASE))

    def holds_lease(self, vm_id: str) -> bool:
        try:
            with open(self.shared(vm_id, LEASE), encoding="utf-8") as file:
                return file.read() == self.node
        except FileNotFoundError:
            return True

    def console_size(self, vm_id: str) -> int:
        """How many bytes of serial console output there are."""
        try:
            return os.path.getsize(self.shared(vm_id, CONSOLE))
        except FileNotFoundError:
            return 0

    def read_console(self, vm_id: str, offset: int) -> bytes:
        """Serial console output from ``offset`` on, at most :data:`CONSOLE_CHUNK` bytes."""
        try:
            with open(self.shared(vm_id, CONSOLE), "rb") as file:
                file.seek(max(0, offset))
                return file.read(CONSOLE_CHUNK)
        except FileNotFoundError:
            return b""
