"""The ``qemu`` VMM driver: every VM is a QEMU process, controlled over QMP.

QEMU runs detached from the LNM (see :mod:`usher.vmm.qemu_process`), so an LNM that restarts
neither stops nor loses a guest: :meth:`QemuDriver.open` reads every VM record in the state
dir, reattaches to its QEMU over QMP and reports the state QEMU tells (``query-status``); a
record whose QEMU is gone is ``error`` (it ended while nobody watched), or stays ``stopped``.

While the driver runs, a watcher per VM (:mod:`usher.vmm.qemu_guests`) waits on its QMP
connection, which QEMU's end closes at once (with a poll of ``/proc/<pid>/stat`` as a
fallback), and reports an end that no operation asked for through ``on_state_change``:
``stopped`` when the guest powered itself off, ``error`` with the cause otherwise. Live
migration is in :mod:`usher.vmm.qemu_migration`.

Files of a VM (:mod:`usher.vmm.qemu_files`):

* in this LNM's state dir, ``<state_dir>/vms/<vm_id>/``: ``vm.json`` (the record: id, name,
  spec, image, NICs, accelerator, last state), ``qemu.pid``, ``qmp.sock`` and
  ``console.sock``, where console input is typed (:mod:`usher.vmm.qemu_console`);
* in the shared storage, ``<storage>/vms/<vm_id>/`` (:mod:`usher.images.catalog`):
  ``disk.qcow2``, the copy-on-write overlay on the image's base disk (of ``spec.disk_gb``
  GiB), its data disks ``data1.qcow2``, … (``spec.disks``); ``console.log``, the
  serial console, which every QEMU the VM ever runs in appends to, on any node, so it reads
  on across stops, reboots and live migrations; and ``node``, naming the node (host and state
  dir) that runs the VM. Only that node's ``destroy`` removes the shared files: a node the VM
  migrated away from (or an incoming VM that is aborted) never deletes the disk in use.

Options (``options`` dict, ``usher lnm --driver-option KEY=JSON``):

* ``storage_dir``: the shared storage (default ``/var/lib/usher/storage``).
* ``accel``: ``auto`` (default: KVM where it works, see :mod:`usher.vmm.qemu_accel`),
  ``kvm`` or ``tcg``.
* ``stop_timeout``: seconds a graceful stop (ACPI power button) may take before QEMU is
  stopped hard (default 30).
* ``qemu_binary``: default ``qemu-system-x86_64``.
* ``bridge``: a Linux bridge for NICs on the ``default`` network; without it they use
  user-mode networking. A NIC on ``bridge:<name>`` gets a tap device on that bridge either
  way; QEMU creates the tap and it vanishes with QEMU.
* ``vcpus``, ``memory_mb``: what guests may use on this host (default: the host's); a start
  that does not fit raises :class:`InsufficientCapacity`.
* ``ssh_forward_host`` (default ``127.0.0.1``): where this node forwards a port to port 22
  of a guest that has a cloud-init seed and a NIC on user-mode networking (its ``ssh``
  endpoint; ``ush ssh`` goes there).
* ``migrate_downtime_ms`` (default 300) and ``migrate_bandwidth_mbps`` (MiB/s, default
  1024): QEMU's live-migration downtime limit and bandwidth cap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from usher.images import catalog
from usher.model import LEASE_HELD, Capability, Snapshot, VMState
from usher.vmm import qemu_process as proc
from usher.vmm.base import DomainInfo, Driver, DriverError, Guest, MigrationResult
from usher.vmm.qemu_accel import DEFAULT_BINARY, detect_accel
from usher.vmm.qemu_argv import nics_of
from usher.vmm.qemu_console import Consoles
from usher.vmm.qemu_domain import LIVE, Domain, state_of
from usher.vmm.qemu_files import PIDFILE, VMFiles
from usher.vmm.qemu_guests import Guests
from usher.vmm.qemu_migration import Migrations
from usher.vmm.qemu_monitor import Monitor, MonitorError
from usher.vmm.qemu_snapshots import QemuSnapshots

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "/var/lib/usher/storage"

_ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
_STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
LOCK_FAILED = 'Failed to get "write" lock'
"""What QEMU says when another QEMU holds the image lock of the disk it should open."""


def host_memory_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as file:
        for line in file:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise DriverError("cannot read the host's memory size from /proc/meminfo")


class QemuDriver(Driver):
    """Guests as detached QEMU processes; see the module documentation for the options."""

    name = "qemu"
    capabilities = frozenset(Capability)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.state_dir is None:
            raise DriverError("the qemu driver needs a state directory")
        opts = self.options
        self._accel_option = str(opts.get("accel", "auto"))
        if self._accel_option not in ("auto", "kvm", "tcg"):
            raise DriverError(
                f"qemu driver: accel must be auto, kvm or tcg, not {self._accel_option!r}"
            )
        self._stop_timeout = float(opts.get("stop_timeout", 30.0))
        self._binary = str(opts.get("qemu_binary", DEFAULT_BINARY))
        self._node = f"{socket.gethostname()}:{os.path.realpath(self.state_dir)}"
        self._files = VMFiles(
            os.path.join(self.state_dir, "vms"),
            str(opts.get("storage_dir") or DEFAULT_STORAGE),
            self._node,
        )
        self._accel: str | None = None
        self._guests = Guests(
            self._files,
            binary=self._binary,
            bridge=opts.get("bridge") or None,
            forward_host=str(opts.get("ssh_forward_host", "127.0.0.1")),
            vcpus=int(opts.get("vcpus") or os.cpu_count() or 1),
            memory_mb=int(opts.get("memory_mb") or host_memory_mb()),
            report=lambda vm_id, state, reason: self.on_state_change(vm_id, state, reason),
        )
        self._domains = self._guests.domains
        self._consoles = Consoles(self._files)
        self._snapshots = QemuSnapshots(self._guests)
        self._migrations = Migrations(
            self._guests,
            accelerator=self._accelerator,
            downtime_ms=int(opts.get("migrate_downtime_ms", 300)),
            bandwidth=int(float(opts.get("migrate_bandwidth_mbps", 1024)) * 2**20),
        )

    # life cycle of the driver ---------------------------------------------------------------

    async def open(self) -> None:
        """Find every VM in the state dir and reattach to the QEMU processes that still run."""
        vms_dir = self._files.vms_dir
        os.makedirs(vms_dir, exist_ok=True)
        await self._accelerator()
        for vm_id in sorted(os.listdir(vms_dir)):
            try:
                dom = Domain.from_record(self._files.read_record(vm_id))
            except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
                log.warning(
                    "ignoring %s: no readable VM record (%s)", self._files.local(vm_id), exc
                )
                continue
            await self._reattach(dom)

    async def close(self) -> None:
        """Stop watching; the guests keep running and the next :meth:`open` finds them."""
        await self._consoles.close()
        for dom in self._domains.values():
            await self._guests.unwatch(dom)

    async def _accelerator(self) -> str:
        if self._accel is None:
            if self._accel_option == "auto":
                choice = await asyncio.to_thread(detect_accel, self._binary)
                self._accel = choice.accel
            else:
                self._accel = self._accel_option
                log.info("QEMU accelerator: %s (set by the accel option)", self._accel)
        return self._accel

    async def _reattach(self, dom: Domain) -> None:
        files = self._files
        pidfile = files.local(dom.id, PIDFILE)
        pid = proc.read_pid(pidfile)
        if pid is not None and proc.runs_with(pid, pidfile):
            dom.pid = pid
            self._domains[dom.id] = dom
            try:
                monitor, status = await self._guests.connect(dom)
            except MonitorError as exc:
                dom.state, dom.reason = VMState.ERROR, f"QEMU (pid {pid}) does not answer: {exc}"
                log.warning("VM %s: %s", dom.id, dom.reason)
                return
            dom.state, dom.reason = state_of(status, dom.incoming)
            self._guests.watch(dom, pid, monitor)
            log.info("reattached to VM %s (QEMU pid %d, %s)", dom.id, pid, status)
            return
        files.remove_runtime_files(dom.id)
        if dom.incoming:
            log.warning("dropping VM %s: its incoming QEMU ended while the LNM was away", dom.id)
            shutil.rmtree(files.local(dom.id), ignore_errors=True)
            return
        if not files.has_disk(dom.id):
            log.warning("forgetting VM %s: its disk %s is gone", dom.id, files.shared(dom.id))
            shutil.rmtree(files.local(dom.id), ignore_errors=True)
            return
        if dom.state in LIVE:
            dom.state, dom.reason = VMState.ERROR, "QEMU ended while the LNM was not running"
            self._guests.save(dom)
        self._domains[dom.id] = dom

    # inventory ------------------------------------------------------------------------------

    async def list(self) -> list[DomainInfo]:
        return [dom.info() for dom in self._domains.values()]

    async def info(self, vm_id: str) -> DomainInfo:
        return self._guests.get(vm_id).info()

    # operations -----------------------------------------------------------------------------

    async def start(self, guest: Guest) -> DomainInfo:
        """Boot a new VM, or a stopped or crashed one again on its existing overlay disk."""
        old = self._domains.get(guest.id)
        if old is not None:
            self._guests.require(old, "start", _STARTABLE)
        image = guest.image or (old.image if old else None)
        if image is None:
            raise DriverError(
                f"cannot start VM {guest.id}: image {guest.spec.image!r} is not in the catalogue"
            )
        dom = Domain(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            meta=dict(guest.meta),
            image=image,
            nics=nics_of(guest.id, guest.spec.nics),
            accel=await self._accelerator(),
            state=VMState.RUNNING,
        )
        with self._guests.claim(guest.id, guest.spec):
            disk_was_there = self._files.has_disk(guest.id)
            try:
                if not disk_was_there:  # one it has keeps what it holds; a lost data disk
                    await asyncio.to_thread(  # is not made anew, blank: QEMU says it lacks it
                        catalog.create_vm_disks, self._files.storage, image, guest.id, guest.spec
                    )
            except catalog.ImageError as exc:
                raise DriverError(f"cannot start VM {guest.id}: {exc}") from exc
            if old is not None:
                await self._guests.end_leftover(old)
            try:
                await self._guests.prepare_access(dom, guest, write_seed=True)
                await self._guests.boot(dom)
            except BaseException as exc:
                if old is not None:
                    self._guests.save(old)
                else:
                    shutil.rmtree(self._files.local(guest.id), ignore_errors=True)
                    if not disk_was_there:
                        catalog.remove_vm_disks(self._files.storage, guest.id)
                if isinstance(exc, DriverError) and LOCK_FAILED in str(exc):
                    raise DriverError(
                        f"cannot start VM {guest.id}: {LEASE_HELD}: its disk is in use by "
                        f"another QEMU (a copy may still run on another node): {exc}"
                    ) from None
                raise
            self._domains[guest.id] = dom
            self._files.take_lease(guest.id)
        return dom.info()

    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """ACPI power button, then ``quit`` (and SIGKILL) if the guest is not off in time.

        A paused guest is resumed first, so it can act on the power button. Stopping a VM in
        ``error`` kills what may be left of its QEMU and marks it stopped."""
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "stop", _ACTIVE | {VMState.ERROR})
        if dom.state is VMState.ERROR:
            await self._guests.end_leftover(dom)
            self._guests.set_ended(dom, VMState.STOPPED, None)
            return
        monitor = self._guests.monitor(dom)
        dom.expect_exit = True
        halting = False
        try:
            if not hard:
                await self._power_off(dom, monitor, timeout)
            halting = True
            await self._guests.halt(dom)
        except asyncio.CancelledError:
            # called off: a QEMU that ended already, or that was told to quit, is stopped
            # (the latter killed first); one that ends from now on (a guest that got the
            # power button) ends on its own, and its watcher records and reports it
            if halting or dom.exited.is_set():
                await self._guests.end_leftover(dom)
                self._guests.set_ended(dom, VMState.STOPPED, None)
            else:
                dom.expect_exit = False
            raise
        self._guests.set_ended(dom, VMState.STOPPED, None)

    async def _power_off(self, dom: Domain, monitor: Monitor, timeout: float | None) -> None:
        """Press the power button and wait up to ``timeout`` s for the guest to be off."""
        limit = self._stop_timeout if timeout is None else timeout
        try:
            if dom.state is VMState.PAUSED:
                await monitor.execute("cont")
            await monitor.execute("system_powerdown")
        except MonitorError as exc:
            log.warning("VM %s: graceful stop failed (%s); stopping it hard", dom.id, exc)
            return
        if not await self._guests.exited(dom, limit):
            log.info("VM %s did not power off within %g s; stopping it hard", dom.id, limit)

    async def destroy(self, vm_id: str) -> None:
        """Kill QEMU, remove the VM's records and, if this node runs it, its disks; a VM
        unknown here whose disks no node ever ran (a clone whose first boot failed) loses
        them too."""
        await self._consoles.drop(vm_id)
        if not await self._guests.forget(vm_id):
            if self._files.never_ran(vm_id):
                await asyncio.to_thread(catalog.remove_vm_disks, self._files.storage, vm_id)
            return
        if self._files.holds_lease(vm_id):
            await asyncio.to_thread(catalog.remove_vm_disks, self._files.storage, vm_id)
        else:
            log.info("VM %s: leaving its shared disk to the node that runs it now", vm_id)

    async def pause(self, vm_id: str) -> None:
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "pause", frozenset({VMState.RUNNING}))
        await self._guests.switch(dom, "stop", VMState.PAUSED)

    async def resume(self, vm_id: str) -> None:
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "resume", frozenset({VMState.PAUSED}))
        await self._guests.switch(dom, "cont", VMState.RUNNING)

    async def reboot(self, vm_id: str) -> None:
        """Hard reset (``system_reset``): the guest boots again in the same QEMU."""
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "reboot", frozenset({VMState.RUNNING}))
        await self._guests.monitor(dom).execute("system_reset")

    async def fence(self, vm_id: str) -> None:
        """Kill QEMU and remove the VM's records here; its shared disks stay."""
        await self._consoles.drop(vm_id)
        await self._guests.forget(vm_id)

    # live migration: see usher.vmm.qemu_migration -------------------------------------------

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        return await self._migrations.prepare_incoming(guest, listen_host)

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        return await self._migrations.migrate(vm_id, uri, timeout=timeout)

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        return await self._migrations.finish_incoming(vm_id)

    async def abort_incoming(self, vm_id: str) -> None:
        await self._migrations.abort_incoming(vm_id)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        return await self._migrations.settle_incoming(vm_id)

    # disks ----------------------------------------------------------------------------------

    async def resize_disk(self, vm_id: str, disk: int, size_gb: int) -> DomainInfo:
        """``qemu-img resize`` while QEMU does not run; QMP ``block_resize`` while it does
        (the guest sees the new size at once)."""
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "resize a disk of", _ACTIVE | {VMState.STOPPED})
        try:
            grown = dom.spec.with_disk_size(disk, size_gb)
        except IndexError as exc:
            raise DriverError(f"cannot resize a disk of VM {vm_id}: {exc}") from None
        name = catalog.data_disk_name(disk) if disk else catalog.DISK
        path = Path(self._files.shared(vm_id, name))
        try:
            if dom.state is VMState.STOPPED:
                await asyncio.to_thread(catalog.grow_disk, path, size_gb)
            else:
                await self._block_resize(dom, disk, path, size_gb)
        except catalog.ImageError as exc:
            raise DriverError(f"cannot resize disk {disk} of VM {vm_id}: {exc}") from exc
        dom.spec = grown
        self._guests.save(dom)
        return dom.info()

    async def _block_resize(self, dom: Domain, disk: int, path: Path, size_gb: int) -> None:
        current = await asyncio.to_thread(catalog.virtual_size, path)
        if size_gb * catalog.GIB < current:
            raise catalog.ImageError(
                f"{path.name} is {current / catalog.GIB:.2f} GiB: it cannot shrink to {size_gb} GiB"
            )
        if size_gb * catalog.GIB == current:
            return
        drive = f"data{disk}" if disk else "disk0"
        try:
            await self._guests.monitor(dom).execute(
                "block_resize", {"device": drive, "size": size_gb * catalog.GIB}
            )
        except MonitorError as exc:
            raise DriverError(f"cannot resize disk {disk} of VM {dom.id}: {exc}") from exc

    # snapshots and copies of disks: see usher.vmm.qemu_snapshots -----------------------------

    async def snapshot_create(self, vm_id: str, name: str) -> Snapshot:
        return await self._snapshots.create(vm_id, name)

    async def snapshot_list(self, vm_id: str) -> list[Snapshot]:
        return await self._snapshots.listed(vm_id)

    async def snapshot_revert(self, vm_id: str, name: str) -> None:
        await self._snapshots.revert(vm_id, name)

    async def snapshot_delete(self, vm_id: str, name: str) -> None:
        await self._snapshots.delete(vm_id, name)

    async def disk_usage(self, vm_id: str) -> int:
        return await self._snapshots.usage(vm_id)

    async def clone_disks(self, vm_id: str, new_vm_id: str, *, snapshot: str | None) -> None:
        await self._snapshots.clone_disks(vm_id, new_vm_id, snapshot)

    async def export_disk(self, vm_id: str, staging: str, *, snapshot: str | None) -> int:
        return await self._snapshots.export_disk(vm_id, staging, snapshot)

    # console --------------------------------------------------------------------------------

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        """Serial console output from ``offset`` on, at most
        :data:`usher.vmm.qemu_files.CONSOLE_CHUNK` bytes."""
        self._guests.get(vm_id)
        return self._files.read_console(vm_id, offset)

    async def console_end(self, vm_id: str) -> int:
        self._guests.get(vm_id)
        return self._files.console_size(vm_id)

    async def console_write(self, vm_id: str, data: bytes) -> None:
        """Through the VM's console socket (:mod:`usher.vmm.qemu_console`)."""
        dom = self._guests.get(vm_id)
        self._guests.require(dom, "type into the console of", _ACTIVE)
        await self._consoles.write(vm_id, data)
