"""Live migration of simulated guests that hold disk leases: whatever breaks, exactly one of
source and target keeps the guest, and a running copy always holds its disk.

Before the offer/accept protocol, a target took the lease as soon as the source's last
state arrived: if the connection then broke before the source heard ``ok``, the source ran
on without its lease, the target's copy was aborted (releasing the lease), and a third host
could start the VM beside the source (the soak's double copy)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from usher.model import VMSpec, VMState
from usher.vmm.base import DriverError, Guest, UnknownVM
from usher.vmm.fake import FakeDriver
from usher.vmm.lease import lease_holder

VM = Guest(id="vm-1", name="one", spec=VMSpec(vcpus=1, memory_mb=256))


async def host(tmp_path: Path, name: str, **options: object) -> FakeDriver:
    driver = FakeDriver(
        state_dir=str(tmp_path / name),
        options={"storage_dir": str(tmp_path / "storage"), "lease_ttl": 5, **options},
    )
    await driver.open()
    return driver


def holder_of(tmp_path: Path) -> str | None:
    return lease_holder(tmp_path / "storage" / "leases", VM.id)


def name_of(driver: FakeDriver) -> str:
    assert driver.state_dir is not None
    return str(Path(driver.state_dir).resolve())


async def active(driver: FakeDriver) -> bool:
    return any(
        d.id == VM.id and d.state in (VMState.RUNNING, VMState.PAUSED) for d in await driver.list()
    )


def received(driver: FakeDriver) -> bool:
    dom = driver._domains.get(VM.id)
    return dom is not None and dom.received


def nonce_of(uri: str) -> str:
    return uri.rsplit("?to=", 1)[1]


def drop_link_after_taking(target: FakeDriver) -> None:
    """The target takes the guest, then its connection to the source breaks before the
    source hears ``ok`` (a network fault, or the target's host dying)."""
    take = target._received

    def received_then_cut(vm_id: str, nonce: str, paused: bool) -> bool:
        taken = take(vm_id, nonce, paused)
        target._incoming[vm_id].close()
        return taken

    target._received = received_then_cut  # type: ignore[method-assign]


async def test_a_target_that_took_the_guest_keeps_it_when_the_link_breaks(tmp_path: Path) -> None:
    a, b, c = [await host(tmp_path, n) for n in ("a", "b", "c")]
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    drop_link_after_taking(b)
    await a.migrate(VM.id, uri, timeout=5)  # the target took it: the source let go of it
    assert not await active(a)
    assert received(b) and holder_of(tmp_path) == name_of(b)
    info = await b.settle_incoming(VM.id)
    assert info is not None and info.state is VMState.RUNNING
    with pytest.raises(DriverError, match="in use"):
        await c.start(VM)  # the disk is b's: no third copy
    for driver in (a, b, c):
        await driver.close()


async def test_a_source_that_withdrew_first_runs_on_and_the_target_cannot_take_it(
    tmp_path: Path,
) -> None:
    """The source gives up (its timeout) before its last message reaches the target: the
    target's late take finds no offer, and the guest is the source's alone."""
    a = await host(tmp_path, "a", latency={"migrate": 0.3})
    b, c = await host(tmp_path, "b"), await host(tmp_path, "c")
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    with pytest.raises(DriverError, match="timed out"):
        await a.migrate(VM.id, uri, timeout=0.1)
    assert await active(a) and holder_of(tmp_path) == name_of(a)
    assert not b._received(VM.id, nonce_of(uri), False)  # a "done" arriving now is refused
    assert not received(b)
    assert await b.settle_incoming(VM.id) is None
    with pytest.raises(DriverError, match="in use"):
        await c.start(VM)
    for driver in (a, b, c):
        await driver.close()


async def test_a_source_killed_after_the_target_took_the_guest_forgets_it_on_return(
    tmp_path: Path,
) -> None:
    a, b = await host(tmp_path, "a"), await host(tmp_path, "b")
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    taken = asyncio.Event()
    take = b._received

    def received_then_source_dies(vm_id: str, nonce: str, paused: bool) -> bool:
        ok = take(vm_id, nonce, paused)
        taken.set()
        return ok

    b._received = received_then_source_dies  # type: ignore[method-assign]
    sending = asyncio.ensure_future(a.migrate(VM.id, uri, timeout=5))
    await taken.wait()
    a._withdraw = lambda dom: True  # type: ignore[method-assign]  # killed: it does nothing more
    sending.cancel()  # its table still says the guest runs (sent)
    await asyncio.gather(sending, return_exceptions=True)
    await a.close()
    back = await host(tmp_path, "a")  # a's LNM restarts
    assert not await active(back)  # the guest went to b
    assert holder_of(tmp_path) == name_of(b)
    await back.close()
    await b.close()


async def test_a_source_killed_before_the_target_took_the_guest_keeps_it(tmp_path: Path) -> None:
    a = await host(tmp_path, "a", latency={"migrate": 5})
    b = await host(tmp_path, "b")
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    sending = asyncio.ensure_future(a.migrate(VM.id, uri, timeout=10))
    await asyncio.sleep(0.2)
    a._withdraw = lambda dom: True  # type: ignore[method-assign]  # killed: no withdrawal
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    await a.close()
    back = await host(tmp_path, "a")
    assert await active(back) and holder_of(tmp_path) == name_of(back)
    assert not back._domains[VM.id].sent
    assert not b._received(VM.id, nonce_of(uri), False)  # the offer went with a's return
    await back.close()
    await b.close()


async def test_a_host_that_stalled_past_its_ttl_settles_what_it_lost(tmp_path: Path) -> None:
    """A host whose LNM stalled longer than its lease TTL (its leases expired, another host
    took a disk) does not simply renew when it wakes: its copy is ``error``."""
    a = await host(tmp_path, "a", lease_ttl=0.4)
    b = await host(tmp_path, "b", lease_ttl=0.4)
    await a.start(VM)
    assert a._renewer is not None
    a._renewer.cancel()  # a stalls: it renews nothing
    await asyncio.sleep(0.6)
    await b.start(VM)  # a's lease expired: b may take the disk
    assert a._leases is not None
    a._leases.keep_alive()  # a wakes up
    assert (await a.info(VM.id)).state is VMState.ERROR
    assert holder_of(tmp_path) == name_of(b)
    await a.close()
    await b.close()


async def test_a_source_whose_target_took_the_guest_no_longer_reports_it(tmp_path: Path) -> None:
    """Between the target's take and the source's letting go, the source's copy is inactive
    (a QEMU source that sent all): a controller asking the source must not find it there,
    or it would fence the target's copy, the only live one."""
    a, b = await host(tmp_path, "a"), await host(tmp_path, "b")
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    a._offer(a._domains[VM.id], nonce_of(uri))  # the source is sending its last state
    assert await active(a)
    assert b._received(VM.id, nonce_of(uri), False)  # the target took it
    with pytest.raises(UnknownVM):
        await a.info(VM.id)
    assert not await active(a)
    for driver in (a, b):
        await driver.close()


async def test_a_second_migration_of_a_guest_being_sent_is_refused(tmp_path: Path) -> None:
    a = await host(tmp_path, "a", latency={"migrate": 1})
    b, c = await host(tmp_path, "b"), await host(tmp_path, "c")
    await a.start(VM)
    first = asyncio.ensure_future(
        a.migrate(VM.id, await b.prepare_incoming(VM, "127.0.0.1"), timeout=5)
    )
    await asyncio.sleep(0.1)
    with pytest.raises(DriverError, match="under way"):
        await a.migrate(VM.id, await c.prepare_incoming(VM, "127.0.0.1"), timeout=5)
    await first
    assert received(b) and holder_of(tmp_path) == name_of(b)
    assert await c.settle_incoming(VM.id) is None
    for driver in (a, b, c):
        await driver.close()


async def test_a_target_killed_after_its_take_finds_the_guest_arrived(tmp_path: Path) -> None:
    """The target took the disk and was killed before it noted the guest arrived: the disk
    says it did, so the target runs it once settled (else the only copy would be lost)."""
    a, b = await host(tmp_path, "a"), await host(tmp_path, "b")
    await a.start(VM)
    uri = await b.prepare_incoming(VM, "127.0.0.1")
    a._offer(a._domains[VM.id], nonce_of(uri))
    assert b._leases is not None and b._leases.accept(VM.id, nonce_of(uri))  # then killed
    await b.close()
    back = await host(tmp_path, "b")
    info = await back.settle_incoming(VM.id)
    assert info is not None and info.state is VMState.RUNNING
    assert not a._withdraw(a._domains[VM.id])  # the source learns the guest left
    await back.close()
    await a.close()
