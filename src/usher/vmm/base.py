"""The VMM driver interface: what every hypervisor driver (``fake``, ``qemu``, …) implements.

A driver lives inside an LNM and manages the VMs of one physical host. Drivers are found by
name through the ``usher.drivers`` entry-point group (:func:`load_driver`), so a site ships
its own as a package of its own (``examples/usher-example-driver`` shows one). A driver
imports only this module and :mod:`usher.model`. Its contract:

* **Concurrency.** Every method is ``async`` and may be called concurrently for *different*
  VMs; the LNM never calls two methods for the *same* VM at once, except the console's
  (``console_log``, ``console_end``, ``console_write``), which may come at any time, also
  while another call for that VM runs, and must then fail or succeed without disturbing it.
* **Postconditions.** A method that succeeds leaves the VM in the state its docstring names
  (``start`` → running, ``stop`` → stopped, ``destroy`` → gone, …), and :meth:`Driver.list`
  reports it so at once. A method that fails raises :class:`DriverError` with a message a
  person can act on, and leaves the VM as it was (a failed ``start`` of a new VM leaves
  nothing behind: ``list()`` does not show it).
* **Cancellation.** Any call may be cancelled (``asyncio.CancelledError`` raised at any
  ``await``): the controller calls an operation off, or the LNM shuts down. A cancelled call
  must leave the VM as it was *or* as the call would have left it had it succeeded, never in
  between, release what the call claimed (capacity, listeners, processes it started, leases),
  and re-raise the cancellation. In either case ``list()`` tells the truth about the VM
  afterwards (e.g. a ``stop`` cancelled after the guest got the power button may still end
  the guest, which is then reported ``stopped``). A cancelled ``migrate`` calls the migration
  off: the VM goes on running here.
* **Inventory.** ``list()`` reports every VM the driver has on this host, in its true state:
  an *incoming* VM (from :meth:`Driver.prepare_incoming` until it is finished, aborted or
  settled) as ``migrating``; a VM being sent away as what it is (``running`` or ``paused``)
  until ``migrate`` returns.
* ``destroy``, ``fence`` and ``abort_incoming`` are idempotent: for a VM the driver does not
  know they succeed.
* Invalid transitions (pausing a stopped VM, resuming a running one) raise
  :class:`InvalidTransition`; unknown VMs raise :class:`UnknownVM`.
* State changes the driver notices on its own (a guest that powers itself off, a process that
  dies) are reported through the ``on_state_change`` callback given at construction (the LNM
  replaces it with its own before :meth:`Driver.open`); changes a method makes are not.
* **Capabilities.** A driver declares what it can do beyond start, stop and destroy as a set
  of :class:`usher.model.Capability` (``Driver.capabilities``); the controller refuses an
  operation a node's driver lacks with a clear message instead of failing midway. A method
  whose capability a driver lacks raises :class:`DriverError` (the defaults here do).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from importlib.metadata import entry_points
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from usher.model import Capability, Image, Snapshot, VMSpec, VMState

__all__ = [
    "DRIVER_GROUP",
    "META_LIMITS",
    "Capability",
    "DomainInfo",
    "Driver",
    "DriverError",
    "Guest",
    "InsufficientCapacity",
    "InvalidTransition",
    "Meta",
    "MigrationResult",
    "StateCallback",
    "UnknownVM",
    "installed_drivers",
    "load_driver",
]

DRIVER_GROUP = "usher.drivers"
"""The entry-point group drivers are found in: ``name = "package.module:DriverClass"``."""


META_LIMITS = (16, 64, 4096)
"""A VM's ``meta`` holds at most 16 keys of at most 64 characters, each value at most 4096."""


def _check_meta(meta: dict[str, str]) -> dict[str, str]:
    keys, key_len, value_len = META_LIMITS
    if len(meta) > keys:
        raise ValueError(f"meta holds {len(meta)} keys; at most {keys}")
    for key, value in meta.items():
        if not key or len(key) > key_len:
            raise ValueError(f"meta key {key[:key_len]!r}… must have 1 to {key_len} characters")
        if len(value) > value_len:
            raise ValueError(f"meta value of {key!r} is longer than {value_len} characters")
    return meta


