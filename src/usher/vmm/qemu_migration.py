"""Live migration for the ``qemu`` driver: an incoming QEMU on the target waits for the VM's
state (``-incoming defer``, then ``migrate-incoming``), the source's QEMU sends it over TCP;
the disk stays where it is, in the shared storage both nodes see.

The source pauses before its switchover (QEMU's ``pause-before-switchover``): until then the
target lacks the guest's device state and can never run it, so a migration called off then
stays here for sure. Past it the driver lets QEMU finish and lets QEMU's end decide where the
guest is; cancelling there could leave a target that got it all while the source runs on (a
QEMU without a return path cannot tell), which is two copies of one VM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from qemu.qmp import EventListener, Message

from usher.model import VMState
from usher.vmm.base import (
    DomainInfo,
    DriverError,
    Guest,
    InvalidTransition,
    MigrationResult,
    to_the_end,
)
from usher.vmm.qemu_argv import nics_of
from usher.vmm.qemu_domain import Domain
from usher.vmm.qemu_guests import KILL_TIMEOUT, Guests
from usher.vmm.qemu_monitor import Monitor, MonitorError

log = logging.getLogger(__name__)

FINISH_TIMEOUT = 30.0
"""Seconds an incoming QEMU may take to run once the source reported completion."""

_ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
_MIGRATION_OVER = frozenset({"completed", "failed", "cancelled"})
SWITCHOVER = _MIGRATION_OVER | {"pre-switchover"}
"""Where the source stops following a migration to decide: go on (``migrate-continue``), or
call it off while the target cannot have the guest yet."""
POLL = 0.005
RECHECK = 0.25
"""Seconds between looks at a migration's status when QEMU sends no event meanwhile."""
FINISH_POLL = 0.05
"""Seconds between looks at an incoming QEMU's run state when no event came meanwhile."""
SETTLE_WAIT = 5.0
"""Seconds a target being settled may take to load the rest of a stream still coming in."""


