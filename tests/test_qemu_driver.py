"""The ``qemu`` driver on real QEMU guests (the ``tiny`` image, under TCG).

The tiny guest prints ``USHER-READY <name>`` on its serial console when it is up, then
``usher-heartbeat N`` every second (N from 1 at each boot), and powers off on the ACPI power
button: the heartbeat tells whether a guest runs, froze, rebooted or moved without a reboot.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from usher.conformance.hosts import Reports, wait_console
from usher.images import catalog
from usher.images.catalog import vm_dir
from usher.images.tiny import build_tiny
from usher.model import Image, VMSpec, VMState
from usher.vmm import qemu_migration
from usher.vmm import qemu_process as proc
from usher.vmm.base import (
    DriverError,
    Guest,
    InsufficientCapacity,
    InvalidTransition,
    UnknownVM,
)
from usher.vmm.qemu import QemuDriver
from usher.vmm.qemu_accel import DEFAULT_BINARY, detect_accel, probe
from usher.vmm.qemu_argv import default_mac, tap_name

BOOT_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared storage holding the tiny image, built once per test session."""
    root = tmp_path_factory.mktemp("storage")
    build_tiny(root)
    return root


@pytest.fixture(scope="session")
def tiny(storage: Path) -> Image:
    return build_tiny(storage)


DriverFactory = Callable[..., Awaitable[QemuDriver]]


@pytest.fixture
async def reports() -> Reports:
    return Reports()


@pytest.fixture
async def make_driver(
    tmp_path: Path, storage: Path, reports: Reports
) -> AsyncIterator[DriverFactory]:
    """Opens drivers on ``tmp_path/<node>`` sharing ``storage``; kills every guest after."""
    drivers: list[QemuDriver] = []

    async def make(node: str, **options: object) -> QemuDriver:
        driver = QemuDriver(
            state_dir=str(tmp_path / node),
            on_state_change=reports,
            options={"storage_dir": str(storage), **options},
        )
        await driver.open()
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        for dom in await driver.list():
            await driver.destroy(dom.id)
        await driver.close()
    for pidfile in tmp_path.glob("*/vms/*/qemu.pid"):
        pid = proc.read_pid(str(pidfile))
        if pid is not None and proc.runs_with(pid, str(pidfile)):
            proc.kill(pid)


def new_guest(image: Image, name: str, **spec: object) -> Guest:
    return Guest(
        id=f"vm-{uuid.uuid4().hex[:12]}",
        name=name,
        spec=VMSpec(memory_mb=128, **spec),  # type: ignore[arg-type]
        image=image,
    )


def qemu_pid(driver: QemuDriver, vm_id: str) -> int:
    pid = proc.read_pid(os.path.join(str(driver.state_dir), "vms", vm_id, "qemu.pid"))
    assert pid is not None and proc.is_alive(pid)
    return pid


async def console(driver: QemuDriver, vm_id: str, offset: int = 0) -> str:
    return (await driver.console_log(vm_id, offset=offset)).decode(errors="replace")


def heartbeats(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"usher-heartbeat (\d+)", text)]


async def wait_for_text(
    driver: QemuDriver, vm_id: str, pattern: str, offset: int = 0, timeout: float = BOOT_TIMEOUT
) -> str:
    """The console from ``offset`` once ``pattern`` (a regex) shows in it."""
    return await wait_console(driver, vm_id, pattern, offset=offset, timeout=timeout)


async def beat_after(driver: QemuDriver, vm_id: str, beat: int) -> int:
    """Wait until the newest heartbeat is above ``beat``; return it."""
    deadline = time.monotonic() + 10
    while True:
        beats = heartbeats(await console(driver, vm_id))
        if beats and beats[-1] > beat:
            return beats[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"the heartbeat did not rise above {beat}: {beats[-5:]}")
        await asyncio.sleep(0.1)


