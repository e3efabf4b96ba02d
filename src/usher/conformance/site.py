"""How the conformance suite runs one driver at one site: :class:`DriverSite`, and the built-in
sites of Usher's own drivers (``fake`` and ``qemu``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import os
import re
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from usher.images.tiny import build_tiny
from usher.model import Image
from usher.vmm.base import Driver

__all__ = [
    "FAKE",
    "QEMU",
    "SITES",
    "CannotEnd",
    "DriverSite",
    "FakeSite",
    "QemuSite",
    "crash",
    "load_site",
]


class CannotEnd(Exception):
    """Raised by :meth:`DriverSite.end_guest` when the site has no way to end a guest behind
    its driver's back (in that condition): the tests that need it are skipped, saying so."""


@dataclass
class DriverSite:
    """How to run driver ``driver`` (its ``usher.drivers`` entry-point name) here.

    The suite opens a driver per host (``"a"`` and ``"b"``, whose state dirs differ and whose
    ``storage_dir`` is one shared directory, as two nodes of a cluster) the way an LNM does:
    ``load_driver(driver, state_dir=…, options=…)``, then ``open()``. Override a field or a
    method for a driver of your own; the defaults suit a driver that boots real guests of
    the ``tiny`` image.
    """

    driver: str
    options: dict[str, Any] = field(default_factory=dict)
    """Driver options given to every host (``--driver-option`` values of an LNM)."""
    vcpus: int = 4
    """Each host's capacity, given as the LNM does (options ``vcpus``, ``memory_mb``)."""
    memory_mb: int = 2048
    guest_memory_mb: int = 128
    """Memory of the suite's guests."""
    boot_timeout: float = 60.0
    """Seconds a guest may take to come up, and a migration to complete."""
    settle_seconds: float = 0.0
    """Seconds for the after-effects of a cancelled call to land (a power button a guest got
    just before its ``stop`` was called off) before the suite checks what ``list()`` says."""
    cancel_delays: tuple[float, ...] = (0.0, 0.05, 0.3)
    """When each method is called off: seconds after it is called (0: at its first await)."""
    ready: str | None = r"USHER-READY {name}\b"
    """A regex the console shows once the guest called ``{name}`` is up (None: a guest is
    up once its driver says ``running``)."""
    heartbeat: str | None = r"usher-heartbeat (\d+)"
    """A regex whose group counts up on the console while the guest runs, from 1 at each
    boot (None: the site cannot tell a running guest from a frozen one)."""
    answers_echo: bool = True
    """Whether the guest's console runs ``echo WORDS`` typed into it (``console_input``)."""
    slow: dict[str, Any] = field(default_factory=dict)
    """Options that make each operation take a while (for the cancellation tests)."""
    slow_migration: dict[str, Any] = field(default_factory=dict)
    """Options of a source host whose live migrations last a few seconds, so one can be
    broken or called off midway."""
    known_failures: dict[str, str] = field(default_factory=dict)
    """Tests the driver is known to fail, by name (``name[method]`` for a cancellation
    test), and why: they run as ``xfail`` (reported XFAIL, or XPASS, never as passed)."""

    def host_options(self, host: str, storage: Path) -> dict[str, Any]:
        """The driver options of host ``host`` (``"a"`` or ``"b"``): its capacity, the shared
        storage, and :attr:`options`."""
        return {
            "vcpus": self.vcpus,
            "memory_mb": self.memory_mb,
            "storage_dir": str(storage),
            **self.options,
        }

    def listen_host(self, host: str) -> str:
        """The address host ``host``'s incoming migrations listen on (``prepare_incoming``)."""
        return "127.0.0.1"

    def image(self, storage: Path) -> Image | None:
        """The catalogue entry of the guests' image, built into ``storage`` (once per run)."""
        return build_tiny(storage)

    async def end_guest(self, driver: Driver, vm_id: str, *, attached: bool) -> None:
        """End guest ``vm_id`` behind ``driver``'s back, as a crash would (``attached``: the
        driver is open; otherwise it was closed, as by an LNM that went away). Raise
        :class:`CannotEnd` if the site cannot."""
        raise CannotEnd(f"the {self.driver} site cannot end a guest behind its driver's back")

    async def break_migration(self, target: Driver, vm_id: str) -> None:
        """Break an incoming migration of ``vm_id`` to ``target`` midway (default: abort it)."""
        await target.abort_incoming(vm_id)

    def cleanup(self, state_dir: Path) -> None:
        """After a test: end whatever the drivers of ``state_dir`` left running (guests of a
        driver the test closed). Default: nothing."""