class Migrations:
    """Both ends of live migrations of ``guests``: see :class:`usher.vmm.base.Driver` for
    what each method promises."""

    def __init__(
        self,
        guests: Guests,
        *,
        accelerator: Callable[[], Awaitable[str]],
        downtime_ms: int,
        bandwidth: int,
    ) -> None:
        self._guests = guests
        self._files = guests.files
        self._accelerator = accelerator
        self._downtime_ms = downtime_ms
        self._bandwidth = bandwidth
        self._arrivals: dict[str, EventListener] = {}
        """Per incoming VM, QEMU's events telling that its guest arrived (or did not)."""

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        """Start QEMU with the guest's devices waiting for its state on ``tcp:<host>:<port>``."""
        guests = self._guests
        if guest.id in guests.domains:
            raise DriverError(f"cannot receive VM {guest.id}: it is already on this host")
        if guest.image is None:
            raise DriverError(f"cannot receive VM {guest.id}: its image is not in the catalogue")
        if not self._files.has_disk(guest.id):
            raise DriverError(
                f"cannot receive VM {guest.id}: its disk is not in {self._files.storage}; "
                "live migration needs storage that both nodes share"
            )
        dom = Domain(
            id=guest.id,
            name=guest.name,
            spec=guest.spec,
            meta=dict(guest.meta),
            image=guest.image,
            nics=nics_of(guest.id, guest.spec.nics),
            accel=await self._accelerator(),
            state=VMState.MIGRATING,
            incoming=True,
        )
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        with guests.claim(guest.id, guest.spec):
            try:
                await guests.prepare_access(dom, guest, write_seed=False)
                await guests.boot(dom)
            except BaseException:
                shutil.rmtree(self._files.local(guest.id), ignore_errors=True)
                raise
            guests.domains[guest.id] = dom
            try:
                monitor = guests.monitor(dom)
                self._arrivals[guest.id] = monitor.listener("RESUME", "MIGRATION")
                await monitor.execute(
                    "migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]},
                )
                await monitor.execute("migrate-incoming", {"uri": f"tcp:{host}:0"})
                listening = await monitor.execute("query-migrate")
                port = int(listening["socket-address"][0]["port"])
            except BaseException:
                await self.abort_incoming(guest.id)
                raise
        return f"tcp:{host}:{port}"

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        """Live-migrate to an incoming QEMU at ``uri`` (``tcp:host:port``). On success the
        source QEMU quits and the VM's records here go (its shared disk stays); on failure,
        timeout or cancellation the migration is cancelled and the VM runs on here."""
        guests = self._guests
        dom = guests.get(vm_id)
        guests.require(dom, "migrate", _ACTIVE)
        if not uri.startswith("tcp:"):
            raise DriverError(f"cannot migrate VM {vm_id} to {uri!r}: expected tcp:<host>:<port>")
        monitor = guests.monitor(dom)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await monitor.execute(
            "migrate-set-capabilities",
            {
                "capabilities": [
                    {"capability": "auto-converge", "state": True},
                    {"capability": "pause-before-switchover", "state": True},
                    {"capability": "events", "state": True},
                ]
            },
        )
        await monitor.execute(
            "migrate-set-parameters",
            {"downtime-limit": self._downtime_ms, "max-bandwidth": self._bandwidth},
        )
        with monitor.listen("MIGRATION", "STOP") as events:
            try:
                # inside: called off while QEMU takes ``migrate``, it has begun all the same
                await monitor.execute("migrate", {"uri": uri})
                status = await _follow_migration(monitor, events, began + timeout, SWITCHOVER)
            except asyncio.CancelledError:  # called off before the switchover: the guest stays
                await self._call_off(monitor, events)
                await self._keep_running(dom)
                raise
            if status["status"] == "pre-switchover":
                status, called_off = await self._switch_over(monitor, events, began + timeout)
                if called_off:
                    if status["status"] == "completed":
                        await self._let_go(dom)
                    else:
                        await self._keep_running(dom)
                    raise asyncio.CancelledError
            timed_out = status["status"] not in _MIGRATION_OVER
            if timed_out:
                log.warning("VM %s: migration timed out after %g s; cancelling it", vm_id, timeout)
                status = {"status": await self._call_off(monitor, events)}
            stopped_at = _last_stamp(events, "STOP")
            switched_at = _last_stamp(events, "MIGRATION", "device")
            completed_at = _last_stamp(events, "MIGRATION", "completed")
        if status["status"] != "completed":
            await to_the_end(self._keep_running(dom))
            why = f"timed out after {timeout:g} s" if timed_out else status.get("error-desc")
            raise DriverError(
                f"live migration of VM {vm_id} failed: {why or status['status']}; it runs on here"
            )
        total_ms = (loop.time() - began) * 1000
        # past the switchover the guest is the target's: called off now, this QEMU still ends
        await to_the_end(self._let_go(dom))
        ram = status.get("ram", {})
        return MigrationResult(
            total_ms=total_ms,
            downtime_ms=status.get("downtime"),
            transferred_bytes=ram.get("transferred"),
            extra={
                "qemu_total_ms": status.get("total-time"),
                "setup_ms": status.get("setup-time"),
                "mbps": ram.get("mbps"),
                # QEMU's stamps: the guest stopped here, its last state began to go, all was sent
                "stopped_at": stopped_at,
                "switched_at": switched_at,
                "completed_at": completed_at,
            },
        )

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        """Wait until the incoming QEMU runs the guest (the migration stream is complete):
        QEMU starts it by itself once it has loaded it, and this looks at once when QEMU
        says so (``RESUME``, or the end of the incoming migration)."""
        guests = self._guests
        dom = guests.get(vm_id)
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "finish incoming migration of")
        events = self._arrivals.get(vm_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_TIMEOUT
        while True:
            try:
                status = (await guests.monitor(dom).execute("query-status"))["status"]
            except DriverError:  # QEMU quit on a bad stream: it says why as it goes
                if await guests.exited(dom, KILL_TIMEOUT):
                    raise DriverError(
                        f"incoming migration of VM {vm_id} failed: {dom.reason}"
                    ) from None
                raise
            if status in ("running", "paused"):
                break
            if status != "inmigrate":
                raise DriverError(f"incoming migration of VM {vm_id} failed: QEMU is {status}")
            if loop.time() > deadline:
                raise DriverError(
                    f"incoming migration of VM {vm_id} did not finish within {FINISH_TIMEOUT:g} s"
                )
            await _next_event(events, FINISH_POLL)
        resumed_at = _last_stamp(events, "RESUME") if events is not None else None
        self._forget_arrival(dom.monitor, vm_id)
        dom.incoming = False
        dom.state = VMState.RUNNING if status == "running" else VMState.PAUSED
        guests.save(dom)
        self._files.take_lease(vm_id)
        return dom.info().model_copy(update={"resumed_at": resumed_at})

    async def abort_incoming(self, vm_id: str) -> None:
        """Kill an incoming QEMU and drop its records here; the shared disk stays."""
        dom = self._guests.domains.get(vm_id)
        if dom is None:
            return
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "abort incoming migration of")
        self._forget_arrival(dom.monitor, vm_id)
        await self._guests.forget(vm_id)

    def _forget_arrival(self, monitor: Monitor | None, vm_id: str) -> None:
        events = self._arrivals.pop(vm_id, None)
        if events is not None and monitor is not None:
            monitor.unlisten(events)

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        """An incoming QEMU still in ``inmigrate`` has not got the whole VM: kill it (its
        source's migration fails and the guest runs on there); one past it runs the guest."""
        dom = self._guests.get(vm_id)
        if not dom.incoming:
            raise InvalidTransition(vm_id, dom.state, "settle incoming migration of")
        status = await self._arrival(dom)
        if status in ("running", "paused"):
            return await self.finish_incoming(vm_id)
        await self.abort_incoming(vm_id)
        return None

    @staticmethod
    async def _call_off(monitor: Monitor, events: EventListener) -> str:
        """Cancel an outgoing migration that has not switched over (the target has not got
        the guest's device state, so it cannot run it) and wait until QEMU says how it
        ended."""
        with contextlib.suppress(MonitorError):
            await monitor.execute("migrate_cancel")
        deadline = asyncio.get_running_loop().time() + KILL_TIMEOUT
        status = await _follow_migration(monitor, events, deadline)
        return str(status.get("status"))

    @staticmethod
    async def _switch_over(
        monitor: Monitor, events: EventListener, deadline: float
    ) -> tuple[dict[str, Any], bool]:
        """Let a migration paused before its switchover go on, and follow it to its end,
        called off or not: from here the guest either arrives whole or stays here, and only
        QEMU's end tells which (a cancellation now could let both copies have it). Returns
        the final status and whether the caller was called off meanwhile."""

        async def finish() -> dict[str, Any]:
            await monitor.execute("migrate-continue", {"state": "pre-switchover"})
            loop = asyncio.get_running_loop()
            return await _follow_migration(
                monitor, events, max(deadline, loop.time() + KILL_TIMEOUT)
            )

        task = asyncio.ensure_future(finish())
        try:
            return await asyncio.shield(task), False
        except asyncio.CancelledError:
            await asyncio.wait([task])
            return task.result(), True

    async def _let_go(self, dom: Domain) -> None:
        """The guest went to the target: end this QEMU and forget the VM here (its shared
        disk stays)."""
        await self._guests.halt(dom)
        del self._guests.domains[dom.id]
        shutil.rmtree(self._files.local(dom.id), ignore_errors=True)

    async def _arrival(self, dom: Domain) -> str | None:
        """The incoming QEMU's run state once its migration stream is over: a source reports
        "completed" once it has sent everything, a moment before the target has loaded it,
        so a stream still coming in is waited for (up to :data:`SETTLE_WAIT` s). None once
        QEMU is gone."""
        deadline = asyncio.get_running_loop().time() + SETTLE_WAIT
        while not dom.exited.is_set():
            try:
                monitor = self._guests.monitor(dom)
                status = str((await monitor.execute("query-status"))["status"])
                if status != "inmigrate" or asyncio.get_running_loop().time() > deadline:
                    return status
                incoming = (await monitor.execute("query-migrate")).get("status")
            except DriverError:
                return None
            if incoming not in ("active", "device", "completed"):
                return status  # nothing is coming in
            await asyncio.sleep(POLL)
        return None

    async def _keep_running(self, dom: Domain) -> None:
        """After a failed migration QEMU resumes the guest itself; make sure it did."""
        monitor = self._guests.monitor(dom)
        status = (await monitor.execute("query-status"))["status"]
        if dom.state is VMState.RUNNING and status != "running":
            await monitor.execute("cont")


