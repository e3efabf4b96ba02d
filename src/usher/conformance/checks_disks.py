"""Conformance: growing disks (capability ``resize_disk``) and snapshots (``snapshot``),
modestly: their postconditions and refusals, not the data on the disks."""

from __future__ import annotations

from usher.conformance.hosts import Hosts, declares, refused, states
from usher.model import Capability, VMState
from usher.vmm.base import DriverError, InvalidTransition


async def test_a_disk_grows_and_never_shrinks(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("growing", disks=[{"size_gb": 1}])
    await driver.start(guest)
    if not declares(driver, Capability.RESIZE_DISK):
        with refused(DriverError):
            await driver.resize_disk(guest.id, 1, 2)
        return
    info = await driver.resize_disk(guest.id, 1, 2)  # running
    assert info.spec.disks == [{"size_gb": 2}] and info.state is VMState.RUNNING
    assert (await driver.info(guest.id)).spec.disks == [{"size_gb": 2}]
    with refused(DriverError, guest.id):
        await driver.resize_disk(guest.id, 1, 1)
    with refused(DriverError, guest.id):
        await driver.resize_disk(guest.id, 2, 3)  # no such disk
    assert (await driver.resize_disk(guest.id, 1, 2)).spec.disks == [{"size_gb": 2}]  # as is
    await driver.stop(guest.id, hard=True)
    info = await driver.resize_disk(guest.id, 1, 3)  # stopped
    assert info.spec.disks == [{"size_gb": 3}] and info.state is VMState.STOPPED
    assert (await driver.start(guest.model_copy(update={"spec": info.spec}))).spec.disks == [
        {"size_gb": 3}
    ]


async def test_snapshots_are_taken_listed_reverted_and_deleted(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("snapped")
    await driver.start(guest)
    if not declares(driver, Capability.SNAPSHOT):
        with refused(DriverError):
            await driver.snapshot_create(guest.id, "first")
        with refused(DriverError):
            await driver.snapshot_list(guest.id)
        return
    assert await driver.snapshot_list(guest.id) == []
    first = await driver.snapshot_create(guest.id, "first")  # running
    assert first.name == "first" and first.size_bytes >= 0
    with refused(DriverError, guest.id):
        await driver.snapshot_create(guest.id, "first")
    with refused(InvalidTransition, guest.id):
        await driver.snapshot_revert(guest.id, "first")  # running
    await driver.stop(guest.id, hard=True)
    await driver.snapshot_create(guest.id, "second")  # stopped
    assert [s.name for s in await driver.snapshot_list(guest.id)] == ["first", "second"]
    await driver.snapshot_revert(guest.id, "first")
    assert [s.name for s in await driver.snapshot_list(guest.id)] == ["first", "second"]
    assert await states(driver) == {guest.id: VMState.STOPPED}
    with refused(DriverError, guest.id):
        await driver.snapshot_revert(guest.id, "third")
    await driver.snapshot_delete(guest.id, "first")
    assert [s.name for s in await driver.snapshot_list(guest.id)] == ["second"]
    with refused(DriverError, guest.id):
        await driver.snapshot_delete(guest.id, "first")
    assert (await driver.start(guest)).state is VMState.RUNNING
