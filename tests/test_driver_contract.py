"""The driver contract of ``usher.vmm.base``, checked on every in-memory driver: the built-in
``fake`` and the example out-of-tree ``memory`` driver, both loaded through their entry
points. (The ``qemu`` driver needs real QEMU: ``test_qemu_driver.py`` checks it.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import example_driver
from usher.model import Capability, VMSpec, VMState
from usher.vmm.base import (
    Driver,
    DriverError,
    Guest,
    InsufficientCapacity,
    InvalidTransition,
    UnknownVM,
    load_driver,
)

MakeDriver = Callable[..., Driver]
SLOW = 1.0
"""Seconds a slow driver's start takes."""


@pytest.fixture(scope="session")
def example_installed() -> None:
    example_driver.install()


@pytest.fixture(params=["fake", example_driver.NAME])
def make(request: pytest.FixtureRequest) -> MakeDriver:
    """``make(slow=False)``: a fresh driver with 4 vCPUs and 4 GiB (a start taking
    :data:`SLOW` seconds if ``slow``)."""
    if request.param == example_driver.NAME:
        request.getfixturevalue("example_installed")

    def build(slow: bool = False) -> Driver:
        options: dict[str, object] = {"vcpus": 4, "memory_mb": 4096}
        if slow:
            options.update(latency={"start": SLOW}, boot_seconds=SLOW)
        return load_driver(request.param, options=options)

    return build


def guest(vm_id: str = "vm-1", vcpus: int = 1, memory_mb: int = 256) -> Guest:
    return Guest(id=vm_id, name=f"name-{vm_id}", spec=VMSpec(vcpus=vcpus, memory_mb=memory_mb))


async def listed(driver: Driver) -> dict[str, VMState]:
    return {dom.id: dom.state for dom in await driver.list()}


def test_load_driver_names_the_installed_ones_for_an_unknown_name() -> None:
    with pytest.raises(DriverError, match=r"unknown VMM driver 'nope'; installed drivers: .*fake"):
        load_driver("nope")


async def test_capabilities_are_the_one_enum(make: MakeDriver) -> None:
    driver = make()
    assert driver.capabilities and all(isinstance(c, Capability) for c in driver.capabilities)


async def test_start_stop_destroy_leave_the_states_they_name(make: MakeDriver) -> None:
    driver = make()
    info = await driver.start(guest())
    assert info.state is VMState.RUNNING and info.name == "name-vm-1"
    assert await listed(driver) == {"vm-1": VMState.RUNNING}
    await driver.stop("vm-1")
    assert (await driver.info("vm-1")).state is VMState.STOPPED
    assert (await driver.start(guest())).state is VMState.RUNNING
    assert (await driver.cycle(guest())).state is VMState.RUNNING
    await driver.destroy("vm-1")
    assert await listed(driver) == {}
    await driver.destroy("vm-1")  # idempotent
    await driver.fence("vm-2")


async def test_unknown_vms_and_invalid_transitions_are_refused(make: MakeDriver) -> None:
    driver = make()
    with pytest.raises(UnknownVM):
        await driver.info("vm-9")
    with pytest.raises(UnknownVM):
        await driver.stop("vm-9")
    await driver.start(guest())
    with pytest.raises(InvalidTransition):
        await driver.start(guest())
    await driver.stop("vm-1")
    with pytest.raises(InvalidTransition):
        await driver.stop("vm-1")
    assert await listed(driver) == {"vm-1": VMState.STOPPED}


async def test_a_start_that_does_not_fit_leaves_nothing(make: MakeDriver) -> None:
    driver = make()
    await driver.start(guest("vm-1", vcpus=3))
    with pytest.raises(InsufficientCapacity):
        await driver.start(guest("vm-2", vcpus=2))
    assert await listed(driver) == {"vm-1": VMState.RUNNING}


async def test_pause_and_reboot_as_the_capabilities_say(make: MakeDriver) -> None:
    driver = make()
    await driver.start(guest())
    if Capability.PAUSE in driver.capabilities:
        await driver.pause("vm-1")
        assert await listed(driver) == {"vm-1": VMState.PAUSED}
        with pytest.raises(InvalidTransition):
            await driver.reboot("vm-1")
        await driver.resume("vm-1")
        assert await listed(driver) == {"vm-1": VMState.RUNNING}
    else:
        with pytest.raises(DriverError):
            await driver.pause("vm-1")
    if Capability.REBOOT in driver.capabilities:
        await driver.reboot("vm-1")
        assert await listed(driver) == {"vm-1": VMState.RUNNING}


async def test_console_reads_on_from_an_offset(make: MakeDriver) -> None:
    driver = make()
    await driver.start(guest())
    if Capability.CONSOLE not in driver.capabilities:
        with pytest.raises(DriverError):
            await driver.console_log("vm-1")
        return
    whole = await driver.console_log("vm-1")
    assert whole and await driver.console_log("vm-1", offset=3) == whole[3:]
    assert await driver.console_end("vm-1") == len(whole)


async def test_console_input_leaves_the_vm_as_it_was(make: MakeDriver) -> None:
    driver = make()
    await driver.start(guest())
    if Capability.CONSOLE_INPUT not in driver.capabilities:
        with pytest.raises(DriverError):
            await driver.console_write("vm-1", b"hello\n")
        return
    before = await driver.info("vm-1")
    await driver.console_write("vm-1", b"hello\n")
    assert (await driver.info("vm-1")).state is before.state is VMState.RUNNING
    await driver.stop("vm-1")
    with pytest.raises(InvalidTransition):
        await driver.console_write("vm-1", b"hello\n")
    with pytest.raises(UnknownVM):
        await driver.console_write("vm-2", b"hello\n")


async def test_an_incoming_vm_is_listed_migrating_until_aborted(make: MakeDriver) -> None:
    driver = make()
    if Capability.LIVE_MIGRATE not in driver.capabilities:
        with pytest.raises(DriverError):
            await driver.prepare_incoming(guest(), "127.0.0.1")
        return
    await driver.prepare_incoming(guest(), "127.0.0.1")
    assert await listed(driver) == {"vm-1": VMState.MIGRATING}
    await driver.abort_incoming("vm-1")
    assert await listed(driver) == {}
    await driver.abort_incoming("vm-1")  # idempotent


async def test_a_cancelled_start_leaves_the_vm_as_it_was_and_frees_what_it_held(
    make: MakeDriver,
) -> None:
    driver = make(slow=True)
    starting = asyncio.create_task(driver.start(guest("vm-1", vcpus=4)))
    await asyncio.sleep(SLOW / 10)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert await listed(driver) in ({}, {"vm-1": VMState.RUNNING})
    if not await listed(driver):  # as it was: its vCPUs are free again
        assert (await driver.start(guest("vm-2", vcpus=4))).state is VMState.RUNNING