async def _follow_migration(
    monitor: Monitor,
    events: EventListener,
    deadline: float,
    until: frozenset[str] = _MIGRATION_OVER,
) -> dict[str, Any]:
    """Follow an outgoing migration until its status (``query-migrate``) is one of ``until``
    or ``deadline`` passes: looked at again at each of QEMU's events in ``events``, and every
    :data:`RECHECK` s whatever comes. ``pre-switchover`` is taken from its ``MIGRATION`` event
    without a look (``{"status": "pre-switchover"}``): the stopped guest waits for the
    driver there."""
    loop = asyncio.get_running_loop()
    while True:
        status: dict[str, Any] = await monitor.execute("query-migrate")
        if status.get("status") in until or loop.time() >= deadline:
            return status
        event = await _next_event(events, min(RECHECK, deadline - loop.time()))
        announced = event.get("data", {}).get("status") if event is not None else None
        if announced == "pre-switchover" and announced in until:
            return {"status": announced}


async def _next_event(events: EventListener | None, wait: float) -> Message | None:
    """The next event ``events`` hears, or None after ``wait`` s."""
    if events is None:
        await asyncio.sleep(wait)
        return None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, wait)):
            return await events.get()
    return None


def _last_stamp(events: EventListener, name: str, status: str | None = None) -> float | None:
    """When QEMU sent its last event ``name`` (a ``MIGRATION`` event: with ``status``) that
    ``events`` heard (seconds since the epoch, QEMU's host clock), or None."""
    for event in reversed(events.history):
        if event["event"] == name and status in (None, event.get("data", {}).get("status")):
            stamp = event["timestamp"]
            return float(stamp["seconds"]) + float(stamp["microseconds"]) / 1e6
    return None
