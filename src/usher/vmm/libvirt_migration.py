"""Live migration for the ``libvirt`` driver: libvirt's managed peer-to-peer migration, in
Usher's three steps.

* ``prepare_incoming`` on the target reserves the VM's vCPUs and memory, notes the VM as
  incoming (in memory and in ``<state_dir>/incoming/<vm_id>.json``, so a restarted LNM still
  lists it ``migrating`` and can settle it) and answers a URI naming how the source's
  libvirtd reaches this one (``connect``, from the ``migrate_connect`` option), where QEMU's
  stream goes (``uri``) and this node's console socket for the VM (``console``).
* ``migrate`` on the source has its libvirtd migrate the domain to the target's
  (``virDomainMigrateToURI3``, live, peer to peer, the definition made persistent there), the
  definition rewritten for the target's console socket. libvirt finishes the migration on
  the target itself: when it returns, the VM runs there. Called off or out of time, the job
  is aborted; if the guest had arrived whole anyway, that is success.
* ``finish_incoming`` on the target checks that the domain runs here, and takes the VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import libvirt

from usher.model import VMState
from usher.vmm.base import (
    DomainInfo,
    DriverError,
    Guest,
    InvalidTransition,
    MigrationResult,
    UnknownVM,
    to_the_end,
)
from usher.vmm.libvirt_link import LibvirtFailure, message
from usher.vmm.libvirt_xml import Record, with_console_socket
from usher.vmm.qemu_argv import nics_of
from usher.vmm.qemu_files import CONSOLE_SOCKET

if TYPE_CHECKING:
    from usher.vmm.libvirt_driver import LibvirtDriver

log = logging.getLogger(__name__)

SCHEME = "libvirt"
FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    # Usher's storage is shared by its own contract (an NFSv4 mount at a site); libvirt's
    # check knows only NFS, Ceph, GFS2 and the like by their mounts, and would refuse a
    # directory it cannot classify ("Migration without shared storage is unsafe")
    | libvirt.VIR_MIGRATE_UNSAFE
)
ABORT_WAIT = 10.0
"""Seconds an aborted migration job may take to end (libvirt may hold it longer against a
target that does not answer, until its keepalive gives up)."""


@dataclass
class Incoming:
    """A VM on its way here."""

    record: Record

    def to_json(self) -> str:
        return self.record.to_json()


@dataclass(frozen=True)
class Target:
    """Where a migration goes, as the target's ``prepare_incoming`` said."""

    connect: str
    uri: str
    console: str

    def to_uri(self) -> str:
        query = urlencode({"connect": self.connect, "uri": self.uri, "console": self.console})
        return f"{SCHEME}:?{query}"

    @classmethod
    def parse(cls, uri: str) -> Target:
        parts = urlsplit(uri)
        query = parse_qs(parts.query)
        try:
            if parts.scheme != SCHEME:
                raise KeyError("scheme")
            return cls(query["connect"][0], query["uri"][0], query["console"][0])
        except (KeyError, IndexError):
            raise DriverError(f"not a libvirt migration URI: {uri!r}") from None


def _figures(stats: dict[str, Any], total_ms: float) -> MigrationResult:
    downtime = stats.get("downtime")
    data = stats.get("data_processed") or stats.get("memory_processed")
    return MigrationResult(
        total_ms=total_ms,
        downtime_ms=float(downtime) if downtime is not None else None,
        transferred_bytes=int(data) if data is not None else None,
        extra={"libvirt_time_ms": stats.get("time_elapsed")},
    )


def _retrieved(job: asyncio.Future[Any]) -> None:
    """Take a finished job's outcome, so that one nobody awaits any more logs no warning."""
    if not job.cancelled():
        job.exception()


