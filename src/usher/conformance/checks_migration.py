"""Conformance: live migration between hosts ``a`` and ``b`` (capability ``live_migrate``):
one that succeeds (the target keeps the VM's ``meta``), one that fails midway, one called off,
and incoming VMs settled."""

from __future__ import annotations

import asyncio

from usher.conformance.hosts import Hosts, alive, beats, boots, declares, refused, states, wait_up
from usher.model import Capability, VMState
from usher.vmm.base import Driver, DriverError, Guest, InsufficientCapacity, InvalidTransition


async def pair(hosts: Hosts, **source_options: object) -> tuple[Driver, Driver] | None:
    """Hosts ``a`` (with ``source_options``) and ``b``; None if the driver cannot migrate, once
    every migration method was checked to refuse."""
    source, target = await hosts.open("a", **source_options), await hosts.open("b")
    if declares(source, Capability.LIVE_MIGRATE):
        return source, target
    guest = hosts.guest("stays")
    await source.start(guest)
    with refused(DriverError):
        await target.prepare_incoming(guest, hosts.site.listen_host("b"))
    with refused(DriverError):
        await source.migrate(guest.id, "tcp:127.0.0.1:9", timeout=5)
    for method in (target.finish_incoming, target.abort_incoming, target.settle_incoming):
        with refused(DriverError):
            await method(guest.id)
    assert await states(source) == {guest.id: VMState.RUNNING}
    assert await states(target) == {}
    return None


async def running_on(hosts: Hosts, driver: Driver, name: str) -> Guest:
    guest = hosts.guest(name)
    await driver.start(guest)
    await wait_up(hosts.site, driver, guest)
    return guest


async def test_a_live_migration_moves_the_guest_without_a_reboot(hosts: Hosts) -> None:
    site = hosts.site
    drivers = await pair(hosts)
    if drivers is None:
        return
    source, target = drivers
    guest = await running_on(hosts, source, "mover")
    before = await beats(site, source, guest.id)

    uri = await target.prepare_incoming(guest, site.listen_host("b"))
    assert isinstance(uri, str) and uri
    assert await states(target) == {guest.id: VMState.MIGRATING}
    with refused(DriverError, guest.id):
        await target.prepare_incoming(guest, site.listen_host("b"))  # already there
    assert await states(source) == {guest.id: VMState.RUNNING}
    result = await source.migrate(guest.id, uri, timeout=site.boot_timeout)
    assert result.total_ms > 0
    assert result.downtime_ms is None or 0 <= result.downtime_ms <= result.total_ms
    assert await states(source) == {}
    dom = await target.finish_incoming(guest.id)
    assert dom.state is VMState.RUNNING and dom.id == guest.id
    assert await states(target) == {guest.id: VMState.RUNNING}
    assert dom.meta == guest.meta, "the target must keep the VM's meta"
    assert [d.meta for d in await target.list()] == [guest.meta]
    target = await hosts.restart("b")  # and keep it beyond an LNM restart
    assert (await target.info(guest.id)).meta == guest.meta
    await alive(site, target, guest.id)
    assert await boots(site, target, guest) in (None, 1), "the guest booted again"
    after = await beats(site, target, guest.id)
    if before and after:
        assert after[-1] > before[-1]
    await source.destroy(guest.id)  # not there any more: the disks stay for the target

    if declares(target, Capability.PAUSE):  # and back, paused: it arrives paused
        await target.pause(guest.id)
        uri = await source.prepare_incoming(guest, site.listen_host("a"))
        await target.migrate(guest.id, uri, timeout=site.boot_timeout)
        assert (await source.finish_incoming(guest.id)).state is VMState.PAUSED
        assert await states(target) == {}
        await source.resume(guest.id)
        await alive(site, source, guest.id)
        assert await boots(site, source, guest) in (None, 1), "the guest booted again"
    await target.destroy(guest.id)  # idempotent there too


