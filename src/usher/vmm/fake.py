"""The ``fake`` VMM driver: an honest in-memory hypervisor for tests and scale runs.

It keeps a table of simulated guests and enforces what a real hypervisor would: the state
machine, the host's vCPU and memory capacity, and live migration between two drivers. It costs
a dict entry per VM (no task or thread per VM), so one process can simulate 10,000 VMs.

Options (``options`` dict):

* ``vcpus``, ``memory_mb``, ``disk_gb``: the host's capacity (default 64, 262144, 1024).
* ``latency``: seconds every operation takes, or a dict from action name (see
  :data:`ACTIONS`) to seconds; default 0.
* ``fail``: the probability (0..1) that an action raises ``DriverError("simulated failure …")``,
  or a dict of them by action name, for fault injection; ``seed`` seeds its RNG.
* ``capabilities``: what this simulated hypervisor declares it can do (names of
  :class:`~usher.model.Capability`; default all), to play a more limited one. (The
  controller reads an empty list as "not declared", and then lets everything through.)
* ``disk_usage_mb``: the guest data each simulated guest's disks hold (default 64), which
  is what each of its snapshots holds (:mod:`usher.vmm.fake_snapshots`).
* ``storage_dir``: the shared storage; with a ``state_dir`` too, guests hold disk leases in it
  (:mod:`usher.vmm.lease`), as QEMU's image locks do: a guest cannot start while another
  host's copy holds the VM's disk. ``lease_ttl`` (default 10 s): how long a host's leases
  outlive its last renewal (its LNM renews them while it runs).

With a ``state_dir`` the table lives in ``<state_dir>/fake-vms.json`` plus a journal of every
change since (:mod:`usher.vmm.fake_journal`), loaded by :meth:`FakeDriver.open`: a restarted
or killed LNM finds its guests still running, as it would hypervisor processes that outlive it.

A guest's console prints what happens to it (boot, state changes, its cloud-init seed), and
what is typed into it (``console_write``) goes to a tiny shell that echoes and answers
(:mod:`usher.vmm.fake_console`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from usher.model import Capability, Capacity, Snapshot, VMState, now
from usher.vmm.base import (
    DomainInfo,
    Driver,
    DriverError,
    Guest,
    InvalidTransition,
    MigrationResult,
    UnknownVM,
)
from usher.vmm.fake_capacity import HostCapacity
from usher.vmm.fake_console import type_into
from usher.vmm.fake_domain import (
    ACTIVE,
    CPU_LOAD,
    INCOMING,
    MEMORY_LOAD,
    PAUSED,
    RESERVING,
    RESIZABLE,
    RUNNING,
    STARTABLE,
    FakeDomain,
    cloud_init_report,
)
from usher.vmm.fake_faults import ACTIONS, Faults
from usher.vmm.fake_journal import JOURNAL_MIN, Journal
from usher.vmm.fake_snapshots import FakeSnapshots
from usher.vmm.fake_wire import Incoming, send
from usher.vmm.lease import Guests, LeaseHeld, Leases

__all__ = ["ACTIONS", "CPU_LOAD", "JOURNAL_MIN", "MEMORY_LOAD", "FakeDriver"]

log = logging.getLogger(__name__)

DOWNTIME_FRACTION = 0.1
"""Share of a live migration's time during which the guest is frozen."""


def _target_of(uri: str, vm_id: str) -> tuple[str, int, str]:
    """The host, port and nonce of a ``fake://<host>:<port>/<vm_id>?to=<nonce>`` URI."""
    try:
        parts = urlsplit(uri)
        port = parts.port
        nonce = parse_qs(parts.query).get("to", [""])[0]
    except ValueError:
        port, nonce = None, ""
    if port is None or parts.scheme != "fake" or not parts.hostname or parts.path != f"/{vm_id}":
        raise DriverError(
            f"cannot migrate VM {vm_id}: {uri!r} is not fake://<host>:<port>/{vm_id}?to=<nonce>"
        )
    return parts.hostname, port, nonce