def test_auto_accel_is_tcg_here() -> None:
    """This machine's /dev/kvm exists, but KVM does not work for guests (its CPU lately shows
    no vmx flag at all, and KVM guests crawl or hang): auto must pick TCG, with a reason, and
    a probe must be bounded by its timeout."""
    choice = detect_accel()
    assert choice.accel == "tcg"
    assert choice.reason
    assert probe(DEFAULT_BINARY, "tcg") is None
    began = time.monotonic()
    failure = probe(DEFAULT_BINARY, "kvm", timeout=2.0)  # hangs, crawls or (lately) runs
    assert failure is None or "within 2 s" in failure or "cannot run" in failure, failure
    assert time.monotonic() - began < 5
    began = time.monotonic()  # a probe out of time says so, and takes no longer
    failure = probe(DEFAULT_BINARY, "tcg", timeout=0.01)
    assert failure is not None and "within 0.01 s" in failure
    assert time.monotonic() - began < 3


def test_default_mac_is_stable_local_unicast() -> None:
    mac = default_mac("vm-0123456789ab")
    assert mac == default_mac("vm-0123456789ab")
    assert mac != default_mac("vm-0123456789ac")
    assert mac != default_mac("vm-0123456789ab", 1)
    first = int(mac[:2], 16)
    assert first & 0b10 and not first & 0b01
    assert len(tap_name("node-a", "vm-0123456789ab", 3)) <= 15
    assert tap_name("node-a", "vm-x", 0) != tap_name("node-b", "vm-x", 0)


async def test_life_cycle(
    make_driver: DriverFactory, tiny: Image, storage: Path, reports: Reports
) -> None:
    driver = await make_driver("a")
    guest = new_guest(tiny, "life")
    began = time.monotonic()
    dom = await driver.start(guest)
    assert dom.state is VMState.RUNNING
    pid = qemu_pid(driver, guest.id)
    await wait_for_text(driver, guest.id, r"USHER-READY life\b")
    print(f"start to USHER-READY: {time.monotonic() - began:.1f} s")
    beat = await beat_after(driver, guest.id, 0)
    beat = await beat_after(driver, guest.id, beat)

    info = await driver.info(guest.id)
    assert info.cpu_seconds > 0.1 and 10 < info.memory_used_mb < 512

    await driver.pause(guest.id)
    assert (await driver.info(guest.id)).state is VMState.PAUSED
    with pytest.raises(InvalidTransition):
        await driver.pause(guest.id)
    frozen = heartbeats(await console(driver, guest.id))[-1]
    await asyncio.sleep(2.5)
    assert heartbeats(await console(driver, guest.id))[-1] == frozen
    await driver.resume(guest.id)
    assert (await driver.info(guest.id)).state is VMState.RUNNING
    await beat_after(driver, guest.id, frozen)

    mark = len(await driver.console_log(guest.id))
    await driver.reboot(guest.id)
    after = await wait_for_text(driver, guest.id, r"USHER-READY life\b[\s\S]*heartbeat 2\b", mark)
    assert heartbeats(after.split("USHER-READY")[-1])[:2] == [1, 2]
    assert qemu_pid(driver, guest.id) == pid

    mark = len(await driver.console_log(guest.id))
    await driver.stop(guest.id)
    assert (await driver.info(guest.id)).state is VMState.STOPPED
    assert not proc.is_alive(pid)
    assert "USHER-POWEROFF" in await console(driver, guest.id, mark), "not a graceful stop"
    with pytest.raises(InvalidTransition):
        await driver.resume(guest.id)

    disk = vm_dir(storage, guest.id) / "disk.qcow2"
    inode = disk.stat().st_ino
    mark = len(await driver.console_log(guest.id))
    assert (await driver.start(guest)).state is VMState.RUNNING
    await wait_for_text(driver, guest.id, r"USHER-READY life\b", mark)
    assert disk.stat().st_ino == inode
    assert qemu_pid(driver, guest.id) != pid

    await driver.destroy(guest.id)
    assert not disk.parent.exists()
    assert not (Path(str(driver.state_dir)) / "vms" / guest.id).exists()
    assert await driver.list() == []
    await driver.destroy(guest.id)
    with pytest.raises(UnknownVM):
        await driver.info(guest.id)
    assert reports.seen == [], "operations must not be reported as spontaneous changes"


