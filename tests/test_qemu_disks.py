"""Disk sizes, data disks and disk growth of the ``qemu`` driver, on real QEMU guests (TCG).

The tiny guest has a shell on its serial console, so a test asks the guest itself how big
its disks are (``/sys/block/vdX/size``, in 512-byte sectors) and reads the answer on the
console; QEMU's own view comes from ``qemu-img info`` and the QEMU command line.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import test_qemu_driver
from test_qemu_driver import DriverFactory, console, new_guest, qemu_pid, wait_for_text
from usher.images import catalog
from usher.model import Image, VMState
from usher.vmm.base import DriverError
from usher.vmm.qemu import QemuDriver

storage, tiny = test_qemu_driver.storage, test_qemu_driver.tiny  # the fixtures
make_driver, reports = test_qemu_driver.make_driver, test_qemu_driver.reports

GIB = 1 << 30
SECTORS_PER_GIB = GIB // 512


def virtual_gib(path: Path) -> float:
    return catalog.virtual_size(path) / GIB


def cmdline(driver: QemuDriver, vm_id: str) -> str:
    with open(f"/proc/{qemu_pid(driver, vm_id)}/cmdline", "rb") as file:
        return file.read().replace(b"\0", b" ").decode()


async def guest_sectors(driver: QemuDriver, vm_id: str, device: str) -> int:
    """What the guest says the size of its ``device`` is, in sectors (asked on its console
    shell; the answer is tagged, so an older answer is never taken for it)."""
    offset = await driver.console_end(vm_id)
    tag = f"T{offset}"
    line = f"echo {tag}=$(cat /sys/block/{device}/size)\n"
    await driver.console_write(vm_id, line.encode())
    text = await wait_for_text(driver, vm_id, rf"{tag}=(\d+)", offset=offset, timeout=30)
    found = re.search(rf"{tag}=(\d+)", text)
    assert found is not None
    return int(found.group(1))


async def test_disk_sizes_data_disks_and_growth_stopped_and_running(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    driver = await make_driver("n1")
    guest = new_guest(tiny, "disky", disk_gb=1, disks=[{"size_gb": 1}, {"size_gb": 2}])
    root = catalog.vm_dir(storage, guest.id) / catalog.DISK
    await driver.start(guest)
    await wait_for_text(driver, guest.id, r"USHER-READY disky")

    disks = catalog.vm_disks(storage, guest.id)
    assert [d.name for d in disks] == ["disk.qcow2", "data1.qcow2", "data2.qcow2"]
    assert [virtual_gib(d) for d in disks] == [1, 1, 2]
    argv = cmdline(driver, guest.id)
    assert "id=data1" in argv and "id=data2" in argv and "drive=data2" in argv
    assert await guest_sectors(driver, guest.id, "vda") == SECTORS_PER_GIB
    assert await guest_sectors(driver, guest.id, "vdc") == 2 * SECTORS_PER_GIB

    # running: QMP block_resize, and the guest sees it at once
    info = await driver.resize_disk(guest.id, 1, 3)
    assert info.spec.disks == [{"size_gb": 3}, {"size_gb": 2}] and info.state is VMState.RUNNING
    assert virtual_gib(disks[1]) == 3
    assert await guest_sectors(driver, guest.id, "vdb") == 3 * SECTORS_PER_GIB
    await driver.resize_disk(guest.id, 1, 3)  # the same size: nothing to do
    with pytest.raises(DriverError, match="cannot shrink"):
        await driver.resize_disk(guest.id, 2, 1)
    with pytest.raises(DriverError, match="no disk 3"):
        await driver.resize_disk(guest.id, 3, 5)
    assert virtual_gib(disks[2]) == 2

    # stopped: qemu-img resize; the next boot sees it
    await driver.stop(guest.id, hard=True)
    info = await driver.resize_disk(guest.id, 0, 2)
    assert info.spec.disk_gb == 2 and virtual_gib(root) == 2
    with pytest.raises(DriverError, match="cannot shrink"):
        await driver.resize_disk(guest.id, 0, 1)
    grown = guest.model_copy(update={"spec": info.spec})
    offset = await driver.console_end(guest.id)
    await driver.start(grown)
    await wait_for_text(driver, guest.id, r"USHER-READY disky", offset=offset)
    assert await guest_sectors(driver, guest.id, "vda") == 2 * SECTORS_PER_GIB
    assert await guest_sectors(driver, guest.id, "vdb") == 3 * SECTORS_PER_GIB

    await driver.pause(guest.id)  # paused: QMP too
    await driver.resize_disk(guest.id, 2, 4)
    await driver.resume(guest.id)
    assert await guest_sectors(driver, guest.id, "vdc") == 4 * SECTORS_PER_GIB


async def test_root_disk_smaller_than_its_image_is_refused_and_leaves_nothing(
    make_driver: DriverFactory, storage: Path, tmp_path: Path
) -> None:
    base = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "2G"], check=True)
    image = catalog.import_disk(storage, "big-disk", base, replace=True)
    driver = await make_driver("n1")
    guest = new_guest(image, "small", disk_gb=1, disks=[{"size_gb": 1}])
    with pytest.raises(DriverError, match="smaller than image big-disk"):
        await driver.start(guest)
    assert not catalog.vm_dir(storage, guest.id).exists()
    assert await driver.list() == []


async def test_data_disks_follow_a_live_migration(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    source, target = await make_driver("a"), await make_driver("b")
    guest = new_guest(tiny, "carrier", disks=[{"size_gb": 1}])
    await source.start(guest)
    await wait_for_text(source, guest.id, r"USHER-READY carrier")

    uri = await target.prepare_incoming(guest, "127.0.0.1")
    assert "id=data1" in cmdline(target, guest.id)
    await source.migrate(guest.id, uri, timeout=60)
    await target.finish_incoming(guest.id)

    assert await guest_sectors(target, guest.id, "vdb") == SECTORS_PER_GIB
    info = await target.resize_disk(guest.id, 1, 2)  # the target owns the disk now
    assert info.spec.disks == [{"size_gb": 2}]
    assert await guest_sectors(target, guest.id, "vdb") == 2 * SECTORS_PER_GIB
    text = await console(target, guest.id)
    assert text.count("USHER-READY") == 1, "the guest rebooted"
