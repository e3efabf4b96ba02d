"""The ``libvirt`` VMM driver: every VM is a persistent libvirt domain (libvirt-python).

libvirt runs the hypervisor (QEMU/KVM here; Xen through ``xen:///system``, untested) and
keeps the truth about each guest; this driver adds what Usher expects of a node:

* **Domains are persistent**, named by the VM's id, and carry Usher's record of the VM in
  their ``<metadata>`` (:mod:`usher.vmm.libvirt_xml`, the one place the XML is written). A
  stopped VM stays defined, so ``virsh list --all`` shows what Usher runs, and an LNM that
  restarts finds every VM, running or not, in libvirt itself (:meth:`LibvirtDriver.open`).
  Domains without Usher's metadata are the site's own: never listed, never touched.
* **Disks** are the qemu driver's, in the shared storage (:mod:`usher.images.catalog`), with
  the same ``node`` file naming the node that runs the VM (only it removes the disks).
* **The console** is the qemu driver's too: a Unix socket server in the VM's local dir whose
  output is appended to the shared ``console.log`` (``<log append='on'>``), typed into by
  :class:`usher.vmm.qemu_console.Consoles`. (libvirtd with ``stdio_handler = "logd"``, its
  default, has virtlogd write the log: virtlogd must then run.)
* **Ends nobody asked for** come as libvirt lifecycle events and go to ``on_state_change``:
  a guest that powered off is ``stopped``, a crashed or killed QEMU ``error``.
* **Live migration** is libvirt's managed peer-to-peer migration
  (:mod:`usher.vmm.libvirt_migration`).

Options (``usher lnm --driver libvirt --driver-option KEY=JSON``):

* ``uri``: the libvirt connection (default ``qemu:///system``; a Xen host sets
  ``xen:///system``).
* ``domain_type``: ``kvm`` or ``qemu`` (TCG); default ``auto``, KVM where it works
  (:mod:`usher.vmm.qemu_accel`).
* ``storage_dir``, ``bridge``, ``vcpus``, ``memory_mb``, ``stop_timeout``: as the qemu
  driver's.
* ``migrate_connect`` (default ``qemu+tls://{host}/system``): how another node's libvirtd
  reaches this one for a live migration to it, ``{host}`` being the address the controller
  gave (``listen_host``); ``migrate_downtime_ms`` (default 300) and
  ``migrate_bandwidth_mbps`` (MiB/s, default 1024).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from usher.images import catalog
from usher.model import LEASE_HELD, Capability, Image, VMSpec, VMState
from usher.vmm.base import (
    DomainInfo,
    Driver,
    DriverError,
    Guest,
    InvalidTransition,
    MigrationResult,
    UnknownVM,
    to_the_end,
)
from usher.vmm.capacity import require_room
from usher.vmm.libvirt_link import LibvirtFailure, Link
from usher.vmm.libvirt_migration import Incoming, Migrations
from usher.vmm.libvirt_xml import (
    NAMESPACE,
    PREFIX,
    Paths,
    Record,
    domain_xml,
    metadata_xml,
    record_of_metadata,
)
from usher.vmm.qemu import DEFAULT_STORAGE, LOCK_FAILED, host_memory_mb
from usher.vmm.qemu_accel import DEFAULT_BINARY, detect_accel
from usher.vmm.qemu_argv import kernel_boot, nics_of
from usher.vmm.qemu_console import Consoles
from usher.vmm.qemu_files import CONSOLE, CONSOLE_SOCKET, SEED, VMFiles
from usher.vmm.qemu_seed import write_seed_file

log = logging.getLogger(__name__)

ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
MAX_NAME = 255
"""Longest guest name (it is the domain's title, and goes on a kernel command line)."""
POLL = 0.05
"""Seconds between looks at a guest that is powering off."""
EXPECTED_END_GRACE = 5.0
"""Seconds an operation's end of a guest is still expected after the operation returned
(libvirt's event may come a little later)."""
STATS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL


def state_of(state: int, reason: int, record: Record) -> tuple[VMState, str | None]:
    """A VM's state from its domain's libvirt state and reason."""
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return VMState.RUNNING, None
    if state == libvirt.VIR_DOMAIN_SHUTDOWN:
        return VMState.RUNNING, "shutting down"
    if state in (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PMSUSPENDED):
        if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
            return VMState.PAUSED, "paused by a disk I/O error"
        return VMState.PAUSED, None
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return VMState.ERROR, "the guest crashed"
    if state == libvirt.VIR_DOMAIN_SHUTOFF and not record.crash_seen:
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
            return VMState.ERROR, "QEMU ended unexpectedly (crashed or killed)"
        if reason == libvirt.VIR_DOMAIN_SHUTOFF_FAILED:
            return VMState.ERROR, "QEMU failed to start"
    return VMState.STOPPED, None


def _ending(event: int, detail: int) -> tuple[VMState, str] | None:
    """What an unasked-for lifecycle event means, or None for one that ends nothing."""
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return VMState.ERROR, "the guest crashed"
    if event != libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return None
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
        return VMState.STOPPED, "guest powered off"
    if detail in (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED,
    ):
        return None
    if detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
        return VMState.STOPPED, "powered off outside Usher (virDomainDestroy)"
    return VMState.ERROR, "QEMU ended unexpectedly (crashed or killed)"


@dataclass(eq=False)
class Expectation:
    """An operation's end of a guest, expected until its event comes (or for
    :data:`EXPECTED_END_GRACE` s after the operation, if none does)."""

    done: bool = False
    """The operation is over (a new boot of the guest drops what it expected)."""


class LibvirtDriver(Driver):
    """Guests as persistent libvirt domains; see the module documentation for the options."""

    name = "libvirt"
    capabilities = frozenset(
        {
            Capability.PAUSE,
            Capability.REBOOT,
            Capability.LIVE_MIGRATE,
            Capability.CONSOLE,
            Capability.CONSOLE_INPUT,
            Capability.RESIZE_DISK,
        }
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.state_dir is None:
            raise DriverError("the libvirt driver needs a state directory")
        opts = self.options
        self._domain_type = str(opts.get("domain_type", "auto"))
        if self._domain_type not in ("auto", "kvm", "qemu"):
            raise DriverError(
                f"libvirt driver: domain_type must be auto, kvm or qemu, not {self._domain_type!r}"
            )
        self._bridge = opts.get("bridge") or None
        self._stop_timeout = float(opts.get("stop_timeout", 30.0))
        self._vcpus = int(opts.get("vcpus") or os.cpu_count() or 1)
        self._memory_mb = int(opts.get("memory_mb") or host_memory_mb())
        node = f"{socket.gethostname()}:{os.path.realpath(self.state_dir)}"
        self.files = VMFiles(
            os.path.join(self.state_dir, "vms"),
            str(opts.get("storage_dir") or DEFAULT_STORAGE),
            node,
        )
        self.link = Link(str(opts.get("uri", "qemu:///system")), self._lifecycle)
        self.records: dict[str, Record] = {}
        self._claims: dict[str, VMSpec] = {}
        self._claim_lock = asyncio.Lock()
        self._expected: dict[str, list[Expectation]] = {}
        self._reports: set[asyncio.Future[None]] = set()
        self._consoles = Consoles(self.files)
        self._migrations = Migrations(
            self,
            connect=str(opts.get("migrate_connect", "qemu+tls://{host}/system")),
            downtime_ms=int(opts.get("migrate_downtime_ms", 300)),
            bandwidth_mbps=int(float(opts.get("migrate_bandwidth_mbps", 1024))),
        )

    # life cycle of the driver ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect to libvirtd and find every domain of Usher's (running or not) and every
        incoming migration an earlier LNM prepared."""
        os.makedirs(self.files.vms_dir, exist_ok=True)
        if self._domain_type == "auto":
            choice = await asyncio.to_thread(detect_accel, DEFAULT_BINARY)
            self._domain_type = "kvm" if choice.accel == "kvm" else "qemu"
        await self.link.open()
        try:
            domains = await self.link.call(self.link.conn.listAllDomains, 0)
        except LibvirtFailure as exc:
            raise DriverError(f"libvirt at {self.link.uri}: {exc}") from exc
        for dom in domains:
            record = await self._record_of(dom)
            if record is None:
                continue
            if await self._migrations.left_meanwhile(dom):
                log.warning("VM %s migrated away while the LNM was not running", record.id)
                await self._migrations.forget_source(record.id, dom)
                continue
            self.records[record.id] = record
        self._migrations.load()

    async def close(self) -> None:
        """Disconnect; the domains run on, and the next :meth:`open` finds them."""
        await self._consoles.close()
        await self.link.close()

    async def _record_of(self, dom: libvirt.virDomain) -> Record | None:
        try:
            xml = await self.link.call(
                dom.metadata, libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0
            )
        except LibvirtFailure:
            return None  # no Usher metadata: the site's own domain
        try:
            return record_of_metadata(xml)
        except ValueError as exc:
            log.warning("ignoring domain %s: %s", dom.name(), exc)
            return None

    # inventory ------------------------------------------------------------------------------

    async def _stats(self) -> dict[str, dict[str, Any]]:
        """Every domain's libvirt state, reason and CPU time, by name (one call)."""
        try:
            found = await self.link.call(self.link.conn.getAllDomainStats, STATS, 0)
        except LibvirtFailure as exc:
            raise DriverError(f"libvirt at {self.link.uri}: {exc}") from exc
        return {dom.name(): stats for dom, stats in found}

    def _info(self, record: Record, stats: dict[str, Any] | None) -> DomainInfo:
        if record.id in self._migrations.incoming:
            state, reason = VMState.MIGRATING, None
        elif stats is None:
            state, reason = VMState.ERROR, "its libvirt domain is gone"
        else:
            state, reason = state_of(stats["state.state"], stats["state.reason"], record)
        cpu = stats.get("cpu.time", 0) / 1e9 if stats and state in ACTIVE else 0.0
        return DomainInfo(
            id=record.id,
            name=record.name,
            spec=record.spec,
            state=state,
            reason=reason,
            meta=record.meta,
            cpu_seconds=cpu,
            memory_used_mb=float(record.spec.memory_mb) if state in ACTIVE else 0.0,
        )

    async def list(self) -> list[DomainInfo]:
        stats = await self._stats()
        known = dict(self.records)
        known.update({vm_id: i.record for vm_id, i in self._migrations.incoming.items()})
        return [self._info(record, stats.get(vm_id)) for vm_id, record in known.items()]

    async def info(self, vm_id: str) -> DomainInfo:
        incoming = self._migrations.incoming.get(vm_id)
        record = incoming.record if incoming else self.records.get(vm_id)
        if record is None:
            raise UnknownVM(vm_id)
        return self._info(record, await self._stats_of(vm_id))

    async def _stats_of(self, vm_id: str) -> dict[str, Any] | None:
        """One domain's libvirt state, reason and CPU time (None: libvirt has no such
        domain): two short calls, where :meth:`_stats` reads every domain of the host."""
        dom = await self.link.lookup(vm_id)
        if dom is None:
            return None
        try:
            found = await self.link.call(self.link.conn.domainListGetStats, [dom], STATS, 0)
        except LibvirtFailure as exc:
            raise DriverError(f"libvirt at {self.link.uri}: {exc}") from exc
        return found[0][1] if found else None

    async def _state(self, vm_id: str, action: str, allowed: frozenset[VMState]) -> VMState:
        """The VM's state, if it is one of ``allowed``; InvalidTransition otherwise."""
        state = (await self.info(vm_id)).state
        if state not in allowed:
            raise InvalidTransition(vm_id, state, action)
        return state

    async def domain(self, vm_id: str) -> libvirt.virDomain:
        dom = await self.link.lookup(vm_id)
        if dom is None:
            raise DriverError(f"VM {vm_id}: its libvirt domain is gone")
        return dom

    async def run(self, vm_id: str, action: str, function: Any, *args: Any) -> Any:
        """``function(*args)`` (a libvirt call) through the link, its error a DriverError."""
        try:
            return await self.link.call(function, *args)
        except LibvirtFailure as exc:
            raise DriverError(f"cannot {action} VM {vm_id}: {exc}") from exc

    # capacity -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claim(self, vm_id: str, spec: VMSpec) -> AsyncIterator[None]:
        """Hold ``spec``'s vCPUs and memory while a VM boots or comes in, so concurrent ones
        cannot overbook the host; a booted VM holds them by being active."""
        async with self._claim_lock:
            held = {k: s for k, s in self._claims.items() if k != vm_id}
            held.update({k: i.record.spec for k, i in self._migrations.incoming.items()})
            stats = await self._stats()
            for other, record in self.records.items():
                found = stats.get(other)
                if other != vm_id and found and self._info(record, found).state in ACTIVE:
                    held[other] = record.spec
            held.pop(vm_id, None)
            require_room(vm_id, spec, held.values(), vcpus=self._vcpus, memory_mb=self._memory_mb)
            self._claims[vm_id] = spec
        try:
            yield
        finally:
            del self._claims[vm_id]

    # the domain's definition ----------------------------------------------------------------

    def paths(self, record: Record, console_socket: str | None = None) -> Paths:
        storage = self.files.storage
        return Paths(
            disk=self.files.shared(record.id, catalog.DISK),
            data_disks=tuple(
                self.files.shared(record.id, catalog.data_disk_name(index))
                for index in range(1, len(record.spec.disks) + 1)
            ),
            console_log=self.files.shared(record.id, CONSOLE),
            console_socket=console_socket or self.files.local(record.id, CONSOLE_SOCKET),
            seed=self.files.shared(record.id, SEED) if record.seed else None,
            kernel=kernel_boot(storage, record.image, record.name),
        )

    def xml(self, record: Record, console_socket: str | None = None) -> str:
        return domain_xml(
            record,
            self.paths(record, console_socket),
            domain_type=self._domain_type,
            default_bridge=self._bridge,
        )

    async def save(self, dom: libvirt.virDomain, record: Record) -> None:
        """Write ``record`` into the domain's metadata (its definition, and the running
        domain's too when it runs)."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if await self.link.call(dom.isActive):
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        await self.run(
            record.id,
            "record",
            dom.setMetadata,
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            metadata_xml(record),
            PREFIX,
            NAMESPACE,
            flags,
        )

    # ends of guests -------------------------------------------------------------------------

    @contextlib.contextmanager
    def expecting_end(self, vm_id: str) -> Any:
        """While this runs (and shortly after), the guest's end is the caller's doing: its
        lifecycle event reports nothing."""
        token = Expectation()
        self._expected.setdefault(vm_id, []).append(token)
        try:
            yield
        finally:
            token.done = True
            loop = asyncio.get_running_loop()
            loop.call_later(EXPECTED_END_GRACE, self._unexpect, vm_id, token)

    def _unexpect(self, vm_id: str, token: Expectation | None = None) -> None:
        """Drop ``token`` (None: the oldest expectation, which an end used up)."""
        tokens = self._expected.get(vm_id, [])
        if token is None and tokens:
            tokens.pop(0)
        elif token in tokens:
            tokens.remove(token)
        if not tokens:
            self._expected.pop(vm_id, None)

    def _lifecycle(self, name: str, event: int, detail: int) -> None:
        """A domain event from libvirt (in the loop): report an end nobody asked for. An end
        an operation caused uses up its expectation; a new boot drops what is left of them,
        so a crash right after an operation is reported all the same."""
        if name not in self.records or name in self._migrations.incoming:
            return
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:  # what finished operations expected
            left = [token for token in self._expected.get(name, []) if not token.done]
            self._expected[name] = left
            self._unexpect(name, Expectation())  # (drops the entry if none is left)
            return
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and name in self._expected:
            self._unexpect(name)
            return
        ending = _ending(event, detail)
        if ending is not None:
            log.info("VM %s ended: %s", name, ending[1])
            report = asyncio.ensure_future(self.on_state_change(name, *ending))
            self._reports.add(report)
            report.add_done_callback(self._reports.discard)

    # operations -----------------------------------------------------------------------------

    async def start(self, guest: Guest) -> DomainInfo:
        """Define the domain (anew, from ``guest``) and boot it."""
        old = self.records.get(guest.id)
        if guest.id in self._migrations.incoming:
            raise InvalidTransition(guest.id, VMState.MIGRATING, "start")
        if old is not None:
            await self._state(guest.id, "start", STARTABLE)
        if not guest.name.isprintable() or len(guest.name) > MAX_NAME:
            raise DriverError(
                f"cannot start VM {guest.id}: its name must be at most {MAX_NAME} printable "
                "characters"
            )
        image: Image | None = guest.image or (old.image if old else None)
        if image is None:
            raise DriverError(
                f"cannot start VM {guest.id}: image {guest.spec.image!r} is not in the catalogue"
            )
        record = Record(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            image=image,
            nics=nics_of(guest.id, guest.spec.nics),
            seed=guest.config is not None,
            meta=dict(guest.meta),
        )
        async with self.claim(guest.id, guest.spec):
            disk_was_there = self.files.has_disk(guest.id)
            try:
                if not disk_was_there:
                    await asyncio.to_thread(
                        catalog.create_vm_disks, self.files.storage, image, guest.id, guest.spec
                    )
            except catalog.ImageError as exc:
                raise DriverError(f"cannot start VM {guest.id}: {exc}") from exc
            old_xml = None
            found = await self.link.lookup(guest.id) if old is not None else None
            if found is not None:  # (a domain undefined by hand is defined anew)
                old_xml = await self.run(guest.id, "read", found.XMLDesc, 0)
            try:
                os.makedirs(self.files.local(guest.id), exist_ok=True)
                if record.seed:
                    await write_seed_file(self.files, guest)
                dom = await self.run(guest.id, "define", self.link.conn.defineXML, self.xml(record))
                await self.run(guest.id, "start", dom.create)
            except BaseException as exc:
                await self._undo_start(guest.id, old_xml, disk_was_there)
                if isinstance(exc, DriverError) and LOCK_FAILED in str(exc):
                    raise DriverError(
                        f"cannot start VM {guest.id}: {LEASE_HELD}: its disk is in use by "
                        f"another QEMU (a copy may still run on another node): {exc}"
                    ) from None
                raise
            self.records[guest.id] = record
            self.files.take_lease(guest.id)
        return await self.info(guest.id)

    async def _undo_start(self, vm_id: str, old_xml: str | None, disk_was_there: bool) -> None:
        """Leave a VM whose start failed (or was called off) as it was: off, its earlier
        definition back, or no trace of a new one."""
        dom = await self.link.lookup(vm_id)
        if dom is not None:
            with self.expecting_end(vm_id), contextlib.suppress(LibvirtFailure):
                if await self.link.call(dom.isActive):
                    await self.link.call(dom.destroy)
            with contextlib.suppress(LibvirtFailure):
                if old_xml is not None:
                    await self.link.call(self.link.conn.defineXML, old_xml)
                else:
                    await self.link.call(dom.undefine)
        if old_xml is None:
            shutil.rmtree(self.files.local(vm_id), ignore_errors=True)
            if not disk_was_there:
                await asyncio.to_thread(catalog.remove_vm_disks, self.files.storage, vm_id)

    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """ACPI power button (a paused guest is resumed first), then ``destroy`` if the
        guest is not off in time. Stopping a VM in ``error`` marks it stopped."""
        state = await self._state(vm_id, "stop", ACTIVE | {VMState.ERROR})
        dom = await self.domain(vm_id)
        record = self.records[vm_id]
        with self.expecting_end(vm_id):
            if state is VMState.ERROR:
                if await self.link.call(dom.isActive):
                    await self.run(vm_id, "stop", dom.destroy)
                record.crash_seen = True
                await self.save(dom, record)
                return
            if not hard:
                await self._power_off(vm_id, dom, state, timeout)
            if await self.link.call(dom.isActive):
                try:
                    await self.link.call(dom.destroy)
                except LibvirtFailure as exc:
                    if await self.link.call(dom.isActive):
                        raise DriverError(f"cannot stop VM {vm_id}: {exc}") from exc

    async def _power_off(
        self, vm_id: str, dom: libvirt.virDomain, state: VMState, timeout: float | None
    ) -> None:
        limit = self._stop_timeout if timeout is None else timeout
        try:
            if state is VMState.PAUSED:
                await self.link.call(dom.resume)
            await self.link.call(dom.shutdown)
        except LibvirtFailure as exc:
            log.warning("VM %s: graceful stop failed (%s); stopping it hard", vm_id, exc)
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if not await self.link.call(dom.isActive):
                return
            await asyncio.sleep(POLL)
        log.info("VM %s did not power off within %g s; stopping it hard", vm_id, limit)

    async def destroy(self, vm_id: str) -> None:
        """Destroy and undefine the domain, and remove its disks if this node runs it; a VM
        unknown here whose disks no node ever ran (a clone whose first boot failed) loses
        them too. Called off, it still ends (in a moment: libvirt's calls are short), as
        if it had not been."""
        await to_the_end(self._destroy(vm_id))

    async def _destroy(self, vm_id: str) -> None:
        if vm_id in self._migrations.incoming:
            await self.abort_incoming(vm_id)
            return
        if not await self._forget(vm_id):
            if self.files.never_ran(vm_id):
                await asyncio.to_thread(catalog.remove_vm_disks, self.files.storage, vm_id)
            return
        disk = Path(self.files.shared(vm_id, catalog.DISK))
        if not self.files.holds_lease(vm_id):
            log.info("VM %s: leaving its shared disk to the node that runs it now", vm_id)
        elif disk.exists() and await asyncio.to_thread(catalog.disk_in_use, disk):
            log.warning("VM %s: its disk is in use by a QEMU elsewhere: left alone", vm_id)
        else:
            await asyncio.to_thread(catalog.remove_vm_disks, self.files.storage, vm_id)

    async def fence(self, vm_id: str) -> None:
        """Destroy and undefine the domain here; its shared disks stay. Called off, it still
        ends, as :meth:`destroy` does."""
        if vm_id in self._migrations.incoming:
            await self.abort_incoming(vm_id)
            return
        await to_the_end(self._forget(vm_id))

    async def _forget(self, vm_id: str) -> bool:
        """Power off and undefine the VM's domain here; False if this node has no such VM."""
        await self._consoles.drop(vm_id)
        record = self.records.get(vm_id)
        if record is None:
            return False
        dom = await self.link.lookup(vm_id)
        if dom is not None:
            with self.expecting_end(vm_id):
                await self.remove_domain(vm_id, dom)
        del self.records[vm_id]
        shutil.rmtree(self.files.local(vm_id), ignore_errors=True)
        return True

    async def remove_domain(self, vm_id: str, dom: libvirt.virDomain) -> None:
        """Destroy (if it runs) and undefine ``dom``."""
        try:
            if await self.link.call(dom.isActive):
                await self.link.call(dom.destroy)
            await self.link.call(dom.undefine)
        except LibvirtFailure as exc:
            if exc.code != libvirt.VIR_ERR_NO_DOMAIN:
                raise DriverError(f"cannot remove VM {vm_id}: {exc}") from exc

    async def pause(self, vm_id: str) -> None:
        await self._state(vm_id, "pause", frozenset({VMState.RUNNING}))
        await self.run(vm_id, "pause", (await self.domain(vm_id)).suspend)

    async def resume(self, vm_id: str) -> None:
        await self._state(vm_id, "resume", frozenset({VMState.PAUSED}))
        await self.run(vm_id, "resume", (await self.domain(vm_id)).resume)

    async def reboot(self, vm_id: str) -> None:
        """Hard reset: the guest boots again in the same QEMU."""
        await self._state(vm_id, "reboot", frozenset({VMState.RUNNING}))
        await self.run(vm_id, "reboot", (await self.domain(vm_id)).reset, 0)

    # live migration: see usher.vmm.libvirt_migration ----------------------------------------

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        return await self._migrations.prepare_incoming(guest, listen_host)

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        await self._state(vm_id, "migrate", ACTIVE)
        return await self._migrations.migrate(vm_id, uri, timeout=timeout)

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        return await self._migrations.finish_incoming(vm_id)

    async def abort_incoming(self, vm_id: str) -> None:
        await self._migrations.abort_incoming(vm_id)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        return await self._migrations.settle_incoming(vm_id)

    def arrived(self, incoming: Incoming) -> None:
        """An incoming VM runs here now: it is this node's."""
        self.records[incoming.record.id] = incoming.record
        self.files.take_lease(incoming.record.id)

    def left(self, vm_id: str) -> None:
        """A VM migrated away: this node knows it no more (its disks are the target's)."""
        self.records.pop(vm_id, None)
        shutil.rmtree(self.files.local(vm_id), ignore_errors=True)

    # disks ----------------------------------------------------------------------------------

    async def resize_disk(self, vm_id: str, disk: int, size_gb: int) -> DomainInfo:
        """``qemu-img resize`` while the domain is off; ``virDomainBlockResize`` while it
        runs (the guest sees the new size at once)."""
        state = await self._state(vm_id, "resize a disk of", ACTIVE | {VMState.STOPPED})
        record = self.records[vm_id]
        try:
            grown = record.spec.with_disk_size(disk, size_gb)
        except IndexError as exc:
            raise DriverError(f"cannot resize a disk of VM {vm_id}: {exc}") from None
        name = catalog.data_disk_name(disk) if disk else catalog.DISK
        path = Path(self.files.shared(vm_id, name))
        dom = await self.domain(vm_id)
        try:
            if state is VMState.STOPPED:
                await asyncio.to_thread(catalog.grow_disk, path, size_gb)
            else:
                current = await asyncio.to_thread(catalog.virtual_size, path)
                if size_gb * catalog.GIB < current:
                    raise catalog.ImageError(
                        f"{name} is {current / catalog.GIB:.2f} GiB: "
                        f"it cannot shrink to {size_gb} GiB"
                    )
                if size_gb * catalog.GIB > current:
                    await self.run(
                        vm_id,
                        "resize a disk of",
                        dom.blockResize,
                        str(path),
                        size_gb * catalog.GIB,
                        libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES,
                    )
        except catalog.ImageError as exc:
            raise DriverError(f"cannot resize disk {disk} of VM {vm_id}: {exc}") from exc
        record.spec = grown
        await self.save(dom, record)
        return await self.info(vm_id)

    # console --------------------------------------------------------------------------------

    def _known(self, vm_id: str) -> None:
        if vm_id not in self.records and vm_id not in self._migrations.incoming:
            raise UnknownVM(vm_id)

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        self._known(vm_id)
        return self.files.read_console(vm_id, offset)

    async def console_end(self, vm_id: str) -> int:
        self._known(vm_id)
        return self.files.console_size(vm_id)

    async def console_write(self, vm_id: str, data: bytes) -> None:
        await self._state(vm_id, "type into the console of", ACTIVE)
        await self._consoles.write(vm_id, data)