async def test_ends_nobody_asked_for_are_reported(
    make_driver: DriverFactory, tiny: Image, reports: Reports
) -> None:
    driver = await make_driver("a")
    guest = new_guest(tiny, "doomed")
    await driver.start(guest)
    await wait_for_text(driver, guest.id, r"USHER-READY doomed\b")

    # The guest powers itself off (here: the power button pressed behind the driver's back).
    monitor = driver._domains[guest.id].monitor
    assert monitor is not None
    await monitor.execute("system_powerdown")
    assert await reports.next_for(guest.id, 10) == (VMState.STOPPED, "guest powered off")
    assert (await driver.info(guest.id)).state is VMState.STOPPED

    await driver.start(guest)
    pid = qemu_pid(driver, guest.id)
    os.kill(pid, 9)
    began = time.monotonic()
    state, reason = await reports.next_for(guest.id, 5)
    assert state is VMState.ERROR
    assert reason is not None and reason.startswith("QEMU process exited unexpectedly"), reason
    print(f"SIGKILL noticed after {time.monotonic() - began:.2f} s: {reason}")
    info = await driver.info(guest.id)
    assert (info.state, info.reason) == (VMState.ERROR, reason)
    await driver.stop(guest.id)  # how the controller acknowledges a crash
    assert (await driver.info(guest.id)).state is VMState.STOPPED

    mark = len(await driver.console_log(guest.id))
    assert (await driver.start(guest)).state is VMState.RUNNING
    await wait_for_text(driver, guest.id, r"USHER-READY doomed\b", mark)


async def test_restarted_lnm_reattaches(make_driver: DriverFactory, tiny: Image) -> None:
    driver = await make_driver("a")
    running, stopped = new_guest(tiny, "keeps"), new_guest(tiny, "rests")
    await driver.start(running)
    await driver.start(stopped)
    await driver.stop(stopped.id, hard=True)
    await wait_for_text(driver, running.id, r"USHER-READY keeps\b")
    pid = qemu_pid(driver, running.id)
    beat = await beat_after(driver, running.id, 0)
    await driver.close()

    again = await make_driver("a")
    states = {dom.id: dom.state for dom in await again.list()}
    assert states == {running.id: VMState.RUNNING, stopped.id: VMState.STOPPED}
    assert qemu_pid(again, running.id) == pid
    await beat_after(again, running.id, beat)
    text = await console(again, running.id)
    assert text.count("USHER-READY") == 1, "the guest rebooted"
    await again.pause(running.id)
    await again.close()

    paused = await make_driver("a")
    assert (await paused.info(running.id)).state is VMState.PAUSED
    await paused.close()
    os.kill(pid, 9)
    assert await proc.wait_gone(pid, 5)

    after_crash = await make_driver("a")
    info = await after_crash.info(running.id)
    assert info.state is VMState.ERROR and info.reason
    assert (await after_crash.info(stopped.id)).state is VMState.STOPPED


