"""What the conformance suite cannot see of the ``libvirt`` driver: a libvirtd that restarts
under it, the site's own domains beside Usher's, and the XML it writes."""

from __future__ import annotations

import asyncio
import contextlib
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from usher.images.tiny import build_tiny
from usher.model import Image, ImageKind, VMSpec, VMState
from usher.vmm.base import Driver, Guest, load_driver
from usher.vmm.libvirt_daemon import LibvirtHost, start_libvirt_host
from usher.vmm.libvirt_xml import Paths, Record, domain_xml, record_of_metadata
from usher.vmm.qemu_argv import KernelBoot, nics_of


def _record(vm_id: str = "vm-x1", **spec: object) -> Record:
    return Record(
        id=vm_id,
        name="web-1",
        spec=VMSpec(**spec),  # type: ignore[arg-type]
        image=Image(name="tiny", kind=ImageKind.KERNEL, files={"kernel": "k", "disk": "d"}),
        nics=nics_of(vm_id, [{"network": "bridge:br-site"}, {"network": "user"}]),
        seed=True,
    )


def test_the_xml_says_what_the_spec_asks() -> None:
    record = _record(vcpus=3, memory_mb=512, disks=[{"size_gb": 2}, {"size_gb": 3}])
    paths = Paths(
        disk="/s/vms/vm-x1/disk.qcow2",
        data_disks=("/s/vms/vm-x1/data1.qcow2", "/s/vms/vm-x1/data2.qcow2"),
        console_log="/s/vms/vm-x1/console.log",
        console_socket="/l/vms/vm-x1/console.sock",
        seed="/s/vms/vm-x1/seed.iso",
        kernel=KernelBoot("/s/images/tiny/vmlinuz", None, "console=ttyS0 usher.name=web-1"),
    )
    root = ET.fromstring(domain_xml(record, paths, domain_type="qemu", default_bridge=None))
    assert root.get("type") == "qemu" and root.findtext("name") == "vm-x1"
    assert root.findtext("title") == "web-1"
    assert root.findtext("vcpu") == "3" and root.findtext("memory") == "512"
    assert root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    disks = [
        (d.get("device"), d.find("source").get("file"), d.find("target").get("dev"))  # type: ignore[union-attr]
        for d in root.iterfind("./devices/disk")
    ]
    assert disks == [
        ("disk", paths.disk, "vda"),
        ("disk", paths.data_disks[0], "vdb"),
        ("disk", paths.data_disks[1], "vdc"),
        ("cdrom", paths.seed, "hdc"),
    ]
    nics = [
        (n.get("type"), n.find("mac").get("address")) for n in root.iterfind("./devices/interface")
    ]  # type: ignore[union-attr]
    assert nics == [("bridge", record.nics[0].mac), ("user", record.nics[1].mac)]
    assert root.find("./devices/interface/source").get("bridge") == "br-site"  # type: ignore[union-attr]
    serial = root.find("./devices/serial")
    assert serial is not None and serial.find("source").get("path") == paths.console_socket  # type: ignore[union-attr]
    assert serial.find("log").get("append") == "on"  # type: ignore[union-attr]
    assert root.findtext("./os/cmdline") == "console=ttyS0 usher.name=web-1"
    metadata = root.find("./metadata")[0]  # type: ignore[index]
    back = record_of_metadata(ET.tostring(metadata, encoding="unicode"))
    assert back.spec == record.spec and back.nics == record.nics and back.seed


def test_a_name_that_is_not_xml_safe_stays_text() -> None:
    record = _record()
    record.name = "a<b>&'\"c"
    paths = Paths("/d", (), "/c", "/s", None, None)
    root = ET.fromstring(domain_xml(record, paths, domain_type="kvm", default_bridge="br0"))
    assert root.findtext("title") == "a<b>&'\"c"
    assert root.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert [n.get("type") for n in root.iterfind("./devices/interface")] == ["bridge", "user"]