Meta = Annotated[dict[str, str], AfterValidator(_check_meta)]
"""What the controller keeps with a VM on its node (:attr:`Guest.meta`): opaque, bounded."""


T = TypeVar("T")


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is called off meanwhile (the cancellation
    is re-raised once it ended): for steps that must not stop halfway, such as destroying a
    domain and then undefining it, or ending a source whose guest went to its target."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


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
    its files are relative to ``<storage>/images/<image.name>/``. ``config`` is the guest's
    cloud-init configuration when its image runs cloud-init (``image.cloud_init``):
    ``meta_data`` (a mapping), ``user_data`` (text) and ``network_config`` (a mapping or
    None), which a driver hands to the guest as a NoCloud seed
    (:func:`usher.images.nocloud.build_seed`) at every boot, and keeps attached on the target
    of a live migration.

    ``meta`` is what the controller asks the driver to keep with the VM (who it belongs to,
    as Nova keeps an instance's owner in its libvirt domain): opaque to the driver, small
    (:data:`META_LIMITS`). The driver keeps it with the VM on this host, beyond an LNM
    restart, and :meth:`Driver.info` and :meth:`Driver.list` report it back unchanged in
    :attr:`DomainInfo.meta`, also on the target of a live migration (from the ``guest`` of
    :meth:`Driver.prepare_incoming`). A later :meth:`Driver.start` or :meth:`Driver.cycle`
    replaces it by its ``guest``'s.
    """

    id: str
    name: str
    spec: VMSpec
    image: Image | None = None
    config: dict[str, Any] | None = None
    meta: Meta = Field(default_factory=dict)


class DomainInfo(BaseModel):
    """What the driver knows about one VM it runs: the truth about that VM. ``meta`` is the
    :attr:`Guest.meta` it was last started (or received) with, unchanged ({} for a VM a
    driver recorded before drivers kept it)."""

    id: str
    name: str
    spec: VMSpec
    state: VMState
    reason: str | None = None
    meta: Meta = Field(default_factory=dict)
    cpu_seconds: float = 0.0
    memory_used_mb: float = 0.0
    endpoints: dict[str, str] = Field(
        default_factory=dict,
        description="how to reach the guest's services from outside, by name: "
        "``ssh`` is ``host:port`` where the guest's port 22 is forwarded (user-mode networking)",
    )
    resumed_at: float | None = Field(
        default=None,
        description="from finish_incoming: when the arrived guest began to run here (seconds "
        "since the epoch, this host's clock, as the hypervisor stamped it); None if unknown",
    )


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
    """Base class of VMM drivers. Subclasses set ``name`` and ``capabilities``.

    The constructor only reads its arguments (it neither touches guests nor does I/O that
    may block); :meth:`open` attaches to the host. ``options`` are the site's
    ``--driver-option`` values, plus ``vcpus``, ``memory_mb`` and ``storage_dir`` from the
    LNM; a driver raises :class:`DriverError` for an option it cannot use.
    """

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
        """Attach to whatever already runs (guests left by an earlier LNM) before first use.

        Afterwards :meth:`list` reports every VM an earlier driver on this ``state_dir`` left,
        in its true state now (a guest that ended meanwhile is ``error`` or ``stopped``)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Detach. Guests keep running: closing a driver never stops a VM, and the next
        :meth:`open` on the same ``state_dir`` finds them."""

    # inventory ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def list(self) -> list[DomainInfo]:
        """Every VM this driver runs or knows on this host, with its true state: incoming
        VMs (prepared, not yet finished, aborted or settled) are ``migrating``. Changes
        nothing."""

    async def info(self, vm_id: str) -> DomainInfo:
        """One VM's :class:`DomainInfo`, as :meth:`list` reports it; raises
        :class:`UnknownVM`. Changes nothing."""
        for dom in await self.list():
            if dom.id == vm_id:
                return dom
        raise UnknownVM(vm_id)

    # operations ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, guest: Guest) -> DomainInfo:
        """Boot ``guest``: create it if new, boot it if ``stopped`` or ``error`` (anything
        else raises :class:`InvalidTransition`). Afterwards it is ``running`` here, holding
        its vCPUs and memory, and the returned info says so. Raises
        :class:`InsufficientCapacity` when the host cannot fit it.

        Its disks are in the shared storage (:func:`usher.images.catalog.vm_disks`): at its
        first start a root disk of ``spec.disk_gb`` GiB (None: its image's size; a smaller
        size than the image's is refused) and one data disk per entry of ``spec.disks``, of
        its ``size_gb``, attached after the root disk in that order; at later starts, on any
        node, the same files as they are. A live migration's target attaches the same disks."""

    @abc.abstractmethod
    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        """Power off a ``running`` or ``paused`` VM: graceful first (up to ``timeout`` s, a
        driver default if None) unless ``hard``, then hard. Afterwards it is ``stopped``: still
        listed, its disks kept, its vCPUs and memory free."""

    @abc.abstractmethod
    async def destroy(self, vm_id: str) -> None:
        """Power off and remove the VM and its disks. Afterwards :meth:`list` does not show
        it. Idempotent: destroying a VM the driver does not know succeeds."""

    async def fence(self, vm_id: str) -> None:
        """Kill this host's copy of a VM and forget it, leaving its shared disks alone: the
        controller fences a copy that runs where the VM's record does not say (the VM may
        run, with those disks, elsewhere). Afterwards :meth:`list` does not show it.
        Idempotent. The default destroys, for drivers whose ``destroy`` leaves shared disks to
        the node that holds the VM's lease."""
        await self.destroy(vm_id)

    async def pause(self, vm_id: str) -> None:
        """Freeze a ``running`` VM (capability ``pause``). Afterwards it is ``paused``, still
        holding its vCPUs and memory."""
        raise DriverError(f"the {self.name} driver cannot pause VMs")

    async def resume(self, vm_id: str) -> None:
        """Thaw a ``paused`` VM (capability ``pause``). Afterwards it is ``running``."""
        raise DriverError(f"the {self.name} driver cannot resume VMs")

    async def reboot(self, vm_id: str) -> None:
        """Reset a ``running`` VM's guest (capability ``reboot``). Afterwards it is
        ``running``, its guest booted again."""
        raise DriverError(f"the {self.name} driver cannot reboot VMs")

    async def cycle(self, guest: Guest) -> DomainInfo:
        """Power off (hard) if ``running`` or ``paused``, and boot again. Afterwards it is
        ``running``, as after :meth:`start`. Called off once the guest is off, the default
        boots it to the end before it re-raises the cancellation (never leaving it in
        between, ``stopped``)."""
        dom = await self.info(guest.id)
        if dom.state not in (VMState.RUNNING, VMState.PAUSED):
            return await self.start(guest)
        try:
            await self.stop(guest.id, hard=True)
        except asyncio.CancelledError:
            if (await self.info(guest.id)).state is not VMState.STOPPED:
                raise
            await self._start_to_the_end(guest)
            raise
        info, cancelled = await self._start_to_the_end(guest)
        if cancelled:
            raise asyncio.CancelledError
        return info

    async def _start_to_the_end(self, guest: Guest) -> tuple[DomainInfo, bool]:
        """:meth:`start` ``guest``, to its end even if called off meanwhile: its info, and
        whether a cancellation came (for the caller to re-raise)."""
        starting = asyncio.ensure_future(self.start(guest))
        cancelled = False
        while True:
            try:
                return await asyncio.shield(starting), cancelled
            except asyncio.CancelledError:
                if starting.cancelled():
                    raise
                cancelled = True

    # live migration (capability ``live_migrate``): the controller calls prepare_incoming on
    # the target, migrate on the source, then finish_incoming (or abort_incoming) on the
    # target; settle_incoming when a restart cut that short.

    async def prepare_incoming(self, guest: Guest, listen_host: str) -> str:
        """Reserve resources for an incoming VM and wait for it on ``listen_host``; return
        the URI the source migrates to. Afterwards :meth:`list` shows the VM ``migrating``
        (until it is finished, aborted or settled). Raises :class:`DriverError` if the VM is
        already here, :class:`InsufficientCapacity` if it does not fit."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def migrate(self, vm_id: str, uri: str, *, timeout: float) -> MigrationResult:
        """Send a ``running`` or ``paused`` VM to ``uri`` within ``timeout`` seconds. On
        success the VM is gone from this host (not listed; its shared disks stay for the
        target). If the target took the whole VM, that is success even if the connection
        broke afterwards (the target runs it once settled; a cancellation is re-raised, and
        the VM is gone all the same). Otherwise, on failure, timeout or cancellation, it
        still runs here as before and :class:`DriverError` is raised (or the cancellation
        re-raised)."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def finish_incoming(self, vm_id: str) -> DomainInfo:
        """Confirm an incoming migration completed. Afterwards the VM runs here (``running``,
        or ``paused`` if it was paused at the source). Raises :class:`DriverError` if its
        state has not all arrived (it stays ``migrating``)."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def abort_incoming(self, vm_id: str) -> None:
        """Drop an incoming VM after a failed migration, releasing what
        :meth:`prepare_incoming` reserved. Afterwards it is not listed here. Idempotent;
        refuses (:class:`InvalidTransition`) a VM that is no longer incoming."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    async def settle_incoming(self, vm_id: str) -> DomainInfo | None:
        """Settle an incoming migration no controller will finish (it was cut short by a
        controller or LNM restart): run the VM here if its whole state arrived (its source
        let go of it) and return its info, as :meth:`finish_incoming`; otherwise drop it, as
        :meth:`abort_incoming`, and return None."""
        raise DriverError(f"the {self.name} driver cannot live-migrate VMs")

    # console ------------------------------------------------------------------------------

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        """The VM's serial console output from byte ``offset`` on (capability ``console``);
        a driver may return less than all of it: ask again from ``offset + len(result)``.
        Changes nothing."""
        raise DriverError(f"the {self.name} driver has no console")

    async def console_end(self, vm_id: str) -> int:
        """Where the VM's console output ends now: the byte offset from which
        :meth:`console_log` returns nothing yet (capability ``console``). Changes nothing.
        The default reads all of the output through :meth:`console_log`; a driver that can
        tell at once overrides it."""
        end = 0
        while chunk := await self.console_log(vm_id, offset=end):
            end += len(chunk)
        return end

    async def console_write(self, vm_id: str, data: bytes) -> None:
        """Type ``data`` into the VM's serial console (capability ``console_input``).

        The VM must be ``running`` or ``paused`` (otherwise :class:`InvalidTransition`).
        Afterwards the guest has all of ``data`` to read, after whatever was typed before and
        in order (a paused guest reads it once resumed); what the guest answers shows in
        :meth:`console_log`. Nothing else changes: not the VM's state, nor the console's
        output by itself. Raises :class:`DriverError` when the console cannot take the input
        (e.g. the guest has not read what was typed before it for long); some of ``data`` may
        have reached the guest then. The default raises: no console input."""
        raise DriverError(f"the {self.name} driver takes no console input")

    # disks ---------------------------------------------------------------------------------

    async def resize_disk(self, vm_id: str, disk: int, size_gb: int) -> DomainInfo:
        """Grow disk ``disk`` (0: the root disk; N: data disk N of ``spec.disks``) of a
        ``stopped``, ``running`` or ``paused`` VM to ``size_gb`` GiB (capability
        ``resize_disk``). Afterwards the disk's virtual size is ``size_gb`` GiB, a running
        guest sees the new size at once (its partitions and file systems grow when the guest
        grows them), the returned info's ``spec`` says the new size, and nothing else has
        changed. A disk of ``size_gb`` GiB already is left alone; a smaller size (disks never
        shrink) or a disk the VM does not have raises :class:`DriverError`, another state
        :class:`InvalidTransition`; the disk is as it was then."""
        raise DriverError(f"the {self.name} driver cannot resize disks")

    # snapshots and copies of disks (capability ``snapshot``) ------------------------------
    # A snapshot covers every disk of the VM (never its cloud-init seed); its name is unique
    # among the VM's snapshots. None of these changes the VM's state.

    async def snapshot_create(self, vm_id: str, name: str) -> Snapshot:
        """Snapshot all the disks of a ``running``, ``paused`` or ``stopped`` VM as ``name``
        (a running guest's at one instant, crash-consistent; it runs on). Afterwards
        :meth:`snapshot_list` shows it last, its ``size_bytes`` the guest data it holds (what
        :meth:`disk_usage` said just before). Raises :class:`DriverError` if the VM has a
        snapshot ``name`` already, :class:`InvalidTransition` in another state; nothing is
        changed then, nor when it fails on one of the disks."""
        raise DriverError(f"the {self.name} driver cannot snapshot VMs")

    async def snapshot_list(self, vm_id: str) -> list[Snapshot]:
        """The VM's snapshots, oldest first. Changes nothing."""
        raise DriverError(f"the {self.name} driver cannot snapshot VMs")

    async def snapshot_revert(self, vm_id: str, name: str) -> None:
        """Put every disk of a ``stopped`` VM back as snapshot ``name`` holds it (any other
        state: :class:`InvalidTransition`; a running VM is stopped first by the controller's
        user). Afterwards the disks read what they read when ``name`` was taken, and
        ``name`` is still there (to revert to again); later snapshots stay too. Raises
        :class:`DriverError` for a snapshot the VM does not have."""
        raise DriverError(f"the {self.name} driver cannot snapshot VMs")

    async def snapshot_delete(self, vm_id: str, name: str) -> None:
        """Delete snapshot ``name`` of a ``running``, ``paused`` or ``stopped`` VM from all
        its disks. Afterwards :meth:`snapshot_list` does not show it and the space only it
        held is free. Raises :class:`DriverError` for a snapshot the VM does not have."""
        raise DriverError(f"the {self.name} driver cannot snapshot VMs")

    async def disk_usage(self, vm_id: str) -> int:
        """Bytes of guest data the VM's disks hold now, beyond their image's base disk: what
        a snapshot taken now would hold. Changes nothing."""
        raise DriverError(f"the {self.name} driver cannot snapshot VMs")

    async def clone_disks(self, vm_id: str, new_vm_id: str, *, snapshot: str | None) -> None:
        """Copy the disks of a ``stopped`` VM, or those of its snapshot ``snapshot`` (the VM
        in any state), as the disks of the new VM ``new_vm_id``, which :meth:`start` then
        boots (on any node of the shared storage). The copies share nothing writable with
        the source; a root disk's copy keeps the image's base disk as its backing, so it
        holds only the guest's own data. Afterwards the new VM's disks are complete; on
        failure or cancellation none of them is left. Raises :class:`DriverError` if the new
        VM has disks already."""
        raise DriverError(f"the {self.name} driver cannot copy VM disks")

    async def export_disk(self, vm_id: str, staging: str, *, snapshot: str | None) -> int:
        """Write the root disk of a ``stopped`` VM, or of its snapshot ``snapshot`` (the VM
        in any state), flattened into a standalone qcow2 (its base disk's data included), as
        ``disk.qcow2`` in ``<storage>/images/<staging>/``, a staging directory of the
        catalogue the controller made (:func:`usher.images.catalog.staging_dir`); return
        its size in bytes. On failure no such file is left."""
        raise DriverError(f"the {self.name} driver cannot copy VM disks")


def installed_drivers() -> list[str]:
    """The names of the drivers installed in the ``usher.drivers`` entry-point group."""
    return sorted({ep.name for ep in entry_points(group=DRIVER_GROUP)})


def load_driver(name: str, **kwargs: Any) -> Driver:
    """Build the driver installed as ``name`` in the ``usher.drivers`` entry-point group
    (``fake``, ``qemu``, or a site's own), passing ``kwargs`` to its constructor."""
    found = entry_points(group=DRIVER_GROUP, name=name)
    if not found:
        installed = ", ".join(installed_drivers()) or (
            "none (Usher's own are registered when it is installed: reinstall it, e.g. "
            "`pip install -e .` in a checkout)"
        )
        raise DriverError(f"unknown VMM driver {name!r}; installed drivers: {installed}")
    entry = next(iter(found))
    try:
        driver_cls = entry.load()
    except Exception as exc:  # a broken package: say which, whatever it raised
        raise DriverError(f"VMM driver {name!r} ({entry.value}) does not load: {exc!r}") from exc
    if not (isinstance(driver_cls, type) and issubclass(driver_cls, Driver)):
        raise DriverError(f"VMM driver {name!r} ({entry.value}) is not a usher.vmm.base.Driver")
    driver: Driver = driver_cls(**kwargs)
    return driver