async def test_live_migration(make_driver: DriverFactory, tiny: Image, storage: Path) -> None:
    source, target = await make_driver("a"), await make_driver("b")
    guest = new_guest(tiny, "mover")
    await source.start(guest)
    await wait_for_text(source, guest.id, r"USHER-READY mover\b")
    beat = await beat_after(source, guest.id, 0)
    source_pid = qemu_pid(source, guest.id)

    uri = await target.prepare_incoming(guest, "127.0.0.1")
    assert re.fullmatch(r"tcp:127\.0\.0\.1:\d+", uri)
    assert (await target.info(guest.id)).state is VMState.MIGRATING
    result = await source.migrate(guest.id, uri, timeout=60)
    dom = await target.finish_incoming(guest.id)
    print(f"migration: {result}")

    assert dom.state is VMState.RUNNING
    assert result.total_ms > 0 and result.downtime_ms is not None
    assert 0 <= result.downtime_ms < result.total_ms
    assert result.transferred_bytes and result.transferred_bytes > 1 << 20
    assert not proc.is_alive(source_pid)
    assert await source.list() == []
    newest = await beat_after(target, guest.id, beat + 1)
    text = await console(target, guest.id)
    assert text.count("USHER-READY") == 1, "the guest rebooted"
    assert heartbeats(text) == list(range(1, newest + 1)), "the heartbeat skipped or restarted"

    await source.destroy(guest.id)  # unknown there now: must not touch the shared disk
    assert (vm_dir(storage, guest.id) / "disk.qcow2").exists()
    await target.destroy(guest.id)
    assert not vm_dir(storage, guest.id).exists()


async def test_both_ends_of_a_migration_follow_qemus_events(
    make_driver: DriverFactory, tiny: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source goes on at its switchover, and the target's finish returns once the guest
    runs there, as QEMU's events say (their timed looks are a minute apart here); the guest's
    pause is told from QEMU's stamps of its stop on the source and its start on the target."""
    monkeypatch.setattr(qemu_migration, "RECHECK", 60.0)
    monkeypatch.setattr(qemu_migration, "FINISH_POLL", 60.0)
    source, target = await make_driver("a"), await make_driver("b")
    guest = new_guest(tiny, "evented")
    await source.start(guest)
    await wait_for_text(source, guest.id, r"USHER-READY evented\b")
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    finishing = asyncio.create_task(target.finish_incoming(guest.id))
    await asyncio.sleep(0.2)
    assert not finishing.done()  # waiting for the guest
    began = time.time()
    result = await asyncio.wait_for(source.migrate(guest.id, uri, timeout=60), 30)
    dom = await asyncio.wait_for(finishing, 10)
    ended = time.time()
    assert dom.state is VMState.RUNNING
    stopped, resumed = result.extra["stopped_at"], dom.resumed_at
    assert stopped is not None and resumed is not None
    assert began < stopped < resumed < ended
    await target.destroy(guest.id)


async def slow_migration(
    make_driver: DriverFactory, tiny: Image, name: str
) -> tuple[QemuDriver, QemuDriver, Guest, int, asyncio.Task[object]]:
    """A booted guest on node "a" migrating to "b" over a 1 MiB/s link (slow enough to break
    it midway), a second into it: (source, target, guest, source QEMU pid, migration)."""
    source = await make_driver("a", migrate_bandwidth_mbps=1)
    target = await make_driver("b")
    guest = new_guest(tiny, name)
    await source.start(guest)
    await wait_for_text(source, guest.id, rf"USHER-READY {name}\b")
    source_pid = qemu_pid(source, guest.id)
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    migration = asyncio.create_task(source.migrate(guest.id, uri, timeout=60))
    await asyncio.sleep(1)
    assert not migration.done()
    return source, target, guest, source_pid, migration


async def test_a_qemu_that_quits_on_an_error_says_why(
    make_driver: DriverFactory, tiny: Image, storage: Path
) -> None:
    """What QEMU printed before it quit (a daemon's stderr) is the reason of its end."""
    source = await make_driver("a")
    target = await make_driver("b")
    guest = new_guest(tiny, "garbled")
    await source.start(guest)
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    _, host, port = uri.split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"not a migration stream" * 100)
    await writer.drain()
    writer.close()
    with pytest.raises(DriverError, match="load of migration failed"):
        await target.finish_incoming(guest.id)
    await target.abort_incoming(guest.id)
    await source.destroy(guest.id)