async def crash(driver: Driver, vm_id: str, *, attached: bool) -> None:
    """End guest ``vm_id`` through the ``crash(vm_id)`` method of a driver whose guests live
    in a table in its state dir (as ``fake``'s do). While no driver is open, a stand-in on
    the state dir plays the hypervisor that runs on without an LNM: it ends the guest in the
    table, and goes again."""
    if attached:
        await _crash_method(driver)(vm_id)
        return
    stand_in = type(driver)(state_dir=driver.state_dir, options=driver.options)
    end = _crash_method(stand_in)
    await stand_in.open()
    try:
        await end(vm_id)
    finally:
        await stand_in.close()


def _crash_method(driver: Driver) -> Callable[[str], Awaitable[None]]:
    end = getattr(driver, "crash", None)
    if not callable(end):
        raise CannotEnd(f"the {driver.name} driver has no crash(vm_id)")
    return end


@dataclass
class FakeSite(DriverSite):
    """The ``fake`` driver: simulated guests, no console heartbeat; ``crash`` ends one."""

    ready: str | None = None
    heartbeat: str | None = None
    slow: dict[str, Any] = field(default_factory=lambda: {"latency": 0.2})
    slow_migration: dict[str, Any] = field(default_factory=lambda: {"latency": {"migrate": 3.0}})

    async def end_guest(self, driver: Driver, vm_id: str, *, attached: bool) -> None:
        await crash(driver, vm_id, attached=attached)


@dataclass
class QemuSite(DriverSite):
    """The ``qemu`` driver on the ``tiny`` image; a guest ends when its QEMU is killed."""

    settle_seconds: float = 1.0
    slow_migration: dict[str, Any] = field(default_factory=lambda: {"migrate_bandwidth_mbps": 1})

    def host_options(self, host: str, storage: Path) -> dict[str, Any]:
        return {"stop_timeout": 10, **super().host_options(host, storage)}

    async def end_guest(self, driver: Driver, vm_id: str, *, attached: bool) -> None:
        await _kill(_pidfile(driver, vm_id))

    async def break_migration(self, target: Driver, vm_id: str) -> None:
        await _kill(_pidfile(target, vm_id))

    def cleanup(self, state_dir: Path) -> None:
        for pidfile in state_dir.glob("vms/*/qemu.pid"):
            pid = _pid(pidfile)
            if pid is not None and _runs_with(pid, pidfile):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _pidfile(driver: Driver, vm_id: str) -> Path:
    return Path(str(driver.state_dir), "vms", vm_id, "qemu.pid")


def _pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _runs_with(pid: int, pidfile: Path) -> bool:
    """Whether process ``pid`` is a QEMU that has ``pidfile`` on its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(pidfile).encode() in cmdline


async def _kill(pidfile: Path) -> None:
    """SIGKILL the QEMU of ``pidfile`` and wait until it is gone."""
    pid = _pid(pidfile)
    assert pid is not None and _runs_with(pid, pidfile), f"no QEMU runs for {pidfile}"
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        stat = Path(f"/proc/{pid}/stat")
        try:
            if re.search(r"\) Z ", stat.read_text()) is None:
                await asyncio.sleep(0.05)
                continue
        except OSError:
            pass
        return


FAKE = FakeSite("fake")
QEMU = QemuSite("qemu")
SITES: dict[str, DriverSite] = {"fake": FAKE, "qemu": QEMU}
"""The built-in sites, by driver name; any other driver gets a plain :class:`DriverSite`."""


def load_site(
    driver: str, spec: str | None = None, options: dict[str, Any] | None = None
) -> DriverSite:
    """The site of ``driver``: the object ``spec`` (``module:name``; a :class:`DriverSite`
    subclass is built with ``driver``) or the built-in one, with ``options`` added to its
    driver options."""
    site: DriverSite
    if spec is None:
        site = SITES.get(driver) or DriverSite(driver)
    else:
        module, _, name = spec.partition(":")
        if not module or not name:
            raise ValueError(f"site {spec!r} is not module:object")
        found = getattr(importlib.import_module(module), name)
        site = found(driver) if isinstance(found, type) else found
        if not isinstance(site, DriverSite):
            raise ValueError(f"site {spec!r} is not a usher.conformance.DriverSite")
    if site.driver != driver:
        site = dataclasses.replace(site, driver=driver)
    if options:
        site = dataclasses.replace(site, options={**site.options, **options})
    return site