@pytest.fixture
def daemon(tmp_path: Path) -> LibvirtHost:
    host = start_libvirt_host("restarts", tmp_path / "libvirtd")
    yield host  # type: ignore[misc]
    host.stop()


async def test_a_libvirtd_restart_is_survived_and_site_domains_are_left_alone(
    daemon: LibvirtHost, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    image = build_tiny(storage)
    options = {"uri": daemon.uri, "storage_dir": str(storage), "vcpus": 2, "memory_mb": 1024}
    driver = load_driver("libvirt", state_dir=str(tmp_path / "lnm"), options=options)
    await driver.open()
    guest = Guest(id="vm-restart1", name="survivor", spec=VMSpec(memory_mb=128), image=image)
    await driver.start(guest)

    conn = daemon.connect()  # the site's own domain, no Usher metadata
    conn.defineXML(
        "<domain type='qemu'><name>site-own</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    conn.close()
    assert [dom.id for dom in await driver.list()] == ["vm-restart1"]

    qemus = daemon.qemu_pids()
    daemon.process.terminate()  # libvirtd restarts; its QEMUs run on
    daemon.process.wait(15)
    restarted = start_libvirt_host("restarts", daemon.root)
    daemon.process = restarted.process
    assert daemon.qemu_pids() == qemus

    for _ in range(20):  # the call that finds the connection broken fails; later ones work
        try:
            listed = await driver.list()
            break
        except Exception:
            await asyncio.sleep(0.2)
    assert [(dom.id, dom.state) for dom in listed] == [("vm-restart1", VMState.RUNNING)]
    await driver.pause("vm-restart1")
    assert (await driver.info("vm-restart1")).state is VMState.PAUSED
    await driver.destroy("vm-restart1")
    conn = daemon.connect()
    assert [dom.name() for dom in conn.listAllDomains(0)] == ["site-own"]
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("vm-restart1")
    conn.close()
    await driver.close()


async def test_a_migration_libvirtd_finished_while_the_source_lnm_was_away_keeps_the_disk(
    tmp_path: Path,
) -> None:
    """libvirtd carries a peer-to-peer migration on after the source's LNM went away: the
    source's next driver forgets the VM (its domain migrated), and destroying it there
    leaves the disk the target's guest runs on."""
    storage = tmp_path / "storage"
    image = build_tiny(storage)
    hosts = [start_libvirt_host(name, tmp_path / name) for name in ("a", "b")]
    try:

        def opened(host: LibvirtHost, name: str, **extra: object) -> Driver:
            options = {
                "uri": host.uri,
                "migrate_connect": f"qemu+tcp://{{host}}:{host.tcp_port}/system",
                "storage_dir": str(storage),
                **extra,
            }
            return load_driver("libvirt", state_dir=str(tmp_path / f"lnm-{name}"), options=options)

        source, target = opened(hosts[0], "a", migrate_bandwidth_mbps=8), opened(hosts[1], "b")
        await source.open()
        await target.open()
        guest = Guest(id="vm-away1", name="away", spec=VMSpec(memory_mb=128), image=image)
        await source.start(guest)
        uri = await target.prepare_incoming(guest, "127.0.0.1")
        moving = asyncio.ensure_future(source.migrate(guest.id, uri, timeout=300))
        conn = hosts[0].connect()
        while conn.lookupByName(guest.id).jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
            await asyncio.sleep(0.1)
        await source.close()  # the source's LNM goes away mid-migration
        while conn.lookupByName(guest.id).isActive():
            await asyncio.sleep(0.2)
        conn.close()
        with contextlib.suppress(Exception):  # its driver is gone: what it says is moot
            await moving

        again = opened(hosts[0], "a")
        await again.open()
        assert await again.list() == []
        await again.destroy(guest.id)
        assert (storage / "vms" / guest.id / "disk.qcow2").exists()
        settled = await target.settle_incoming(guest.id)
        assert settled is not None and settled.state is VMState.RUNNING
        await target.destroy(guest.id)
        assert not (storage / "vms" / guest.id).exists()
        await again.close()
        await target.close()
    finally:
        for host in hosts:
            host.stop()