async def test_an_incoming_vm_is_listed_migrating_until_aborted(hosts: Hosts) -> None:
    site = hosts.site
    drivers = await pair(hosts)
    if drivers is None:
        return
    source, target = drivers
    guest = hosts.guest("expected")
    await source.start(guest)
    huge = guest.model_copy(update={"spec": guest.spec.model_copy(update={"vcpus": 99})})
    with refused(InsufficientCapacity, guest.id):
        await target.prepare_incoming(huge, site.listen_host("b"))
    assert await states(target) == {}
    await target.prepare_incoming(guest, site.listen_host("b"))
    assert await states(target) == {guest.id: VMState.MIGRATING}
    await target.abort_incoming(guest.id)
    assert await states(target) == {}
    await target.abort_incoming(guest.id)  # idempotent
    assert await states(source) == {guest.id: VMState.RUNNING}


async def test_a_failed_migration_leaves_the_guest_on_the_source(hosts: Hosts) -> None:
    site = hosts.site
    drivers = await pair(hosts, **site.slow_migration)
    if drivers is None:
        return
    source, target = drivers
    guest = await running_on(hosts, source, "stays")
    uri = await target.prepare_incoming(guest, site.listen_host("b"))
    migration = asyncio.create_task(source.migrate(guest.id, uri, timeout=site.boot_timeout))
    await asyncio.sleep(1)
    assert not migration.done(), "the slow migration ended within a second"
    await site.break_migration(target, guest.id)
    with refused(DriverError, guest.id):
        await asyncio.wait_for(migration, site.boot_timeout)
    if guest.id in await states(target):
        with refused(DriverError, guest.id):
            await target.finish_incoming(guest.id)
    await target.abort_incoming(guest.id)
    assert await states(target) == {}
    assert await states(source) == {guest.id: VMState.RUNNING}
    await alive(site, source, guest.id)
    assert await boots(site, source, guest) in (None, 1), "the guest booted again"

    uri = await target.prepare_incoming(guest, site.listen_host("b"))
    with refused(DriverError, guest.id):
        await source.migrate(guest.id, uri, timeout=0.5)  # too short: timed out
    await target.abort_incoming(guest.id)
    assert await states(target) == {}
    assert await states(source) == {guest.id: VMState.RUNNING}
    await alive(site, source, guest.id)


async def test_a_cancelled_migration_leaves_the_guest_on_the_source(hosts: Hosts) -> None:
    site = hosts.site
    drivers = await pair(hosts, **site.slow_migration)
    if drivers is None:
        return
    source, target = drivers
    guest = await running_on(hosts, source, "called-off")
    uri = await target.prepare_incoming(guest, site.listen_host("b"))
    migration = asyncio.create_task(source.migrate(guest.id, uri, timeout=site.boot_timeout))
    await asyncio.sleep(1)
    assert not migration.done(), "the slow migration ended within a second"
    migration.cancel()
    try:
        await migration
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancellation of migrate was not re-raised")
    assert await states(source) == {guest.id: VMState.RUNNING}
    await alive(site, source, guest.id)
    assert await target.settle_incoming(guest.id) is None  # half received: dropped
    assert await states(target) == {}


async def test_settle_runs_a_migration_that_arrived_whole(hosts: Hosts) -> None:
    site = hosts.site
    drivers = await pair(hosts)
    if drivers is None:
        return
    source, target = drivers
    guest = await running_on(hosts, source, "settled")
    uri = await target.prepare_incoming(guest, site.listen_host("b"))
    await source.migrate(guest.id, uri, timeout=site.boot_timeout)
    settled = await target.settle_incoming(guest.id)
    assert settled is not None and settled.state is VMState.RUNNING
    assert await states(target) == {guest.id: VMState.RUNNING}
    assert await states(source) == {}
    await alive(site, target, guest.id)
    with refused(InvalidTransition, guest.id):
        await target.settle_incoming(guest.id)  # no longer incoming
    with refused(InvalidTransition, guest.id):
        await target.abort_incoming(guest.id)
