"""The ``qemu`` VMM driver: every VM is a QEMU process, controlled over QMP.

QEMU runs detached from the LNM (see :mod:`usher.vmm.qemu_process`), so an LNM that restarts
neither stops nor loses a guest: :meth:`QemuDriver.open` reads every VM record in the state
dir, reattaches to its QEMU over QMP and reports the state QEMU tells (``query-status``); a
record whose QEMU is gone is ``error`` (it ended while nobody watched), or stays ``stopped``.

While the driver runs, a watcher per VM waits on its QMP connection, which QEMU's end closes
at once (with a poll of ``/proc/<pid>/stat`` as a fallback), and reports an end that no
operation asked for through ``on_state_change``: ``stopped`` when the guest powered itself
off, ``error`` with the cause otherwise.

Files of a VM:

* in this LNM's state dir, ``<state_dir>/vms/<vm_id>/``: ``vm.json`` (the record: id, name,
  spec, image, NICs, accelerator, last state), ``qemu.pid`` and ``qmp.sock``;
* in the shared storage, ``<storage>/vms/<vm_id>/`` (:mod:`usher.images.catalog`):
  ``disk.qcow2``, the copy-on-write overlay on the image's base disk; ``console.log``, the
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
* ``migrate_downtime_ms`` (default 300) and ``migrate_bandwidth_mbps`` (MiB/s, default
  1024): QEMU's live-migration downtime limit and bandwidth cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from usher.images import catalog
from usher.model import LEASE_HELD, ImageKind, VMSpec, VMState
from usher.vmm import qemu_process as proc
from usher.vmm.base import (
    Capability,
    DomainInfo,
    Driver,
    DriverError,
    Guest,
    InsufficientCapacity,
    InvalidTransition,
    MigrationResult,
    UnknownVM,
)
from usher.vmm.qemu_accel import DEFAULT_BINARY, detect_accel
from usher.vmm.qemu_argv import KernelBoot, Nic, bridge_of, nics_of, qemu_argv, tap_name
from usher.vmm.qemu_domain import LIVE, Domain, ending, state_of
from usher.vmm.qemu_monitor import Monitor, MonitorError

log = logging.getLogger(__name__)

RECORD = "vm.json"
PIDFILE = "qemu.pid"
QMP_SOCKET = "qmp.sock"
CONSOLE = "console.log"
LEASE = "node"

DEFAULT_STORAGE = "/var/lib/usher/storage"
KILL_TIMEOUT = 5.0
"""Seconds QEMU gets to end after ``quit`` or SIGKILL."""
WATCH_INTERVAL = 1.0
"""Seconds between two looks at ``/proc/<pid>/stat`` while the QMP connection is quiet."""
FINISH_TIMEOUT = 30.0
"""Seconds an incoming QEMU may take to run once the source reported completion."""
CONSOLE_CHUNK = 4 << 20
"""Most bytes :meth:`QemuDriver.console_log` returns at once; ask again from where it ended."""

_ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
_STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
_MIGRATION_OVER = frozenset({"completed", "failed", "cancelled"})
LOCK_FAILED = 'Failed to get "write" lock'
"""What QEMU says when another QEMU holds the image lock of the disk it should open."""


def _host_memory_mb() -> int:
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
        self._storage = str(opts.get("storage_dir") or DEFAULT_STORAGE)
        self._accel_option = str(opts.get("accel", "auto"))
        if self._accel_option not in ("auto", "kvm", "tcg"):
            raise DriverError(
                f"qemu driver: accel must be auto, kvm or tcg, not {self._accel_option!r}"
            )
        self._stop_timeout = float(opts.get("stop_timeout", 30.0))
        self._binary = str(opts.get("qemu_binary", DEFAULT_BINARY))
        self._bridge: str | None = opts.get("bridge") or None
        self._vcpus = int(opts.get("vcpus") or os.cpu_count() or 1)
        self._memory_mb = int(opts.get("memory_mb") or _host_memory_mb())
        self._downtime_ms = int(opts.get("migrate_downtime_ms", 300))
        self._bandwidth = int(float(opts.get("migrate_bandwidth_mbps", 1024)) * 2**20)
        self._vms_dir = os.path.join(self.state_dir, "vms")
        self._node = f"{socket.gethostname()}:{os.path.realpath(self.state_dir)}"
        self._accel: str | None = None
        self._domains: dict[str, Domain] = {}
        self._claims: dict[str, VMSpec] = {}

    # paths ----------------------------------------------------------------------------------

    def _local(self, vm_id: str, name: str = "") -> str:
        return os.path.join(self._vms_dir, vm_id, name)

    def _shared(self, vm_id: str, name: str = "") -> str:
        return os.path.join(catalog.vm_dir(self._storage, vm_id), name)

    # life cycle of the driver ---------------------------------------------------------------

    async def open(self) -> None:
        """Find every VM in the state dir and reattach to the QEMU processes that still run."""
        os.makedirs(self._vms_dir, exist_ok=True)
        await self._accelerator()
        for vm_id in sorted(os.listdir(self._vms_dir)):
            try:
                with open(self._local(vm_id, RECORD), encoding="utf-8") as file:
                    dom = Domain.from_record(json.load(file))
            except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
                log.warning("ignoring %s: no readable VM record (%s)", self._local(vm_id), exc)
                continue
            await self._reattach(dom)

    async def close(self) -> None:
        """Stop watching; the guests keep running and the next :meth:`open` finds them."""
        for dom in self._domains.values():
            if dom.watcher is not None:
                dom.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dom.watcher
                dom.watcher = None
            if dom.monitor is not None:
                await dom.monitor.close()
                dom.monitor = None

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
        pidfile = self._local(dom.id, PIDFILE)
        pid = proc.read_pid(pidfile)
        if pid is not None and proc.runs_with(pid, pidfile):
            dom.pid = pid
            self._domains[dom.id] = dom
            try:
                monitor, status = await self._connect(dom)
            except MonitorError as exc:
                dom.state, dom.reason = VMState.ERROR, f"QEMU (pid {pid}) does not answer: {exc}"
                log.warning("VM %s: %s", dom.id, dom.reason)
                return
            dom.state, dom.reason = state_of(status, dom.incoming)
            self._watch(dom, pid, monitor)
            log.info("reattached to VM %s (QEMU pid %d, %s)", dom.id, pid, status)
            return
        self._remove_runtime_files(dom.id)
        if dom.incoming:
            log.warning("dropping VM %s: its incoming QEMU ended while the LNM was away", dom.id)
            shutil.rmtree(self._local(dom.id), ignore_errors=True)
            return
        if not os.path.exists(self._shared(dom.id, catalog.DISK)):
            log.warning("forgetting VM %s: its disk %s is gone", dom.id, self._shared(dom.id))
            shutil.rmtree(self._local(dom.id), ignore_errors=True)
            return
        if dom.state in LIVE:
            dom.state, dom.reason = VMState.ERROR, "QEMU ended while the LNM was not running"
            self._save(dom)
        self._domains[dom.id] = dom

    # inventory ------------------------------------------------------------------------------

    async def list(self) -> list[DomainInfo]:
        return [dom.info() for dom in self._domains.values()]

    async def info(self, vm_id: str) -> DomainInfo:
        return self._get(vm_id).info()

    # operations -----------------------------------------------------------------------------

    async def start(self, guest: Guest) -> DomainInfo:
        """Boot a new VM, or a stopped or crashed one again on its existing overlay disk."""
        old = self._domains.get(guest.id)
        if old is not None:
            self._require(old, "start", _STARTABLE)
        image = guest.image or (old.image if old else None)
        if image is None:
            raise DriverError(
                f"cannot start VM {guest.id}: image {guest.spec.image!r} is not in the catalogue"
            )
        dom = Domain(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            image=image,
            nics=nics_of(guest.id, guest.spec.nics),
            accel=await self._accelerator(),
            state=VMState.RUNNING,
        )
        with self._claim(guest.id, guest.spec):
            disk_was_there = os.path.exists(self._shared(guest.id, catalog.DISK))
            try:
                await asyncio.to_thread(catalog.create_overlay, self._storage, image, guest.id)
            except catalog.ImageError as exc:
                raise DriverError(f"cannot start VM {guest.id}: {exc}") from exc
            if old is not None:
                await self._end_leftover(old)
            try:
                await self._boot(dom)
            except BaseException as exc:
                if old is not None:
                    self._save(old)
                else:
                    shutil.rmtree(self._local(guest.id), ignore_errors=True)
                    if not disk_was_there:
                        catalog.remove_vm_disks(self._storage, guest.id)
                if isinstance(exc, DriverError) and LOCK_FAILED in str(exc):
                    raise DriverError(
                        f"cannot start VM {guest.id}: {LEASE_HELD}: its disk is in use by "
                        f"another QEMU (a copy may still run on another node): {exc}"
                    ) from None
                raise
            self._domains[guest.id] = dom
            self._take_lease(guest.id)
        return dom.info()

    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """ACPI power button, then ``quit`` (and SIGKILL) if the guest is not off in time.

        A paused guest is resumed first, so it can act on the power button. Stopping a VM in
        ``error`` kills what may be left of its QEMU and marks it stopped."""
        dom = self._get(vm_id)
        self._require(dom, "stop", _ACTIVE | {VMState.ERROR})
        if dom.state is VMState.ERROR:
            await self._end_leftover(dom)
            self._set_ended(dom, VMState.STOPPED, None)
            return
        monitor = self._monitor(dom)
        dom.expect_exit = True
        if not hard:
            limit = self._stop_timeout if timeout is None else timeout
            try:
                if dom.state is VMState.PAUSED:
                    await monitor.execute("cont")
                await monitor.execute("system_powerdown")
            except MonitorError as exc:
                log.warning("VM %s: graceful stop failed (%s); stopping it hard", vm_id, exc)
            else:
                if not await self._exited(dom, limit):
                    log.info("VM %s did not power off within %g s; stopping it hard", vm_id, limit)
        await self._halt(dom)
        self._set_ended(dom, VMState.STOPPED, None)

    async def destroy(self, vm_id: str) -> None:
        """Kill QEMU, remove the VM's records and, if this node runs it, its disks."""
        if not await self._forget(vm_id):
            return
        if self._holds_lease(vm_id):
            await asyncio.to_thread(catalog.remove_vm_disks, self._storage, vm_id)
        else:
            log.info("VM %s: leaving its shared disk to the node that runs it now", vm_id)

    async def pause(self, vm_id: str) -> None:
        dom = self._get(vm_id)
        self._require(dom, "pause", frozenset({VMState.RUNNING}))
        await self._monitor(dom).execute("stop")
        dom.state = VMState.PAUSED

    async def resume(self, vm_id: str) -> None:
        dom = self._get(vm_id)
        self._require(dom, "resume", frozenset({VMState.PAUSED}))
        await self._monitor(dom).execute("cont")
        dom.state = VMState.RUNNING

    async def reboot(self, vm_id: str) -> None:
        """Hard reset (``system_reset``): the guest boots again in the same QEMU."""
        dom = self._get(vm_id)
        self._require(dom, "reboot", frozenset({VMState.RUNNING}))
        await self._monitor(dom).execute("system_reset")

    # live migration -------------------------------------------------------------------------

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        """Start QEMU with the guest's devices waiting for its state on ``tcp:<host>:<port>``."""
        if guest.id in self._domains:
            raise DriverError(f"cannot receive VM {guest.id}: it is already on this host")
        if guest.image is None:
            raise DriverError(f"cannot receive VM {guest.id}: its image is not in the catalogue")
        if not os.path.exists(self._shared(guest.id, catalog.DISK)):
            raise DriverError(
                f"cannot receive VM {guest.id}: its disk is not in {self._storage}; "
                "live migration needs storage that both nodes share"
            )
        dom = Domain(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            image=guest.image,
            nics=nics_of(guest.id, guest.spec.nics),
            accel=await self._accelerator(),
            state=VMState.MIGRATING,
            incoming=True,
        )
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        with self._claim(guest.id, guest.spec):
            try:
                await self._boot(dom)
            except BaseException:
                shutil.rmtree(self._local(guest.id), ignore_errors=True)
                raise
            self._domains[guest.id] = dom
            try:
                monitor = self._monitor(dom)
                await monitor.execute("migrate-incoming", {"uri": f"tcp:{host}:0"})
                listening = await monitor.execute("query-migrate")
                port = int(listening["socket-address"][0]["port"])
            except BaseException:
                await self.abort_incoming(guest.id)
                raise
        return f"tcp:{host}:{port}"

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        """Live-migrate to an incoming QEMU at ``uri`` (``tcp:host:port``). On success the
        source QEMU quits and the VM's records here go (its shared disk stays); on failure or
        timeout the migration is cancelled and the VM runs on here."""
        dom = self._get(vm_id)
        self._require(dom, "migrate", _ACTIVE)
        if not uri.startswith("tcp:"):
            raise DriverError(f"cannot migrate VM {vm_id} to {uri!r}: expected tcp:<host>:<port>")
        monitor = self._monitor(dom)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await monitor.execute(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "auto-converge", "state": True}]},
        )
        await monitor.execute(
            "migrate-set-parameters",
            {"downtime-limit": self._downtime_ms, "max-bandwidth": self._bandwidth},
        )
        await monitor.execute("migrate", {"uri": uri})
        try:
            status = await self._follow_migration(monitor, began + timeout)
        except asyncio.CancelledError:  # called off: cancel it, and the guest runs on here
            with contextlib.suppress(MonitorError):
                await monitor.execute("migrate_cancel")
            await self._follow_migration(monitor, loop.time() + KILL_TIMEOUT)
            await self._keep_running(dom)
            raise
        timed_out = status["status"] not in _MIGRATION_OVER
        if timed_out:
            log.warning("VM %s: migration timed out after %g s; cancelling it", vm_id, timeout)
            with contextlib.suppress(MonitorError):
                await monitor.execute("migrate_cancel")
            status = await self._follow_migration(monitor, loop.time() + KILL_TIMEOUT)
        if status["status"] != "completed":
            await self._keep_running(dom)
            why = f"timed out after {timeout:g} s" if timed_out else status.get("error-desc")
            raise DriverError(
                f"live migration of VM {vm_id} failed: {why or status['status']}; it runs on here"
            )
        total_ms = (loop.time() - began) * 1000
        await self._halt(dom)
        del self._domains[vm_id]
        shutil.rmtree(self._local(vm_id), ignore_errors=True)
        ram = status.get("ram", {})
        return MigrationResult(
            total_ms=total_ms,
            downtime_ms=status.get("downtime"),
            transferred_bytes=ram.get("transferred"),
            extra={
                "qemu_total_ms": status.get("total-time"),
                "setup_ms": status.get("setup-time"),
                "mbps": ram.get("mbps"),
            },
        )

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        """Wait until the incoming QEMU runs the guest (the migration stream is complete)."""
        dom = self._get(vm_id)
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "finish incoming migration of")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_TIMEOUT
        while True:
            if dom.exited.is_set():
                raise DriverError(f"incoming migration of VM {vm_id} failed: {dom.reason}")
            status = (await self._monitor(dom).execute("query-status"))["status"]
            if status in ("running", "paused"):
                break
            if status != "inmigrate":
                raise DriverError(f"incoming migration of VM {vm_id} failed: QEMU is {status}")
            if loop.time() > deadline:
                raise DriverError(
                    f"incoming migration of VM {vm_id} did not finish within {FINISH_TIMEOUT:g} s"
                )
            await asyncio.sleep(0.05)
        dom.incoming = False
        dom.state = VMState.RUNNING if status == "running" else VMState.PAUSED
        self._save(dom)
        self._take_lease(vm_id)
        return dom.info()

    async def abort_incoming(self, vm_id: str) -> None:
        """Kill an incoming QEMU and drop its records here; the shared disk stays."""
        dom = self._domains.get(vm_id)
        if dom is None:
            return
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "abort incoming migration of")
        await self._end_leftover(dom)
        del self._domains[vm_id]
        shutil.rmtree(self._local(vm_id), ignore_errors=True)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        """An incoming QEMU still in ``inmigrate`` has not got the whole VM: kill it (its
        source's migration fails and the guest runs on there); one past it runs the guest."""
        dom = self._get(vm_id)
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "settle incoming migration of")
        status = None
        if not dom.exited.is_set():
            with contextlib.suppress(MonitorError, DriverError):
                status = (await self._monitor(dom).execute("query-status"))["status"]
        if status in ("running", "paused"):
            return await self.finish_incoming(vm_id)
        await self.abort_incoming(vm_id)
        return None

    # console --------------------------------------------------------------------------------

    async def fence(self, vm_id: str) -> None:
        """Kill QEMU and remove the VM's records here; its shared disks stay."""
        await self._forget(vm_id)

    async def _forget(self, vm_id: str) -> bool:
        """Kill the VM's QEMU and remove its records here; False if there was no such VM."""
        dom = self._domains.get(vm_id)
        if dom is None:
            return False
        await self._end_leftover(dom)
        del self._domains[vm_id]
        shutil.rmtree(self._local(vm_id), ignore_errors=True)
        return True

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        """Serial console output from ``offset`` on, at most :data:`CONSOLE_CHUNK` bytes."""
        self._get(vm_id)
        try:
            with open(self._shared(vm_id, CONSOLE), "rb") as file:
                file.seek(max(0, offset))
                return file.read(CONSOLE_CHUNK)
        except FileNotFoundError:
            return b""

    # helpers: QEMU processes ----------------------------------------------------------------

    async def _boot(self, dom: Domain) -> None:
        """Launch ``dom``'s QEMU and open its QMP session; QEMU runs the guest (or, incoming,
        waits for it) when this returns. On failure nothing of the attempt is left."""
        os.makedirs(self._local(dom.id), exist_ok=True)
        self._remove_runtime_files(dom.id)
        taps: list[tuple[str, str]] = []
        nics: list[tuple[Nic, str | None]] = []
        for index, nic in enumerate(dom.nics):
            bridge = bridge_of(nic, self._bridge)
            tap = None
            if bridge is not None:
                if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
                    raise DriverError(f"VM {dom.id}: there is no Linux bridge {bridge} here")
                tap = tap_name(self._node, dom.id, index)
                taps.append((tap, bridge))
            nics.append((nic, tap))
        argv = qemu_argv(
            binary=self._binary,
            accel=dom.accel,
            name=dom.name,
            spec=dom.spec,
            disk=self._shared(dom.id, catalog.DISK),
            console=self._shared(dom.id, CONSOLE),
            qmp_socket=QMP_SOCKET,
            nics=nics,
            kernel=self._kernel_boot(dom),
            incoming=dom.incoming,
        )
        self._save(dom)
        pidfile = self._local(dom.id, PIDFILE)
        pid = await proc.launch(argv, cwd=self._local(dom.id), pidfile=pidfile)
        monitor = None
        try:
            for tap, bridge in taps:
                await _ip("link", "set", "dev", tap, "master", bridge, "up")
            monitor, status = await self._connect(dom)
            expected = "inmigrate" if dom.incoming else "running"
            if status != expected:
                raise DriverError(f"VM {dom.id}: QEMU is {status} instead of {expected}")
        except BaseException:
            if monitor is not None:
                await monitor.close()
            proc.kill(pid)
            await proc.wait_gone(pid, KILL_TIMEOUT)
            self._remove_runtime_files(dom.id)
            raise
        self._watch(dom, pid, monitor)
        log.info("VM %s: QEMU pid %d %s", dom.id, pid, "waits for it" if dom.incoming else "runs")

    async def _connect(self, dom: Domain) -> tuple[Monitor, str]:
        """A QMP session with ``dom``'s QEMU, and QEMU's run state."""
        monitor = await Monitor.connect(self._local(dom.id, QMP_SOCKET), dom.id)
        try:
            return monitor, (await monitor.execute("query-status"))["status"]
        except BaseException:
            await monitor.close()
            raise

    def _kernel_boot(self, dom: Domain) -> KernelBoot | None:
        if dom.image.kind is not ImageKind.KERNEL:
            return None
        try:
            kernel = catalog.image_path(self._storage, dom.image, "kernel")
            initrd = None
            if "initrd" in dom.image.files:
                initrd = catalog.image_path(self._storage, dom.image, "initrd")
        except catalog.ImageError as exc:
            raise DriverError(f"cannot boot VM {dom.id}: {exc}") from exc
        return KernelBoot(
            kernel=str(kernel),
            initrd=str(initrd) if initrd else None,
            append=f"{dom.image.cmdline or ''} usher.name={dom.name}".strip(),
        )

    def _watch(self, dom: Domain, pid: int, monitor: Monitor) -> None:
        dom.pid, dom.monitor = pid, monitor
        dom.expect_exit = False
        dom.exited = asyncio.Event()
        dom.watcher = asyncio.create_task(self._watcher(dom, pid, monitor), name=f"qemu-{dom.id}")

    async def _watcher(self, dom: Domain, pid: int, monitor: Monitor) -> None:
        """Notice QEMU's end the moment its QMP connection closes; report it unless an
        operation caused it (``expect_exit``) or it was an incoming migration's QEMU."""
        while monitor.connected and proc.is_alive(pid):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(monitor.wait_closed(), WATCH_INTERVAL)
        # The socket closes a moment before the process turns into a zombie.
        await proc.wait_gone(pid, KILL_TIMEOUT)
        state, reason = ending(monitor.shutdown, proc.how_it_ended(pid))
        await monitor.close()
        dom.monitor = dom.watcher = None
        if proc.is_alive(pid):  # a QEMU that cannot be controlled any more is no use
            proc.kill(pid)
            await proc.wait_gone(pid, KILL_TIMEOUT)
            state, reason = VMState.ERROR, "QEMU hung up its QMP connection; killed it"
        if dom.expect_exit:
            dom.exited.set()
            return
        log.warning("VM %s: %s", dom.id, reason)
        self._set_ended(dom, state, reason)
        dom.exited.set()
        if dom.incoming:
            return
        try:
            await self.on_state_change(dom.id, state, reason)
        except Exception:
            log.exception("VM %s: reporting its state change failed", dom.id)

    async def _exited(self, dom: Domain, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dom.exited.wait(), timeout)
        return dom.exited.is_set()

    async def _halt(self, dom: Domain) -> None:
        """End ``dom``'s QEMU: ``quit``, then SIGKILL if it lingers."""
        dom.expect_exit = True
        if dom.monitor is not None and not dom.exited.is_set():
            with contextlib.suppress(MonitorError):
                await dom.monitor.execute("quit", timeout=KILL_TIMEOUT)
            if await self._exited(dom, KILL_TIMEOUT):
                self._forget_process(dom)
                return
        await self._end_leftover(dom)

    async def _end_leftover(self, dom: Domain) -> None:
        """SIGKILL whatever QEMU process ``dom`` still has, and wait for its end."""
        dom.expect_exit = True
        pid = dom.pid
        if pid is not None and proc.runs_with(pid, self._local(dom.id, PIDFILE)):
            proc.kill(pid)
            if not await proc.wait_gone(pid, KILL_TIMEOUT):
                raise DriverError(f"VM {dom.id}: QEMU (pid {pid}) does not die")
        if dom.watcher is not None:
            await self._exited(dom, KILL_TIMEOUT)
        self._forget_process(dom)

    def _forget_process(self, dom: Domain) -> None:
        if dom.watcher is not None:
            dom.watcher.cancel()
        dom.pid = dom.monitor = dom.watcher = None
        self._remove_runtime_files(dom.id)

    def _set_ended(self, dom: Domain, state: VMState, reason: str | None) -> None:
        """``dom``'s QEMU is gone: record the state it ended in."""
        self._forget_process(dom)
        dom.state, dom.reason = state, reason
        if os.path.isdir(self._local(dom.id)):  # not destroyed meanwhile
            self._save(dom)

    async def _keep_running(self, dom: Domain) -> None:
        """After a failed migration QEMU resumes the guest itself; make sure it did."""
        monitor = self._monitor(dom)
        status = (await monitor.execute("query-status"))["status"]
        if dom.state is VMState.RUNNING and status != "running":
            await monitor.execute("cont")

    @staticmethod
    async def _follow_migration(monitor: Monitor, deadline: float) -> dict[str, Any]:
        """Poll ``query-migrate`` until the migration is over or ``deadline`` passes."""
        loop = asyncio.get_running_loop()
        while True:
            status: dict[str, Any] = await monitor.execute("query-migrate")
            if status.get("status") in _MIGRATION_OVER or loop.time() >= deadline:
                return status
            await asyncio.sleep(0.05)

    # helpers: records -----------------------------------------------------------------------

    def _get(self, vm_id: str) -> Domain:
        try:
            return self._domains[vm_id]
        except KeyError:
            raise UnknownVM(vm_id) from None

    @staticmethod
    def _require(dom: Domain, action: str, states: frozenset[VMState]) -> None:
        if dom.state not in states:
            raise InvalidTransition(dom.id, dom.state, action)

    @staticmethod
    def _monitor(dom: Domain) -> Monitor:
        if dom.monitor is None or not dom.monitor.connected:
            raise DriverError(f"VM {dom.id}: lost the QMP connection to its QEMU")
        return dom.monitor

    @contextlib.contextmanager
    def _claim(self, vm_id: str, spec: VMSpec) -> Iterator[None]:
        """Hold ``spec``'s vCPUs and memory while a VM boots, so concurrent boots cannot
        overbook the host; a booted VM holds them by being live."""
        held = [d.spec for d in self._domains.values() if d.state in LIVE and d.id != vm_id]
        held += self._claims.values()
        free_vcpus = self._vcpus - sum(s.vcpus for s in held)
        free_memory_mb = self._memory_mb - sum(s.memory_mb for s in held)
        if spec.vcpus > free_vcpus or spec.memory_mb > free_memory_mb:
            raise InsufficientCapacity(
                f"VM {vm_id} needs {spec.vcpus} vCPUs and {spec.memory_mb} MB, but only "
                f"{free_vcpus} vCPUs and {free_memory_mb} MB are free on this host"
            )
        self._claims[vm_id] = spec
        try:
            yield
        finally:
            del self._claims[vm_id]

    def _save(self, dom: Domain) -> None:
        """Write ``dom``'s record atomically."""
        path = self._local(dom.id, RECORD)
        with open(f"{path}.tmp", "w", encoding="utf-8") as file:
            json.dump(dom.record(), file)
        os.replace(f"{path}.tmp", path)

    def _remove_runtime_files(self, vm_id: str) -> None:
        for name in (PIDFILE, QMP_SOCKET):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._local(vm_id, name))

    def _take_lease(self, vm_id: str) -> None:
        """Note in the shared VM dir that this node runs the VM now."""
        with open(self._shared(vm_id, LEASE), "w", encoding="utf-8") as file:
            file.write(self._node)

    def _holds_lease(self, vm_id: str) -> bool:
        try:
            with open(self._shared(vm_id, LEASE), encoding="utf-8") as file:
                return file.read() == self._node
        except FileNotFoundError:
            return True


async def _ip(*args: str) -> None:
    """Run ``ip ARGS``; raises :class:`DriverError` with its message."""
    ip = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await ip.communicate()
    if ip.returncode != 0:
        raise DriverError(f"ip {' '.join(args)} failed: {stderr.decode().strip()}")