async def test_cancelled_and_interrupted_migrations_settle(
    make_driver: DriverFactory, tiny: Image
) -> None:
    """A migration called off (the LNM cancels its command) leaves the guest running on the
    source; an incoming QEMU nobody finished is settled: dropped while still ``inmigrate``,
    run once the whole guest arrived (what reconciliation asks after a restart)."""
    source, target, guest, source_pid, migration = await slow_migration(
        make_driver, tiny, "settles"
    )
    migration.cancel()
    with pytest.raises(asyncio.CancelledError):
        await migration
    assert (await source.info(guest.id)).state is VMState.RUNNING
    assert qemu_pid(source, guest.id) == source_pid
    await beat_after(source, guest.id, max(heartbeats(await console(source, guest.id))))
    assert await target.settle_incoming(guest.id) is None  # half-received: dropped
    assert await target.list() == []

    await source.close()  # as an LNM restart: the guest runs on, detached
    fast = await make_driver("a")  # reattached, bandwidth uncapped
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    beat = max(heartbeats(await console(fast, guest.id)))
    await fast.migrate(guest.id, uri, timeout=60)
    settled = await target.settle_incoming(guest.id)  # arrived whole: runs there
    assert settled is not None and settled.state is VMState.RUNNING
    await beat_after(target, guest.id, beat + 1)
    with pytest.raises(InvalidTransition):
        await target.settle_incoming(guest.id)


