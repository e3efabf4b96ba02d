"""Snapshots, clones and exported disks of the ``qemu`` driver, on real QEMU guests (TCG).

The tiny guest does not mount its disk, so the tests write to the disk from the host while
the VM is stopped (``qemu-io``) and read it back after a revert or in a copy: a revert or a
copy that did nothing fails them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import test_qemu_driver
from test_qemu_driver import DriverFactory, new_guest, wait_for_text
from usher.images import catalog
from usher.model import Image, VMState
from usher.vmm.base import DriverError, InvalidTransition

storage, tiny = test_qemu_driver.storage, test_qemu_driver.tiny  # the fixtures
make_driver, reports = test_qemu_driver.make_driver, test_qemu_driver.reports


def qemu_io(disk: Path, command: str) -> bool:
    """Run one ``qemu-io`` command on ``disk``; whether it succeeded (a ``read -P`` whose
    pattern does not match fails)."""
    done = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(disk)], capture_output=True, text=True
    )
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def backing_of(disk: Path) -> str | None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return info.get("backing-filename")


async def test_snapshot_revert_list_delete_on_running_and_stopped_vms(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    driver = await make_driver("n1")
    guest = new_guest(tiny, "snappy", disks=[{"size_gb": 1}])
    disk = catalog.vm_dir(storage, guest.id) / catalog.DISK
    data = catalog.vm_dir(storage, guest.id) / "data1.qcow2"  # a snapshot covers it too
    await driver.start(guest)
    await wait_for_text(driver, guest.id, r"USHER-READY snappy")

    live = await driver.snapshot_create(guest.id, "live")  # running: QMP transaction
    assert live.running and live.name == "live"
    assert [s.name for s in await driver.snapshot_list(guest.id)] == ["live"]
    assert (await driver.info(guest.id)).state is VMState.RUNNING  # the guest ran on
    with pytest.raises(DriverError, match="already"):
        await driver.snapshot_create(guest.id, "live")
    with pytest.raises(InvalidTransition, match="stop it first"):
        await driver.snapshot_revert(guest.id, "live")

    await driver.stop(guest.id, hard=True)
    assert qemu_io(disk, "write -P 0xab 0 64k")
    assert qemu_io(data, "write -P 0xda 0 64k")
    usage = await driver.disk_usage(guest.id)
    assert usage >= 2 * 64 * 1024
    ab = await driver.snapshot_create(guest.id, "ab")  # stopped: qemu-img
    assert not ab.running and ab.size_bytes == usage
    assert qemu_io(disk, "write -P 0xcd 0 64k")
    assert qemu_io(data, "write -P 0xcd 0 64k")

    await driver.snapshot_revert(guest.id, "ab")
    assert qemu_io(disk, "read -P 0xab 0 64k")
    assert qemu_io(data, "read -P 0xda 0 64k")
    await driver.snapshot_revert(guest.id, "live")  # before anything was written
    assert not qemu_io(disk, "read -P 0xab 0 64k")
    await driver.snapshot_revert(guest.id, "ab")
    assert qemu_io(disk, "read -P 0xab 0 64k")
    listed = await driver.snapshot_list(guest.id)
    assert [(s.name, s.size_bytes, s.running) for s in listed] == [
        ("live", live.size_bytes, True),
        ("ab", usage, False),
    ]

    await driver.start(guest)  # delete while running: QMP
    await driver.snapshot_delete(guest.id, "live")
    assert [s.name for s in await driver.snapshot_list(guest.id)] == ["ab"]
    with pytest.raises(DriverError, match="no snapshot 'live'"):
        await driver.snapshot_delete(guest.id, "live")
    await driver.stop(guest.id, hard=True)
    with pytest.raises(DriverError, match="no snapshot 'gone'"):
        await driver.snapshot_revert(guest.id, "gone")


async def test_clone_and_export_copy_the_disks_and_share_nothing_writable(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    driver = await make_driver("n1")
    source = new_guest(tiny, "source", disks=[{"size_gb": 1}])
    disk = catalog.vm_dir(storage, source.id) / catalog.DISK
    await driver.start(source)
    await driver.stop(source.id, hard=True)
    assert qemu_io(disk, "write -P 0xab 0 64k")
    assert qemu_io(disk.with_name("data1.qcow2"), "write -P 0xda 0 64k")
    await driver.snapshot_create(source.id, "ab")

    clone = new_guest(tiny, "clone", disks=[{"size_gb": 1}])
    await driver.clone_disks(source.id, clone.id, snapshot=None)  # a stopped source
    clone_disk = catalog.vm_dir(storage, clone.id) / catalog.DISK
    assert backing_of(clone_disk) == backing_of(disk)  # the image's base disk, not a copy
    assert qemu_io(clone_disk, "read -P 0xab 0 64k")
    assert qemu_io(clone_disk.with_name("data1.qcow2"), "read -P 0xda 0 64k")
    assert backing_of(clone_disk.with_name("data1.qcow2")) is None
    assert qemu_io(clone_disk, "write -P 0x11 0 64k")
    assert qemu_io(disk, "read -P 0xab 0 64k")  # the source's disk is its own
    with pytest.raises(DriverError, match="has disks already"):
        await driver.clone_disks(source.id, clone.id, snapshot=None)
    await driver.start(clone)
    await wait_for_text(driver, clone.id, r"USHER-READY clone")

    assert qemu_io(disk, "write -P 0xcd 0 64k")  # after the snapshot
    await driver.start(source)
    with pytest.raises(InvalidTransition, match="without a snapshot"):
        await driver.clone_disks(source.id, "vm-000000000001", snapshot=None)
    from_snapshot = new_guest(tiny, "from-snap")
    await driver.clone_disks(source.id, from_snapshot.id, snapshot="ab")  # a running source
    copied = catalog.vm_dir(storage, from_snapshot.id) / catalog.DISK
    assert qemu_io(copied, "read -P 0xab 0 64k")

    staging = catalog.staging_dir(storage, "template", "from-vm")
    size = await driver.export_disk(source.id, staging.name, snapshot="ab")
    exported = staging / catalog.DISK
    assert size == exported.stat().st_size
    assert backing_of(exported) is None  # flattened: the base disk's data is in it
    assert qemu_io(exported, "read -P 0xab 0 64k")
    with pytest.raises(DriverError, match="no snapshot 'nope'"):
        await driver.export_disk(source.id, staging.name, snapshot="nope")
    assert not list(catalog.vm_dir(storage, "vm-000000000001").glob("*.qcow2"))


async def test_a_snapshot_cut_short_is_taken_again_cleanly(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    """An LNM killed between two disks left snapshot ``s`` on the root disk only: it is not
    listed, and taking ``s`` again leaves every disk with one ``s``, holding what is now."""
    driver = await make_driver("n1")
    guest = new_guest(tiny, "cut", disks=[{"size_gb": 1}])
    disk = catalog.vm_dir(storage, guest.id) / catalog.DISK
    await driver.start(guest)
    await driver.stop(guest.id, hard=True)
    subprocess.run(["qemu-img", "snapshot", "-c", "s", str(disk)], check=True)  # the leftover
    assert await driver.snapshot_list(guest.id) == []
    assert qemu_io(disk, "write -P 0x5a 0 64k")
    await driver.snapshot_create(guest.id, "s")
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(disk)], capture_output=True, check=True
        ).stdout
    )
    assert [snap["name"] for snap in info["snapshots"]] == ["s"]
    assert qemu_io(disk, "write -P 0x00 0 64k")
    await driver.snapshot_revert(guest.id, "s")
    assert qemu_io(disk, "read -P 0x5a 0 64k")  # the new one, not the leftover


async def test_a_revert_to_before_a_resize_keeps_the_disk_size(
    make_driver: DriverFactory, storage: Path, tiny: Image
) -> None:
    """The disks keep the size the VM's record says: a snapshot from before a resize brings
    its data back, not the smaller disk."""
    driver = await make_driver("n1")
    guest = new_guest(tiny, "grown", disks=[{"size_gb": 1}])
    data = catalog.vm_dir(storage, guest.id) / "data1.qcow2"
    await driver.start(guest)
    await driver.stop(guest.id, hard=True)
    assert qemu_io(data, "write -P 0x11 0 64k")
    await driver.snapshot_create(guest.id, "small")
    await driver.resize_disk(guest.id, 1, 2)
    assert qemu_io(data, "write -P 0x22 0 64k")
    await driver.snapshot_revert(guest.id, "small")
    assert catalog.virtual_size(data) == 2 << 30
    assert qemu_io(data, "read -P 0x11 0 64k")