class Migrations:
    """The live migrations of one :class:`LibvirtDriver`."""

    def __init__(
        self, driver: LibvirtDriver, *, connect: str, downtime_ms: int, bandwidth_mbps: int
    ) -> None:
        self._driver = driver
        self._connect = connect
        self._downtime_ms = downtime_ms
        self._bandwidth = bandwidth_mbps
        self.incoming: dict[str, Incoming] = {}

    # the journal of incoming VMs --------------------------------------------------------------

    def _journal(self, vm_id: str = "") -> str:
        return os.path.join(str(self._driver.state_dir), "incoming", vm_id)

    def load(self) -> None:
        """The incoming VMs an earlier LNM noted (it prepared them and was not told more)."""
        os.makedirs(self._journal(), exist_ok=True)
        for name in sorted(os.listdir(self._journal())):
            try:
                with open(self._journal(name), encoding="utf-8") as file:
                    record = Record.from_json(file.read())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring incoming note %s: %s", self._journal(name), exc)
                continue
            self.incoming[record.id] = Incoming(record)

    def _note(self, incoming: Incoming) -> None:
        path = self._journal(incoming.record.id)
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            file.write(incoming.to_json())
        os.replace(f"{path}.tmp", path)

    def _drop(self, vm_id: str) -> None:
        self.incoming.pop(vm_id, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._journal(vm_id))

    # the target -------------------------------------------------------------------------------

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        driver = self._driver
        if guest.id in driver.records or guest.id in self.incoming:
            raise DriverError(f"VM {guest.id} is on this node already")
        if guest.image is None:
            raise DriverError(f"cannot receive VM {guest.id}: its image is not in the catalogue")
        record = Record(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            image=guest.image,
            nics=nics_of(guest.id, guest.spec.nics),
            seed=guest.config is not None,
            meta=dict(guest.meta),
        )
        async with driver.claim(guest.id, guest.spec):
            incoming = Incoming(record)
            os.makedirs(driver.files.local(guest.id), exist_ok=True)
            self._note(incoming)
            self.incoming[guest.id] = incoming
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        return Target(
            connect=self._connect.format(host=host),
            uri=f"tcp://{host}",
            console=driver.files.local(guest.id, CONSOLE_SOCKET),
        ).to_uri()

    async def _arrived(self, vm_id: str) -> bool:
        """The incoming VM's domain runs here, its whole state arrived."""
        dom = await self._driver.link.lookup(vm_id)
        if dom is None:
            return False
        try:
            state, reason = await self._driver.link.call(dom.state)
        except LibvirtFailure:
            return False
        if state == libvirt.VIR_DOMAIN_PAUSED:
            return reason not in (
                libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
                libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
                libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
            )
        return state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)

    def _incoming(self, vm_id: str, action: str) -> Incoming:
        incoming = self.incoming.get(vm_id)
        if incoming is None:
            if vm_id in self._driver.records:
                raise InvalidTransition(vm_id, VMState.RUNNING, action)
            raise UnknownVM(vm_id)
        return incoming

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        incoming = self._incoming(vm_id, "finish the migration of")
        if not await self._arrived(vm_id):
            raise DriverError(f"VM {vm_id} has not arrived whole: its migration did not complete")
        self._drop(vm_id)
        self._driver.arrived(incoming)
        return await self._driver.info(vm_id)

    async def abort_incoming(self, vm_id: str) -> None:
        await to_the_end(self._abort_incoming(vm_id))

    async def _abort_incoming(self, vm_id: str) -> None:
        if vm_id not in self.incoming:
            if vm_id in self._driver.records:
                raise InvalidTransition(vm_id, VMState.RUNNING, "abort the migration of")
            return
        dom = await self._driver.link.lookup(vm_id)
        if dom is not None:
            with self._driver.expecting_end(vm_id):
                await self._driver.remove_domain(vm_id, dom)
        self._drop(vm_id)
        self._driver.left(vm_id)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        self._incoming(vm_id, "settle the migration of")
        if await self._arrived(vm_id):
            return await self.finish_incoming(vm_id)
        await self.abort_incoming(vm_id)
        return None

    # the source -------------------------------------------------------------------------------

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        driver = self._driver
        target = Target.parse(uri)
        dom = await driver.domain(vm_id)
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        live = await driver.run(vm_id, "migrate", dom.XMLDesc, flags)
        persistent = await driver.run(
            vm_id, "migrate", dom.XMLDesc, flags | libvirt.VIR_DOMAIN_XML_INACTIVE
        )
        params = {
            libvirt.VIR_MIGRATE_PARAM_URI: target.uri,
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: with_console_socket(live, target.console),
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: with_console_socket(persistent, target.console),
            libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: self._bandwidth,
        }
        with contextlib.suppress(LibvirtFailure):
            await driver.link.call(dom.migrateSetMaxDowntime, self._downtime_ms, 0)
        started = time.monotonic()
        job = driver.link.submit(dom.migrateToURI3, target.connect, params, FLAGS)
        job.add_done_callback(_retrieved)  # a job given up on may still fail later
        try:
            done, _ = await asyncio.wait([job], timeout=timeout)
        except asyncio.CancelledError:
            with contextlib.suppress(DriverError):  # the cancellation goes on, whatever came
                if await self._call_off(dom, job):
                    await self._let_go(vm_id, dom)
            raise
        if not done and not await self._call_off(dom, job):
            raise DriverError(f"live migration of VM {vm_id} timed out after {timeout:g} s")
        total_ms = (time.monotonic() - started) * 1000
        error = job.exception()
        if error is not None and not await self._gone(dom):
            text = message(error) if isinstance(error, libvirt.libvirtError) else repr(error)
            raise DriverError(f"live migration of VM {vm_id} failed: {text}")
        stats: dict[str, Any] = {}
        with contextlib.suppress(LibvirtFailure):
            stats = await driver.link.call(dom.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        await self._let_go(vm_id, dom)
        return _figures(stats, total_ms)

    async def _call_off(self, dom: libvirt.virDomain, job: asyncio.Future[Any]) -> bool:
        """Abort the migration job and wait for it to end; True if the guest left anyway."""
        with contextlib.suppress(LibvirtFailure):
            await self._driver.link.call(dom.abortJob)
        await asyncio.wait([job], timeout=ABORT_WAIT)
        if not job.done():
            raise DriverError(f"VM {dom.name()}: its migration did not end when aborted")
        return job.exception() is None or await self._gone(dom)

    async def left_meanwhile(self, dom: libvirt.virDomain) -> bool:
        """Whether ``dom`` (found at open) is shut off because it migrated: its libvirtd
        finished a migration while no LNM ran here, and the guest is the target's. (A domain
        whose state cannot be read is not taken for gone.)"""
        try:
            state, reason = await self._driver.link.call(dom.state)
        except LibvirtFailure:
            return False
        return state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED

    async def forget_source(self, vm_id: str, dom: libvirt.virDomain) -> None:
        """Undefine the domain a migration left here (its disks are the target's)."""
        await self._let_go(vm_id, dom)

    async def _gone(self, dom: libvirt.virDomain) -> bool:
        """The domain here is off because it migrated (its guest runs on the target)."""
        try:
            state, reason = await self._driver.link.call(dom.state)
        except LibvirtFailure:
            return True
        return state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED

    async def _let_go(self, vm_id: str, dom: libvirt.virDomain) -> None:
        """Forget a VM that migrated away: undefine its (shut off) domain here."""
        with self._driver.expecting_end(vm_id), contextlib.suppress(LibvirtFailure):
            await self._driver.link.call(dom.undefine)
        self._driver.left(vm_id)