async def test_a_migration_called_off_as_the_source_ends_leaves_one_copy(
    make_driver: DriverFactory, tiny: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called off after the switchover, while the source ends its QEMU (a CI run landed
    there: the source kept its record ``running`` beside the target's running copy), the
    migration still ends the source before the cancellation is re-raised."""
    source, target = await make_driver("a"), await make_driver("b")
    guest = new_guest(tiny, "late-call")
    await source.start(guest)
    await wait_for_text(source, guest.id, r"USHER-READY late-call\b")
    source_pid = qemu_pid(source, guest.id)
    ending = asyncio.Event()
    halt = source._guests.halt

    async def slow_halt(dom: Any) -> None:
        ending.set()
        await asyncio.sleep(0.2)  # the cancellation lands here
        await halt(dom)

    monkeypatch.setattr(source._guests, "halt", slow_halt)
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    migration = asyncio.create_task(source.migrate(guest.id, uri, timeout=60))
    await asyncio.wait_for(ending.wait(), 30)
    migration.cancel()
    with pytest.raises(asyncio.CancelledError):
        await migration
    assert await source.list() == [] and not proc.is_alive(source_pid)
    settled = await target.settle_incoming(guest.id)
    assert settled is not None and settled.state is VMState.RUNNING
    await target.destroy(guest.id)


async def test_bridge_nic(make_driver: DriverFactory, tiny: Image, storage: Path) -> None:
    bridge = f"ushb{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    try:
        driver = await make_driver("a", bridge=bridge)
        lost = new_guest(tiny, "lost", nics=[{"network": "bridge:nosuchbr0"}])
        with pytest.raises(DriverError, match="no Linux bridge nosuchbr0"):
            await driver.start(lost)
        assert not vm_dir(storage, lost.id).exists()
        assert await driver.list() == []

        guest = new_guest(tiny, "bridged", nics=[{"network": "default"}, {"network": "user"}])
        await driver.start(guest)
        tap = tap_name(driver._node, guest.id, 0)
        assert os.listdir(f"/sys/class/net/{bridge}/brif") == [tap]
        await driver.stop(guest.id, hard=True)
        assert not os.path.exists(f"/sys/class/net/{tap}")
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=True)


async def test_refusals_leave_nothing_behind(
    make_driver: DriverFactory, tiny: Image, storage: Path
) -> None:
    driver = await make_driver("a", vcpus=2, memory_mb=256)
    big = new_guest(tiny, "big", vcpus=4)
    with pytest.raises(InsufficientCapacity):
        await driver.start(big)
    odd = new_guest(tiny, "odd", nics=[{"mac": "01:00:5e:00:00:01"}])
    with pytest.raises(DriverError, match="unicast MAC"):
        await driver.start(odd)
    assert not vm_dir(storage, big.id).exists() and not vm_dir(storage, odd.id).exists()
    assert await driver.list() == []
    for operation in (driver.pause, driver.resume, driver.reboot, driver.finish_incoming):
        with pytest.raises(UnknownVM):
            await operation("vm-nosuchvm0000")
    await driver.destroy("vm-nosuchvm0000")
    await driver.abort_incoming("vm-nosuchvm0000")
    with pytest.raises(DriverError, match="accel must be auto, kvm or tcg"):
        QemuDriver(state_dir=str(storage), options={"accel": "xen"})


async def test_seed_and_ssh_forward_follow_a_migration(
    make_driver: DriverFactory, tiny: Image, storage: Path
) -> None:
    """A guest with a config gets ``seed.iso`` (label ``cidata``) as a CD-ROM and, on
    user-mode networking, a forwarded SSH port; the target of a live migration attaches the
    same seed and forwards a port of its own."""
    source, target = await make_driver("a"), await make_driver("b")
    config = {
        "meta_data": {"instance-id": "x", "local-hostname": "seeded"},
        "user_data": "#cloud-config\n{}",
        "network_config": None,
    }
    guest = new_guest(tiny, "seeded").model_copy(update={"config": config})
    info = await source.start(guest)
    seed = vm_dir(storage, guest.id) / "seed.iso"
    label = subprocess.run(["blkid", "-s", "LABEL", "-o", "value", str(seed)], capture_output=True)
    assert label.stdout.decode().strip() == "cidata"
    assert seed.stat().st_mode & 0o777 == 0o600  # the user's own user data may hold secrets
    host, port = info.endpoints["ssh"].rsplit(":", 1)
    assert host == "127.0.0.1"
    await asyncio.open_connection(host, int(port))  # QEMU listens there
    monitor = source._domains[guest.id].monitor  # the driver's own QMP session
    assert monitor is not None
    blocks = await monitor.execute("query-block")
    cdrom = next(b for b in blocks if b["device"] == "seed0")
    assert cdrom["inserted"]["file"] == str(seed) and cdrom["inserted"]["ro"]
    await wait_for_text(source, guest.id, r"USHER-READY seeded\b")

    uri = await target.prepare_incoming(guest, "127.0.0.1")
    await source.migrate(guest.id, uri, timeout=60)
    moved = await target.finish_incoming(guest.id)
    assert moved.state is VMState.RUNNING
    new_port = moved.endpoints["ssh"].rsplit(":", 1)[1]
    assert new_port != port
    await asyncio.open_connection("127.0.0.1", int(new_port))
    plain = new_guest(tiny, "plain")  # no config: no seed, no forward
    assert (await target.start(plain)).endpoints == {}
    assert not (vm_dir(storage, plain.id) / "seed.iso").exists()


async def test_destroying_a_vm_that_never_ran_removes_its_disks(
    make_driver: DriverFactory, tiny: Image, storage: Path
) -> None:
    """Disks made for a VM that never booted (a clone whose first start failed) go with its
    destroy; those of a VM another node runs stay."""
    driver = await make_driver("a")
    never = new_guest(tiny, "never")
    catalog.create_overlay(storage, tiny, never.id)
    elsewhere = new_guest(tiny, "elsewhere")
    catalog.create_overlay(storage, tiny, elsewhere.id)
    (vm_dir(storage, elsewhere.id) / "node").write_text("another-host:/state")
    await driver.destroy(never.id)
    await driver.destroy(elsewhere.id)
    assert not vm_dir(storage, never.id).exists()
    assert (vm_dir(storage, elsewhere.id) / "disk.qcow2").exists()
    catalog.remove_vm_disks(storage, elsewhere.id)
