"""The ``qemu`` driver's table of VMs and their QEMU processes: booting a QEMU, watching it,
ending it, and holding the host's vCPUs and memory while VMs boot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Iterator

from usher.images import catalog
from usher.model import VMSpec, VMState
from usher.vmm import qemu_process as proc
from usher.vmm.base import (
    DriverError,
    Guest,
    InvalidTransition,
    StateCallback,
    UnknownVM,
)
from usher.vmm.capacity import require_room
from usher.vmm.qemu_argv import Nic, bridge_of, kernel_boot, qemu_argv, tap_name
from usher.vmm.qemu_domain import LIVE, Domain, ending
from usher.vmm.qemu_files import (
    CONSOLE,
    CONSOLE_SOCKET,
    PIDFILE,
    QEMU_LOG,
    QMP_SOCKET,
    SEED,
    VMFiles,
)
from usher.vmm.qemu_monitor import Monitor, MonitorError
from usher.vmm.qemu_seed import prepare_guest_access

log = logging.getLogger(__name__)

KILL_TIMEOUT = 5.0
"""Seconds QEMU gets to end after ``quit`` or SIGKILL."""
WATCH_INTERVAL = 1.0
"""Seconds between two looks at ``/proc/<pid>/stat`` while the QMP connection is quiet."""


class Guests:
    """This node's VMs (``domains``, by id) and their QEMU processes. ``report`` hears of a
    QEMU that ended on its own (not one an operation ended, nor an incoming one)."""

    def __init__(
        self,
        files: VMFiles,
        *,
        binary: str,
        bridge: str | None,
        forward_host: str,
        vcpus: int,
        memory_mb: int,
        report: StateCallback,
    ) -> None:
        self.files = files
        self.domains: dict[str, Domain] = {}
        self._binary = binary
        self._bridge = bridge
        self._forward_host = forward_host
        self._vcpus = vcpus
        self._memory_mb = memory_mb
        self._report = report
        self._claims: dict[str, VMSpec] = {}

    # the table ------------------------------------------------------------------------------

    def get(self, vm_id: str) -> Domain:
        try:
            return self.domains[vm_id]
        except KeyError:
            raise UnknownVM(vm_id) from None

    @staticmethod
    def require(dom: Domain, action: str, states: frozenset[VMState]) -> None:
        if dom.state not in states:
            raise InvalidTransition(dom.id, dom.state, action)

    @staticmethod
    def monitor(dom: Domain) -> Monitor:
        if dom.monitor is None or not dom.monitor.connected:
            raise DriverError(f"VM {dom.id}: lost the QMP connection to its QEMU")
        return dom.monitor

    @contextlib.contextmanager
    def claim(self, vm_id: str, spec: VMSpec) -> Iterator[None]:
        """Hold ``spec``'s vCPUs and memory while a VM boots, so concurrent boots cannot
        overbook the host; a booted VM holds them by being live."""
        held = [d.spec for d in self.domains.values() if d.state in LIVE and d.id != vm_id]
        held += self._claims.values()
        require_room(vm_id, spec, held, vcpus=self._vcpus, memory_mb=self._memory_mb)
        self._claims[vm_id] = spec
        try:
            yield
        finally:
            del self._claims[vm_id]

    async def switch(self, dom: Domain, command: str, state: VMState) -> None:
        """Run the QMP ``command`` that puts ``dom`` in ``state`` (``stop``, ``cont``) and
        record it. Called off, it still waits for QEMU's answer (which comes at once) and
        records what QEMU did before the cancellation goes on."""
        answer = asyncio.ensure_future(self.monitor(dom).execute(command))
        try:
            await asyncio.shield(answer)
        except asyncio.CancelledError:
            await asyncio.wait([answer], timeout=KILL_TIMEOUT)
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                dom.state = state
            raise
        dom.state = state

    def save(self, dom: Domain) -> None:
        """Write ``dom``'s record atomically."""
        self.files.save_record(dom.id, dom.record())

    async def forget(self, vm_id: str) -> bool:
        """Kill the VM's QEMU and remove its records here; False if there was no such VM."""
        dom = self.domains.get(vm_id)
        if dom is None:
            return False
        await self.end_leftover(dom)
        del self.domains[vm_id]
        shutil.rmtree(self.files.local(vm_id), ignore_errors=True)
        return True

    # QEMU processes -------------------------------------------------------------------------

    async def prepare_access(self, dom: Domain, guest: Guest, *, write_seed: bool) -> None:
        """Give ``dom`` the cloud-init seed and SSH forward ``guest`` asks for (see
        :mod:`usher.vmm.qemu_seed`) before it boots."""
        await prepare_guest_access(
            dom,
            guest,
            self.files,
            bridge=self._bridge,
            forward_host=self._forward_host,
            write_seed=write_seed,
        )

    async def boot(self, dom: Domain) -> None:
        """Launch ``dom``'s QEMU and open its QMP session; QEMU runs the guest (or, incoming,
        waits for it) when this returns. On failure nothing of the attempt is left."""
        os.makedirs(self.files.local(dom.id), exist_ok=True)
        self.files.remove_runtime_files(dom.id)
        taps: list[tuple[str, str]] = []
        nics: list[tuple[Nic, str | None]] = []
        for index, nic in enumerate(dom.nics):
            bridge = bridge_of(nic, self._bridge)
            tap = None
            if bridge is not None:
                if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
                    raise DriverError(f"VM {dom.id}: there is no Linux bridge {bridge} here")
                tap = tap_name(self.files.node, dom.id, index)
                taps.append((tap, bridge))
            nics.append((nic, tap))
        argv = qemu_argv(
            binary=self._binary,
            accel=dom.accel,
            name=dom.name,
            spec=dom.spec,
            disk=self.files.shared(dom.id, catalog.DISK),
            console=self.files.shared(dom.id, CONSOLE),
            console_socket=CONSOLE_SOCKET,
            qmp_socket=QMP_SOCKET,
            log=QEMU_LOG,
            nics=nics,
            kernel=kernel_boot(self.files.storage, dom.image, dom.name),
            incoming=dom.incoming,
            seed=self.files.shared(dom.id, SEED) if dom.seed else None,
            ssh_forward=dom.ssh_forward,
            data_disks=tuple(
                self.files.shared(dom.id, catalog.data_disk_name(index))
                for index in range(1, len(dom.spec.disks) + 1)
            ),
        )
        self.save(dom)
        pidfile = self.files.local(dom.id, PIDFILE)
        with contextlib.suppress(FileNotFoundError):  # what an earlier QEMU said is not news
            os.unlink(self.files.local(dom.id, QEMU_LOG))
        pid = await proc.launch(argv, cwd=self.files.local(dom.id), pidfile=pidfile, log=QEMU_LOG)
        monitor = None
        try:
            for tap, bridge in taps:
                await _ip("link", "set", "dev", tap, "master", bridge, "up")
            monitor, status = await self.connect(dom)
            expected = "inmigrate" if dom.incoming else "running"
            if status != expected:
                raise DriverError(f"VM {dom.id}: QEMU is {status} instead of {expected}")
        except BaseException:
            if monitor is not None:
                await monitor.close()
            proc.kill(pid)
            await proc.wait_gone(pid, KILL_TIMEOUT)
            self.files.remove_runtime_files(dom.id)
            raise
        self.watch(dom, pid, monitor)
        log.info("VM %s: QEMU pid %d %s", dom.id, pid, "waits for it" if dom.incoming else "runs")

    async def connect(self, dom: Domain) -> tuple[Monitor, str]:
        """A QMP session with ``dom``'s QEMU, and QEMU's run state."""
        monitor = await Monitor.connect(self.files.local(dom.id, QMP_SOCKET), dom.id)
        try:
            return monitor, (await monitor.execute("query-status"))["status"]
        except BaseException:
            await monitor.close()
            raise

    def watch(self, dom: Domain, pid: int, monitor: Monitor) -> None:
        """Watch ``dom``'s QEMU (process ``pid``, QMP session ``monitor``) from now on."""
        dom.pid, dom.monitor = pid, monitor
        dom.expect_exit = False
        dom.exited = asyncio.Event()
        dom.watcher = asyncio.create_task(self._watcher(dom, pid, monitor), name=f"qemu-{dom.id}")

    async def unwatch(self, dom: Domain) -> None:
        """Stop watching ``dom`` and close its QMP session; its QEMU runs on."""
        if dom.watcher is not None:
            dom.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dom.watcher
            dom.watcher = None
        if dom.monitor is not None:
            await dom.monitor.close()
            dom.monitor = None

    async def _watcher(self, dom: Domain, pid: int, monitor: Monitor) -> None:
        """Notice QEMU's end the moment its QMP connection closes; report it unless an
        operation caused it (``expect_exit``) or it was an incoming migration's QEMU."""
        while monitor.connected and proc.is_alive(pid):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(monitor.wait_closed(), WATCH_INTERVAL)
        # The socket closes a moment before the process turns into a zombie.
        await proc.wait_gone(pid, KILL_TIMEOUT)
        state, reason = ending(
            monitor.shutdown, proc.how_it_ended(pid), self.files.last_qemu_message(dom.id)
        )
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
        self.set_ended(dom, state, reason)
        dom.exited.set()
        if dom.incoming:
            return
        try:
            await self._report(dom.id, state, reason)
        except Exception:
            log.exception("VM %s: reporting its state change failed", dom.id)

    async def exited(self, dom: Domain, timeout: float) -> bool:
        """Whether ``dom``'s QEMU ended within ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: it may lose a cancellation
                await dom.exited.wait()
        return dom.exited.is_set()

    async def halt(self, dom: Domain) -> None:
        """End ``dom``'s QEMU: ``quit``, then SIGKILL if it lingers."""
        dom.expect_exit = True
        if dom.monitor is not None and not dom.exited.is_set():
            with contextlib.suppress(MonitorError):
                await dom.monitor.execute("quit", timeout=KILL_TIMEOUT)
            if await self.exited(dom, KILL_TIMEOUT):
                self._forget_process(dom)
                return
        await self.end_leftover(dom)

    async def end_leftover(self, dom: Domain) -> None:
        """SIGKILL whatever QEMU process ``dom`` still has, and wait for its end."""
        dom.expect_exit = True
        pid = dom.pid
        if pid is not None and proc.runs_with(pid, self.files.local(dom.id, PIDFILE)):
            proc.kill(pid)
            if not await proc.wait_gone(pid, KILL_TIMEOUT):
                raise DriverError(f"VM {dom.id}: QEMU (pid {pid}) does not die")
        if dom.watcher is not None:
            await self.exited(dom, KILL_TIMEOUT)
        self._forget_process(dom)

    def _forget_process(self, dom: Domain) -> None:
        if dom.watcher is not None:
            dom.watcher.cancel()
        dom.pid = dom.monitor = dom.watcher = None
        self.files.remove_runtime_files(dom.id)

    def set_ended(self, dom: Domain, state: VMState, reason: str | None) -> None:
        """``dom``'s QEMU is gone: record the state it ended in."""
        self._forget_process(dom)
        dom.state, dom.reason = state, reason
        if os.path.isdir(self.files.local(dom.id)):  # not destroyed meanwhile
            self.save(dom)


async def _ip(*args: str) -> None:
    """Run ``ip ARGS``; raises :class:`DriverError` with its message."""
    ip = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await ip.communicate()
    if ip.returncode != 0:
        raise DriverError(f"ip {' '.join(args)} failed: {stderr.decode().strip()}")
