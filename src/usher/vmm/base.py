"""The VMM driver interface: what every hypervisor driver (``fake``, ``qemu``, …) implements.

A driver lives inside an LNM and manages the VMs of one physical host. Its contract:

* Every method is ``async`` and may be called concurrently for *different* VMs; the LNM never
  calls two methods for the *same* VM at once.
* A method that succeeds leaves the VM in the state it names (``start`` → running, ``stop`` →
  stopped, …). A method that fails raises :class:`DriverError` with a message a person can act
  on, and leaves the VM as it was (a failed ``start`` leaves nothing behind).
* ``destroy`` is idempotent: destroying a VM the driver does not know succeeds.
* Invalid transitions (pausing a stopped VM, resuming a running one) raise
  :class:`InvalidTransition`; unknown VMs raise :class:`UnknownVM`.
* State changes the driver notices on its own (a guest that powers itself off, a process that
  dies) are reported through the ``on_state_change`` callback given at construction.
* Drivers declare their :class:`Capability` set, so the controller refuses what a driver cannot
  do with a clear message instead of failing midway.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from usher.model import Image, VMSpec, VMState


class Capability(StrEnum):
    PAUSE = "pause"
    REBOOT = "reboot"
    LIVE_MIGRATE = "live_migrate"
    CONSOLE = "console"


class DriverError(Exception):
    """An operation failed; the message is shown to the user."""


class UnknownVM(DriverError):
    def __init__(self, vm_id: str) -> None:
        super().__init__(f"VM {vm_id} is not on this node")
        self.vm_id = vm_id


class InvalidTransition(DriverError):
    def __init__(self, vm_id: str, state: VMState, action: str) -> None:
        super().__init__(f"cannot {action} VM {vm_id}: it is {state.value}")
        self.vm_id = vm_id
        self.state = state
        self.action = action


class InsufficientCapacity(DriverError):
    """The host cannot fit the VM."""


class Guest(BaseModel):
    """What the LNM tells the driver about a VM it should run.

    ``image`` is the catalogue entry of ``spec.image`` (None when the controller has none);
    its files are relative to ``<storage>/images/<image.name>/``.
    """

    id: str
    name: str
    spec: VMSpec
    image: Image | None = None


class DomainInfo(BaseModel):
    """What the driver knows about one VM it runs: the truth about that VM."""

    id: str
    name: str
    spec: VMSpec
    state: VMState
    reason: str | None = None
    cpu_seconds: float = 0.0
    memory_used_mb: float = 0.0


class MigrationResult(BaseModel):
    """Figures of a finished live migration, reported in the operation result."""

    total_ms: float
    downtime_ms: float | None = None
    transferred_bytes: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


StateCallback = Callable[[str, VMState, str | None], Awaitable[None]]
"""``await on_state_change(vm_id, new_state, reason)``"""


async def _ignore_state_change(vm_id: str, state: VMState, reason: str | None) -> None:
    return None


class Driver(abc.ABC):
    """Base class of VMM drivers. Subclasses set ``name`` and ``capabilities``."""

    name: str = "base"
    capabilities: frozenset[Capability] = frozenset()

    def __init__(
        self,
        *,
        state_dir: str | None = None,
        on_state_change: StateCallback | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.on_state_change: StateCallback = on_state_change or _ignore_state_change
        self.options = dict(options or {})

    # life cycle of the driver itself -------------------------------------------------------

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Attach to whatever already runs (guests left by an earlier LNM) before first use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Detach. Guests keep running: closing a driver never stops a VM."""

    # inventory ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def list(self) -> list[DomainInfo]:
        """Every VM this driver runs or knows on this host, with its true state."""

    async def info(self, vm_id: str) -> DomainInfo:
        """One VM's :class:`DomainInfo`; raises :class:`UnknownVM`."""
        for dom in await self.list():
            if dom.id == vm_id:
                return dom
        raise UnknownVM(vm_id)

    # operations ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, guest: Guest) -> DomainInfo:
        """Boot ``guest``; creates it if new, boots it if stopped. Afterwards it is running."""

    @abc.abstractmethod
    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """Power off: graceful first (up to ``timeout`` s) unless ``hard``. Afterwards stopped."""

    @abc.abstractmethod
    async def destroy(self, vm_id: str) -> None:
        """Power off and remove the VM and its disks. Idempotent."""

    async def fence(self, vm_id: str) -> None:
        """Kill this host's copy of a VM and forget it, leaving its shared disks alone: the
        controller fences a copy that runs where the VM's record does not say (the VM may
        run, with those disks, elsewhere). Idempotent. The default destroys, for drivers
        whose ``destroy`` leaves shared disks to the node that holds the VM's lease."""
        await self.destroy(vm_id)

    async def pause(self, vm_id: str) -> None:
        """Freeze a running VM. Afterwards paused."""
        raise DriverError(f"the {self.name} driver cannot pause VMs")

    async def resume(self, vm_id: str) -> None:
        """Thaw a paused VM. Afterwards running."""
        raise DriverError(f"the {self.name} driver cannot resume VMs")

    async def reboot(self, vm_id: str) -> None:
        """Reset a running VM's guest. Afterwards running."""
        raise DriverError(f"the {self.name} driver cannot reboot VMs")

    async def cycle(self, guest: Guest) -> DomainInfo:
        """Power off (hard) and boot again. Afterwards running."""
        dom = await self.info(guest.id)
        if dom.state in (VMState.RUNNING, VMState.PAUSED):
            await self.stop(guest.id, hard=True)
        return await self.start(guest)

    # live migration: the controller calls prepare on the target, migrate on the source,
    # then finish (or abort) on the target.

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        """Reserve resources for an incoming VM; return the URI the source migrates to."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        """Send a running VM to ``uri``. On success the VM is gone from this host; on failure
        it still runs here and :class:`DriverError` is raised."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        """Confirm an incoming migration completed; afterwards the VM runs here."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def abort_incoming(self, vm_id: str) -> None:
        """Drop an incoming VM after a failed migration. Idempotent."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        """Settle an incoming migration no controller will finish (it was cut short by a
        controller or LNM restart): run the VM here if its whole state arrived (its source
        let go of it) and return its info; otherwise drop it and return None."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    # console ------------------------------------------------------------------------------

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        """The VM's serial console output from ``offset`` on."""
        raise DriverError(f"the {self.name} driver has no console")


def load_driver(name: str, **kwargs: Any) -> Driver:
    """Build the driver called ``name`` (``fake``, ``qemu``, …)."""
    import importlib

    try:
        module = importlib.import_module(f"usher.vmm.{name}")
    except ModuleNotFoundError as exc:
        raise DriverError(f"unknown VMM driver {name!r}") from exc
    driver_cls: type[Driver] = module.DRIVER
    return driver_cls(**kwargs)