class FakeDriver(Driver):
    """A simulated hypervisor: see the module documentation for its options."""

    name = "fake"
    capabilities = frozenset(Capability)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "capabilities" in self.options:
            self.capabilities = frozenset(Capability(c) for c in self.options["capabilities"])
        self._host = HostCapacity(
            Capacity(
                vcpus=int(self.options.get("vcpus", 64)),
                memory_mb=int(self.options.get("memory_mb", 262144)),
                disk_gb=int(self.options.get("disk_gb", 1024)),
            )
        )
        self._faults = Faults(self.options)
        self._domains: dict[str, FakeDomain] = {}
        self._snapshots = FakeSnapshots(
            self._domains,
            self._faults,
            self._changed,
            disk_usage_mb=float(self.options.get("disk_usage_mb", 64)),
            storage_dir=str(self.options.get("storage_dir") or "") or None,
        )
        self._journal: Journal | None = None
        self._incoming: dict[str, Incoming] = {}
        self._lease_ttl = float(self.options.get("lease_ttl", 10.0))
        self._leases: Leases | None = None
        self._lost_guests: list[tuple[str, str]] = []
        self._sending: set[str] = set()  # guests whose migration is under way
        self._renewer: asyncio.Task[None] | None = None

    # capacity ------------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        """The host's total capacity."""
        return self._host.total.model_copy()

    def reserved(self) -> Capacity:
        """What running, paused and incoming VMs (and operations under way) hold."""
        return self._host.reserved()

    # life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Load the guests an earlier driver left in ``state_dir``; journal changes from now.
        With shared storage, take up their disk leases again: a guest whose lease another
        host took while this LNM was away has lost its disk and is ``error``."""
        if self.state_dir is None:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        journal = Journal(self.state_dir, self._domains)
        journal.load()
        self._host.clear()
        for dom in self._domains.values():
            if dom.state in RESERVING:
                self._host.reserve(dom.spec)
        journal.compact()
        self._journal = journal
        storage = self.options.get("storage_dir")
        if storage:
            holder = os.path.realpath(self.state_dir)
            guests = Guests(held=self._held, lost=self._lost, returned=self._returned)
            self._leases = leases = Leases(str(storage), holder, self._lease_ttl, guests)
            leases.come_back()
            self._renewer = asyncio.get_running_loop().create_task(self._renew())

    def _held(self) -> list[str]:
        """The guests whose disks this host holds, as far as it knows: active ones, and
        incoming ones whose disk it accepted."""
        return [
            dom.id
            for dom in self._domains.values()
            if dom.state in ACTIVE or (dom.state in INCOMING and self._arrived(dom))
        ]

    def _lost(self, vm_id: str, holder: str | None) -> None:
        """The disk of guest ``vm_id`` is no longer this host's (``holder`` has it): a
        migration this host sent it on took it (the guest is gone from here, as is an
        incoming one), or it went while this host was away (the guest is ``error``). Runs
        under the lease lock: no lease calls."""
        dom = self._domains.get(vm_id)
        if dom is None:
            return
        if dom.sent or dom.state in INCOMING:
            log.info("VM %s: its disk went to %s while this host was away", vm_id, holder)
            self._forget(dom)
            return
        log.warning("VM %s: its disk lease went to %s while this host was away", vm_id, holder)
        reason = "lost its disk lease while its host was away"
        self._set_state(dom, VMState.ERROR, reason)
        self._lost_guests.append((vm_id, reason))

    def _returned(self) -> None:
        """After coming back (under the lease lock): a guest still here and not being sent
        was not taken by its migration's target, and an incoming one whose disk this host
        holds arrived whole."""
        for dom in self._domains.values():
            if dom.id in self._sending:
                continue
            if dom.sent or (dom.state in INCOMING and self._arrived(dom) != dom.received):
                dom.sent, dom.received = False, dom.state in INCOMING
                self._changed(dom)

    async def _renew(self) -> None:
        assert self._leases is not None
        while True:
            await asyncio.sleep(self._lease_ttl / 4)
            try:
                self._leases.keep_alive()
            except Exception:
                log.exception("cannot renew this host's disk leases")
            lost, self._lost_guests = self._lost_guests, []
            for vm_id, reason in lost:
                await self.on_state_change(vm_id, VMState.ERROR, reason)

    def _take_lease(self, vm_id: str) -> None:
        if self._leases is not None:
            try:
                self._leases.take(vm_id)
            except LeaseHeld as exc:
                raise DriverError(f"cannot start VM {vm_id}: {exc}") from None

    def _release_lease(self, vm_id: str) -> None:
        if self._leases is not None:
            self._leases.release(vm_id)

    async def close(self) -> None:
        """Save the VM table; the simulated guests keep "running" in it (an incoming
        migration's listener goes: its source sees the migration fail). Leases are no
        longer renewed: as for a host that went away, they expire after ``lease_ttl``."""
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        for incoming in self._incoming.values():
            incoming.close()
        self._incoming.clear()
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _changed(self, dom: FakeDomain, *, removed: bool = False) -> None:
        if self._journal is not None:
            self._journal.write(dom, removed=removed)

    # helpers -------------------------------------------------------------------------------

    def _get(self, vm_id: str) -> FakeDomain:
        try:
            return self._domains[vm_id]
        except KeyError:
            raise UnknownVM(vm_id) from None

    @staticmethod
    def _require(dom: FakeDomain, action: str, states: frozenset[VMState]) -> None:
        if dom.state not in states:
            raise InvalidTransition(dom.id, dom.state, action)

    def _add(self, guest: Guest) -> FakeDomain:
        self._domains[guest.id] = FakeDomain(guest.id, guest.name, guest.spec, meta=guest.meta)
        return self._domains[guest.id]

    def _remove(self, dom: FakeDomain) -> None:
        self._forget(dom)
        self._release_lease(dom.id)

    def _forget(self, dom: FakeDomain) -> None:
        """Drop a guest from the table (its lease is left as it is); idempotent."""
        if self._domains.get(dom.id) is not dom:
            return
        self._stop_listening(dom.id)
        if dom.state in RESERVING:
            self._host.reserve(dom.spec, -1)
        del self._domains[dom.id]
        self._changed(dom, removed=True)

    def _set_state(self, dom: FakeDomain, state: VMState, reason: str | None = None) -> None:
        """The one place a guest changes state: keeps CPU time, capacity and console right."""
        t = now()
        dom.cpu_seconds = dom.burnt(t)
        dom.running_since = t if state is VMState.RUNNING else None
        was_reserving, reserving = dom.state in RESERVING, state in RESERVING
        if was_reserving != reserving:
            self._host.reserve(dom.spec, 1 if reserving else -1)
        dom.state, dom.reason = state, reason
        dom.console.append(f"{dom.name}: {state.value}{f' ({reason})' if reason else ''}\n")
        self._changed(dom)

    # inventory -----------------------------------------------------------------------------

    async def list(self) -> list[DomainInfo]:
        t = now()
        return [dom.info(t) for dom in self._domains.values() if not self._gone(dom)]

    async def info(self, vm_id: str) -> DomainInfo:
        dom = self._get(vm_id)
        if self._gone(dom):
            raise UnknownVM(vm_id)
        return dom.info(now())

    def _gone(self, dom: FakeDomain) -> bool:
        """A guest whose migration's target took its disk: inactive here, as a QEMU source
        that sent all of its guest, until :meth:`migrate` lets it go."""
        return dom.sent and self._leases is not None and not self._leases.holds(dom.id)

    def _arrived(self, dom: FakeDomain) -> bool:
        """Whether all of an incoming guest arrived: its disk is this host's."""
        if self._leases is None or dom.received:
            return dom.received
        return self._leases.holds(dom.id)

    # operations ----------------------------------------------------------------------------

    async def start(self, guest: Guest) -> DomainInfo:
        """Boot a new, stopped or crashed (``error``) guest with ``guest``'s name and spec."""
        dom = self._domains.get(guest.id)
        if dom is not None:
            self._require(dom, "start", STARTABLE)
        with self._host.claim(guest.id, guest.spec):
            self._take_lease(guest.id)
            try:
                await self._faults.act("start", guest.id)
            except BaseException:
                self._release_lease(guest.id)
                raise
        if dom is None:
            dom = self._add(guest)
        dom.name, dom.spec, dom.meta = guest.name, guest.spec, dict(guest.meta)
        dom.console.append(
            f"fake BIOS: booting {dom.spec.image} with {dom.spec.vcpus} vCPUs, "
            f"{dom.spec.memory_mb} MB\n"
        )
        if guest.config is not None:
            dom.console.append(cloud_init_report(guest.config))
        self._set_state(dom, VMState.RUNNING)
        return dom.info(now())

    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """Power off; a simulated guest always shuts down within ``timeout``."""
        dom = self._get(vm_id)
        self._require(dom, "stop", ACTIVE)
        await self._faults.act("stop", vm_id)
        self._set_state(dom, VMState.STOPPED)
        self._release_lease(vm_id)

    async def destroy(self, vm_id: str) -> None:
        dom = self._domains.get(vm_id)
        if dom is None:
            await asyncio.sleep(0)
            return
        await self._faults.act("destroy", vm_id)
        self._remove(dom)

    async def pause(self, vm_id: str) -> None:
        dom = self._get(vm_id)
        self._require(dom, "pause", RUNNING)
        await self._faults.act("pause", vm_id)
        self._set_state(dom, VMState.PAUSED)

    async def resume(self, vm_id: str) -> None:
        dom = self._get(vm_id)
        self._require(dom, "resume", PAUSED)
        await self._faults.act("resume", vm_id)
        self._set_state(dom, VMState.RUNNING)
        if dom.unread:
            self._read_console_input(dom)
            self._changed(dom)

    async def reboot(self, vm_id: str) -> None:
        dom = self._get(vm_id)
        self._require(dom, "reboot", RUNNING)
        await self._faults.act("reboot", vm_id)
        dom.console.append(f"{dom.name}: reboot\n")
        self._set_state(dom, VMState.RUNNING)

    # live migration ------------------------------------------------------------------------

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        """Reserve ``guest``'s resources and listen for it on a TCP port; it shows as
        ``migrating`` until finished or aborted."""
        if guest.id in self._domains:
            raise DriverError(f"cannot receive VM {guest.id}: it is already on this host")
        nonce = secrets.token_hex(8)
        with self._host.claim(guest.id, guest.spec):
            await self._faults.act("prepare_incoming", guest.id)
            incoming = Incoming(guest.id, lambda paused: self._received(guest.id, nonce, paused))
            try:
                port = await incoming.listen(ipv6=":" in listen_host)
            except OSError as exc:
                raise DriverError(f"cannot receive VM {guest.id}: {exc}") from exc
        self._incoming[guest.id] = incoming
        self._set_state(self._add(guest), VMState.MIGRATING)
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        return f"fake://{host}:{port}/{guest.id}?to={nonce}"

    def _received(self, vm_id: str, nonce: str, paused: bool) -> bool:
        """The source sent all of ``vm_id`` (``paused`` there, or running): take it (and its
        disk, which the source offers this target, ``nonce``), if it is still expected here."""
        dom = self._domains.get(vm_id)
        if dom is None or dom.state not in INCOMING or dom.received:
            return False
        if dom.paused != paused:  # journaled first: the disk may be this host's any moment
            dom.paused = paused
            self._changed(dom)
        if self._leases is not None and not self._leases.accept(vm_id, nonce):
            return False  # the source withdrew: its migration broke, the guest runs there
        dom.received = True  # (a host killed before this line finds the disk its own)
        self._changed(dom)
        return True

    def _stop_listening(self, vm_id: str) -> None:
        incoming = self._incoming.pop(vm_id, None)
        if incoming is not None:
            incoming.close()

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        """Send a running or paused VM to the target listening at
        ``fake://<host>:<port>/<vm_id>?to=<nonce>``; if the target does not take it, it
        runs on here. If the target took it though the migration broke afterwards (the
        target's ``ok`` was lost), the migration succeeded: the guest is gone from here."""
        dom = self._get(vm_id)
        self._require(dom, "migrate", ACTIVE)
        if vm_id in self._sending:
            raise DriverError(f"cannot migrate VM {vm_id}: a migration of it is under way")
        host, port, nonce = _target_of(uri, vm_id)
        began = time.monotonic()
        self._sending.add(vm_id)
        try:
            await self._send(dom, host, port, nonce, timeout)
        finally:
            self._sending.discard(vm_id)
        total_ms = (time.monotonic() - began) * 1000
        transferred = int(dom.info(now()).memory_used_mb * 1024 * 1024)
        self._remove(dom)
        return MigrationResult(
            total_ms=total_ms,
            downtime_ms=total_ms * DOWNTIME_FRACTION,
            transferred_bytes=transferred,
        )

    async def _send(
        self, dom: FakeDomain, host: str, port: int, nonce: str, timeout: float
    ) -> None:
        """Offer the guest's disk to the target and send the guest: returns once the target
        took it, raises if it runs on here."""
        vm_id = dom.id
        self._offer(dom, nonce)
        try:
            async with asyncio.timeout(timeout):
                await send(
                    host,
                    port,
                    vm_id,
                    lambda: self._faults.act("migrate", vm_id),
                    lambda: dom.state is VMState.PAUSED,
                )
        except BaseException as exc:
            if self._withdraw(dom):
                if isinstance(exc, TimeoutError):
                    raise DriverError(
                        f"migration of VM {vm_id} timed out after {timeout} s"
                    ) from None
                if isinstance(exc, DriverError):
                    raise DriverError(f"migration of VM {vm_id} failed: {exc}") from exc
                raise
            log.warning("VM %s: its disk left this host though the migration broke: %s", vm_id, exc)
            if not isinstance(exc, Exception):
                self._remove(dom)
                raise

    def _offer(self, dom: FakeDomain, nonce: str) -> None:
        """Before a migration sends the guest: offer its disk to the target ``nonce``."""
        if self._leases is None:
            return
        dom.sent = True  # journaled first: a host killed now withdraws the offer on return
        self._changed(dom)
        try:
            self._leases.offer(dom.id, nonce)
        except BaseException as exc:
            dom.sent = False
            self._changed(dom)
            if isinstance(exc, LeaseHeld):
                raise DriverError(f"cannot migrate VM {dom.id}: {exc}") from None
            raise

    def _withdraw(self, dom: FakeDomain) -> bool:
        """After a migration broke: whether the guest is still this host's to run."""
        if self._leases is None:
            return True
        if not self._leases.withdraw(dom.id):
            return False
        dom.sent = False
        self._changed(dom)
        return True

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        """Run an incoming VM here once its source sent all of it (paused if it was paused
        there)."""
        dom = self._get(vm_id)
        self._require(dom, "finish incoming migration of", INCOMING)
        if not self._arrived(dom):
            raise DriverError(f"incoming migration of VM {vm_id} is not complete")
        await self._faults.act("finish_incoming", vm_id)
        self._stop_listening(vm_id)
        self._set_state(dom, VMState.PAUSED if dom.paused else VMState.RUNNING)
        return dom.info(now())

    async def abort_incoming(self, vm_id: str) -> None:
        """Release a prepared incoming VM; succeeds if it is gone, refuses if it runs here."""
        await asyncio.sleep(0)
        dom = self._domains.get(vm_id)
        if dom is None:
            return
        self._require(dom, "abort incoming migration of", INCOMING)
        self._remove(dom)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        """Run a received incoming VM, drop one that is not (atomically: no await between
        the check and the change, so a transfer cannot complete in between)."""
        await asyncio.sleep(0)
        dom = self._get(vm_id)
        self._require(dom, "settle incoming migration of", INCOMING)
        if not self._arrived(dom):
            self._remove(dom)
            return None
        self._stop_listening(vm_id)
        self._set_state(dom, VMState.PAUSED if dom.paused else VMState.RUNNING)
        return dom.info(now())

    # disks ---------------------------------------------------------------------------------

    async def resize_disk(self, vm_id: str, disk: int, size_gb: int) -> DomainInfo:
        """Record the disk's new size in the guest's spec; a running guest's console says
        it saw the change, as Linux does (``vdb: detected capacity change``)."""
        dom = self._get(vm_id)
        self._require(dom, "resize a disk of", RESIZABLE)
        try:
            current = dom.spec.disk_sizes()[disk] if disk >= 0 else None
            grown = dom.spec.with_disk_size(disk, size_gb)
        except IndexError as exc:
            raise DriverError(f"cannot resize a disk of VM {vm_id}: {exc}") from None
        if current is not None and size_gb < current:
            raise DriverError(
                f"cannot shrink disk {disk} of VM {vm_id} from {current} to {size_gb} GiB"
            )
        await self._faults.act("resize_disk", vm_id)
        dom.spec = grown
        if dom.state in ACTIVE and size_gb != current:
            dom.console.append(
                f"vd{chr(ord('a') + disk)}: detected capacity change to {size_gb} GiB\n"
            )
        self._changed(dom)
        return dom.info(now())

    # snapshots and copies of disks: see usher.vmm.fake_snapshots ------------------------------

    async def snapshot_create(self, vm_id: str, name: str) -> Snapshot:
        return await self._snapshots.create(vm_id, name)

    async def snapshot_list(self, vm_id: str) -> list[Snapshot]:
        await asyncio.sleep(0)
        return self._snapshots.listed(vm_id)

    async def snapshot_revert(self, vm_id: str, name: str) -> None:
        await self._snapshots.revert(vm_id, name)

    async def snapshot_delete(self, vm_id: str, name: str) -> None:
        await self._snapshots.delete(vm_id, name)

    async def disk_usage(self, vm_id: str) -> int:
        await asyncio.sleep(0)
        return self._snapshots.usage(vm_id)

    async def clone_disks(self, vm_id: str, new_vm_id: str, *, snapshot: str | None) -> None:
        await self._snapshots.clone_disks(vm_id, new_vm_id, snapshot)

    async def export_disk(self, vm_id: str, staging: str, *, snapshot: str | None) -> int:
        return await self._snapshots.export_disk(vm_id, staging, snapshot)

    # console and fault injection -----------------------------------------------------------

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        return "".join(self._get(vm_id).console).encode()[offset:]

    async def console_end(self, vm_id: str) -> int:
        return len("".join(self._get(vm_id).console).encode())

    async def console_write(self, vm_id: str, data: bytes) -> None:
        """A running guest's console answers at once (:mod:`usher.vmm.fake_console`); a paused
        one keeps what is typed until it is resumed."""
        dom = self._get(vm_id)
        self._require(dom, "type into the console of", ACTIVE)
        dom.unread += data.decode("utf-8", "replace")
        if dom.state is VMState.RUNNING:
            self._read_console_input(dom)
        self._changed(dom)

    @staticmethod
    def _read_console_input(dom: FakeDomain) -> None:
        shown, dom.line = type_into(dom.name, dom.line, dom.unread)
        dom.unread = ""
        if shown:
            dom.console.append(shown)

    async def crash(self, vm_id: str, reason: str = "crashed") -> None:
        """Test helper: kill a guest's simulated process; it turns ``error`` and frees its
        resources, and ``on_state_change`` hears about it as it would from a real driver."""
        dom = self._get(vm_id)
        self._require(dom, "crash", RESERVING)
        self._set_state(dom, VMState.ERROR, reason)
        self._release_lease(vm_id)
        await self.on_state_change(vm_id, VMState.ERROR, reason)
