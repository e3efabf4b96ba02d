"""What the conformance tests work with: drivers on hosts ``"a"`` and ``"b"`` opened as an
LNM opens them (:class:`Hosts`), the state changes they report (:class:`Reports`), and ways to
watch a guest (up, alive, rebooted) through its console where the site can tell."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usher.conformance.site import DriverSite
from usher.model import Capability, Image, VMSpec, VMState
from usher.vmm.base import META_LIMITS, Driver, DriverError, Guest, load_driver


class Reports:
    """Records what a driver reports through ``on_state_change``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, VMState, str | None]] = []

    async def __call__(self, vm_id: str, state: VMState, reason: str | None) -> None:
        self.seen.append((vm_id, state, reason))

    async def next_for(self, vm_id: str, timeout: float) -> tuple[VMState, str | None]:
        """Wait for a report about ``vm_id`` and take it off the list."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, (seen_id, state, reason) in enumerate(self.seen):
                if seen_id == vm_id:
                    del self.seen[index]
                    return state, reason
            await asyncio.sleep(0.05)
        raise AssertionError(f"no state change reported for VM {vm_id} within {timeout} s")


@dataclass
class Hosts:
    """Drivers of ``site`` on hosts sharing ``storage``, each with a state dir under ``root``."""

    site: DriverSite
    root: Path
    storage: Path
    image: Image | None

    def __post_init__(self) -> None:
        self.drivers: dict[str, Driver] = {}
        self.reports: dict[str, Reports] = {}
        self._opened: list[Driver] = []

    async def open(self, host: str = "a", **options: Any) -> Driver:
        """Open a driver on ``host``, as an LNM starting there does, with ``options`` added to
        the site's (an earlier driver of the host must be closed: see :meth:`restart`)."""
        reports = self.reports.setdefault(host, Reports())
        driver = load_driver(
            self.site.driver,
            state_dir=str(self.root / host),
            on_state_change=reports,
            options={**self.site.host_options(host, self.storage), **options},
        )
        await driver.open()
        self.drivers[host] = driver
        self._opened.append(driver)
        return driver

    async def restart(self, host: str = "a", **options: Any) -> Driver:
        """Close the host's driver and open a new one on its state dir, as an LNM restart."""
        await self.drivers[host].close()
        return await self.open(host, **options)

    def guest(self, name: str = "guest", **spec: Any) -> Guest:
        """A new guest of the site's image, with a unique id, and a ``meta`` for the driver
        to keep (of the most keys a meta holds, one of them of the longest value)."""
        spec.setdefault("memory_mb", self.site.guest_memory_mb)
        keys, key_len, value_len = META_LIMITS
        meta = {f"k{i}": f'{name} ünïcode "quoted" <x>&{i}' for i in range(keys - 1)}
        meta["l" * key_len] = "v" * value_len
        return Guest(
            id=f"vm-{uuid.uuid4().hex[:12]}",
            name=f"{name}-{uuid.uuid4().hex[:4]}",
            spec=VMSpec(**spec),
            image=self.image,
            meta=meta,
        )

    async def close_all(self) -> None:
        """Destroy every VM of the open drivers, close them, and clean up after the rest."""
        errors: list[BaseException] = []
        for driver in self.drivers.values():
            try:
                for dom in await driver.list():
                    await driver.destroy(dom.id)
            except Exception as exc:  # clean up the rest all the same
                errors.append(exc)
        for driver in self._opened:
            with contextlib.suppress(Exception):
                await driver.close()
        for host in {*self.drivers, "a", "b"}:
            self.site.cleanup(self.root / host)
        if errors:
            raise errors[0]


def declares(driver: Driver, capability: Capability) -> bool:
    return capability in driver.capabilities


async def states(driver: Driver) -> dict[str, VMState]:
    """What ``list()`` says, by VM id; checks each entry against ``info()``."""
    listed = {dom.id: dom.state for dom in await driver.list()}
    for vm_id, state in listed.items():
        assert (await driver.info(vm_id)).state is state, f"info and list differ on VM {vm_id}"
    return listed


