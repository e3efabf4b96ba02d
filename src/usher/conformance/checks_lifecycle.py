"""Conformance: the life cycle of a VM, refusals, capacity, capabilities, an LNM restart (which
keeps each VM's state and ``meta``), and ends nobody asked for."""

from __future__ import annotations

import pytest

from usher.conformance.hosts import (
    Hosts,
    alive,
    booted_again,
    boots,
    declares,
    frozen,
    refused,
    states,
    wait_up,
)
from usher.conformance.site import CannotEnd
from usher.model import Capability, VMState
from usher.vmm.base import DriverError, InsufficientCapacity, InvalidTransition, UnknownVM

ENDED = frozenset({VMState.ERROR, VMState.STOPPED})
"""What a guest that ended on its own is."""


async def test_capabilities_are_a_set_of_the_one_enum(hosts: Hosts) -> None:
    driver = await hosts.open()
    assert isinstance(driver.capabilities, frozenset)
    assert all(isinstance(c, Capability) for c in driver.capabilities)


async def test_start_stop_destroy_leave_the_states_they_name(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("life")
    info = await driver.start(guest)
    assert (info.id, info.name, info.state) == (guest.id, guest.name, VMState.RUNNING)
    assert await states(driver) == {guest.id: VMState.RUNNING}
    await wait_up(hosts.site, driver, guest)
    await alive(hosts.site, driver, guest.id)

    await driver.stop(guest.id)  # graceful
    assert await states(driver) == {guest.id: VMState.STOPPED}
    assert (await driver.start(guest)).state is VMState.RUNNING
    assert await states(driver) == {guest.id: VMState.RUNNING}
    await driver.stop(guest.id, hard=True)
    assert await states(driver) == {guest.id: VMState.STOPPED}
    assert (await driver.cycle(guest)).state is VMState.RUNNING  # from stopped
    assert (await driver.cycle(guest)).state is VMState.RUNNING  # from running
    await wait_up(hosts.site, driver, guest)
    await alive(hosts.site, driver, guest.id)

    await driver.destroy(guest.id)
    assert await states(driver) == {}
    with refused(UnknownVM, guest.id):
        await driver.info(guest.id)
    await driver.destroy(guest.id)  # idempotent
    await driver.fence(guest.id)
    assert hosts.reports["a"].seen == [], "operations must not be reported as state changes"


async def test_fence_forgets_the_vm(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("fenced")
    await driver.start(guest)
    await driver.fence(guest.id)
    assert await states(driver) == {}
    await driver.fence(guest.id)  # idempotent
    assert (await driver.start(guest)).state is VMState.RUNNING  # the host holds it no more


async def test_unknown_vms_are_refused(hosts: Hosts) -> None:
    driver = await hosts.open()
    nobody = "vm-nosuchvm000"
    with refused(UnknownVM, nobody):
        await driver.info(nobody)
    with refused(UnknownVM, nobody):
        await driver.stop(nobody)
    with refused(UnknownVM, nobody):
        await driver.stop(nobody, hard=True)
    calls = {
        Capability.PAUSE: [driver.pause, driver.resume],
        Capability.REBOOT: [driver.reboot],
        Capability.CONSOLE: [driver.console_log, driver.console_end],
        Capability.LIVE_MIGRATE: [driver.finish_incoming, driver.settle_incoming],
        Capability.SNAPSHOT: [driver.snapshot_list, driver.disk_usage],
    }
    for capability, methods in calls.items():
        for method in methods:
            with refused(UnknownVM if declares(driver, capability) else DriverError):
                await method(nobody)
    with refused(UnknownVM if declares(driver, Capability.CONSOLE_INPUT) else DriverError):
        await driver.console_write(nobody, b"x")
    with refused(UnknownVM if declares(driver, Capability.RESIZE_DISK) else DriverError):
        await driver.resize_disk(nobody, 0, 2)
    with refused(UnknownVM if declares(driver, Capability.SNAPSHOT) else DriverError):
        await driver.snapshot_create(nobody, "s")
    with refused(UnknownVM if declares(driver, Capability.LIVE_MIGRATE) else DriverError):
        await driver.migrate(nobody, "tcp:127.0.0.1:9", timeout=5)
    await driver.destroy(nobody)
    await driver.fence(nobody)
    if declares(driver, Capability.LIVE_MIGRATE):
        await driver.abort_incoming(nobody)
    assert await states(driver) == {}


async def test_invalid_transitions_are_refused(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("strict")
    await driver.start(guest)
    with refused(InvalidTransition, guest.id):
        await driver.start(guest)
    if declares(driver, Capability.PAUSE):
        with refused(InvalidTransition, guest.id):
            await driver.resume(guest.id)
        await driver.pause(guest.id)
        with refused(InvalidTransition, guest.id):
            await driver.pause(guest.id)
        if declares(driver, Capability.REBOOT):
            with refused(InvalidTransition, guest.id):
                await driver.reboot(guest.id)
        assert await states(driver) == {guest.id: VMState.PAUSED}
        await driver.stop(guest.id, hard=True)  # a paused VM stops
    else:
        await driver.stop(guest.id, hard=True)
    assert await states(driver) == {guest.id: VMState.STOPPED}
    with refused(InvalidTransition, guest.id):
        await driver.stop(guest.id)
    if declares(driver, Capability.PAUSE):
        with refused(InvalidTransition, guest.id):
            await driver.pause(guest.id)
    if declares(driver, Capability.REBOOT):
        with refused(InvalidTransition, guest.id):
            await driver.reboot(guest.id)
    if declares(driver, Capability.CONSOLE_INPUT):
        with refused(InvalidTransition, guest.id):
            await driver.console_write(guest.id, b"x")
    if declares(driver, Capability.LIVE_MIGRATE):
        with refused(InvalidTransition, guest.id):
            await driver.migrate(guest.id, "tcp:127.0.0.1:9", timeout=5)
        with refused(InvalidTransition, guest.id):
            await driver.abort_incoming(guest.id)  # not incoming
    assert await states(driver) == {guest.id: VMState.STOPPED}


async def test_a_start_that_does_not_fit_leaves_nothing(hosts: Hosts) -> None:
    site = hosts.site
    driver = await hosts.open()
    first = hosts.guest("first", vcpus=site.vcpus - 1)
    await driver.start(first)
    too_many_cpus = hosts.guest("cpus", vcpus=2)
    with refused(InsufficientCapacity, too_many_cpus.id):
        await driver.start(too_many_cpus)
    too_much_memory = hosts.guest("memory", memory_mb=site.memory_mb)
    with refused(InsufficientCapacity, too_much_memory.id):
        await driver.start(too_much_memory)
    assert await states(driver) == {first.id: VMState.RUNNING}
    await driver.stop(first.id, hard=True)  # a stopped VM holds no vCPUs
    assert (await driver.start(too_many_cpus)).state is VMState.RUNNING
    with refused(InsufficientCapacity, first.id):
        await driver.start(first)  # a stopped VM's start is refused too, and it stays
    assert await states(driver) == {first.id: VMState.STOPPED, too_many_cpus.id: VMState.RUNNING}


async def test_pause_resume_reboot_as_the_capabilities_say(hosts: Hosts) -> None:
    site = hosts.site
    driver = await hosts.open()
    guest = hosts.guest("pausing")
    await driver.start(guest)
    await wait_up(site, driver, guest)
    if declares(driver, Capability.PAUSE):
        await driver.pause(guest.id)
        assert await states(driver) == {guest.id: VMState.PAUSED}
        await frozen(site, driver, guest.id)
        await driver.resume(guest.id)
        assert await states(driver) == {guest.id: VMState.RUNNING}
        await alive(site, driver, guest.id)
    else:
        for method in (driver.pause, driver.resume):
            with refused(DriverError):
                await method(guest.id)
    if declares(driver, Capability.REBOOT):
        booted = await boots(site, driver, guest)
        await driver.reboot(guest.id)
        assert await states(driver) == {guest.id: VMState.RUNNING}
        if booted is not None:
            await booted_again(site, driver, guest, booted)
        await alive(site, driver, guest.id)
    else:
        with refused(DriverError):
            await driver.reboot(guest.id)
    assert await states(driver) == {guest.id: VMState.RUNNING}
    assert hosts.reports["a"].seen == [], "operations must not be reported as state changes"


async def test_a_restarted_lnm_finds_its_vms_in_their_true_states(hosts: Hosts) -> None:
    site = hosts.site
    driver = await hosts.open()
    running, paused, stopped = hosts.guest("keeps"), hosts.guest("frozen"), hosts.guest("rests")
    for guest in (running, paused, stopped):
        await driver.start(guest)
    await driver.stop(stopped.id, hard=True)
    pausing = declares(driver, Capability.PAUSE)
    if pausing:
        await driver.pause(paused.id)
    await wait_up(site, driver, running)
    expected = {
        running.id: VMState.RUNNING,
        paused.id: VMState.PAUSED if pausing else VMState.RUNNING,
        stopped.id: VMState.STOPPED,
    }
    assert await states(driver) == expected

    again = await hosts.restart("a")
    assert await states(again) == expected
    kept = {guest.id: guest.meta for guest in (running, paused, stopped)}
    assert {dom.id: dom.meta for dom in await again.list()} == kept, "meta lost in a restart"
    assert (await again.info(stopped.id)).meta == stopped.meta
    await alive(site, again, running.id)
    assert await boots(site, again, running) in (None, 1), "the guest booted again"
    if pausing:
        await again.resume(paused.id)
        await alive(site, again, paused.id)
    await again.stop(running.id)
    assert (await again.start(stopped)).state is VMState.RUNNING


async def test_a_guest_that_ended_while_no_driver_ran_is_error_or_stopped(hosts: Hosts) -> None:
    driver = await hosts.open()
    doomed, lasting = hosts.guest("doomed"), hosts.guest("lasting")
    await driver.start(doomed)
    await driver.start(lasting)
    await driver.close()
    try:
        await hosts.site.end_guest(driver, doomed.id, attached=False)
    except CannotEnd as exc:
        pytest.skip(str(exc))
    again = await hosts.open("a")
    found = await states(again)
    assert found.get(doomed.id) in ENDED, found
    assert found.get(lasting.id) is VMState.RUNNING, found
    assert (await again.start(doomed)).state is VMState.RUNNING  # it boots again


async def test_ends_nobody_asked_for_are_reported(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("crashing")
    await driver.start(guest)
    await wait_up(hosts.site, driver, guest)
    try:
        await hosts.site.end_guest(driver, guest.id, attached=True)
    except CannotEnd as exc:
        pytest.skip(str(exc))
    state, reason = await hosts.reports["a"].next_for(guest.id, 10)
    assert state in ENDED, state
    assert reason is None or reason.strip()
    assert await states(driver) == {guest.id: state}
    assert (await driver.start(guest)).state is VMState.RUNNING  # boots again
    await wait_up(hosts.site, driver, guest)
    assert hosts.reports["a"].seen == [], "one end, one report"