@contextlib.contextmanager
def refused(kind: type[DriverError], vm_id: str | None = None) -> Iterator[None]:
    """Expect a :class:`DriverError` of ``kind`` whose message is non-empty and, given
    ``vm_id``, names the VM."""
    try:
        yield
    except DriverError as exc:
        assert isinstance(exc, kind), f"{type(exc).__name__} ({exc}) is not a {kind.__name__}"
        assert str(exc).strip(), f"{type(exc).__name__} with an empty message"
        if vm_id is not None:
            assert vm_id in str(exc), f"the message does not name VM {vm_id}: {exc}"
    else:
        raise AssertionError(f"no {kind.__name__} raised")


# the guest's console --------------------------------------------------------------------------


async def console(driver: Driver, vm_id: str, offset: int = 0) -> str:
    """The console from ``offset`` on, all of it (a driver may return it in chunks)."""
    parts: list[bytes] = []
    while chunk := await driver.console_log(vm_id, offset=offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts).decode(errors="replace")


async def wait_console(
    driver: Driver, vm_id: str, pattern: str, *, offset: int = 0, timeout: float = 60.0
) -> str:
    """The console from ``offset`` once ``pattern`` (a regex) shows in it."""
    deadline = time.monotonic() + timeout
    while True:
        text = await console(driver, vm_id, offset)
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{pattern!r} not on the console within {timeout} s: {text[-500:]}"
            )
        await asyncio.sleep(0.1)


def watches(site: DriverSite, driver: Driver) -> bool:
    """Whether the site can watch a guest of ``driver`` through its console."""
    return site.ready is not None and declares(driver, Capability.CONSOLE)


async def wait_up(site: DriverSite, driver: Driver, guest: Guest, offset: int = 0) -> None:
    """Wait until ``guest`` is up: ``running`` and, where the site can tell, its console says
    so (after ``offset``)."""
    assert (await driver.info(guest.id)).state is VMState.RUNNING
    if watches(site, driver):
        assert site.ready is not None
        pattern = site.ready.format(name=re.escape(guest.name))
        await wait_console(driver, guest.id, pattern, offset=offset, timeout=site.boot_timeout)


async def boots(site: DriverSite, driver: Driver, guest: Guest) -> int | None:
    """How often the console says ``guest`` came up (None: the site cannot tell)."""
    if not watches(site, driver):
        return None
    assert site.ready is not None
    pattern = site.ready.format(name=re.escape(guest.name))
    return len(re.findall(pattern, await console(driver, guest.id)))


async def booted_again(site: DriverSite, driver: Driver, guest: Guest, booted: int) -> None:
    """Wait until the console says ``guest`` came up more than ``booted`` times."""
    deadline = time.monotonic() + site.boot_timeout
    while (await boots(site, driver, guest) or 0) <= booted:
        assert time.monotonic() < deadline, f"VM {guest.id} did not boot again"
        await asyncio.sleep(0.1)


async def beats(site: DriverSite, driver: Driver, vm_id: str) -> list[int] | None:
    """The heartbeats on the console so far (None: the site cannot tell)."""
    if site.heartbeat is None or not declares(driver, Capability.CONSOLE):
        return None
    return [int(n) for n in re.findall(site.heartbeat, await console(driver, vm_id))]


async def alive(site: DriverSite, driver: Driver, vm_id: str, timeout: float = 10.0) -> None:
    """Check that the guest runs: ``running``, and its heartbeat rises where the site can
    tell."""
    assert (await driver.info(vm_id)).state is VMState.RUNNING
    seen = await beats(site, driver, vm_id)
    if seen is None:
        return
    last = seen[-1] if seen else 0
    deadline = time.monotonic() + timeout
    while True:
        now = await beats(site, driver, vm_id)
        if now and now[-1] > last:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the heartbeat of VM {vm_id} did not rise above {last}")
        await asyncio.sleep(0.1)


async def frozen(site: DriverSite, driver: Driver, vm_id: str) -> None:
    """Check that a paused guest runs no more, where the site can tell."""
    before = await beats(site, driver, vm_id)
    if before is None:
        return
    await asyncio.sleep(2.2)
    assert await beats(site, driver, vm_id) == before, "a paused guest's heartbeat went on"
