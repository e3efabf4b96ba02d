"""The libvirt test hosts of tests/libvirt_hosts.py work, driven with libvirt-python directly
(no Usher driver): a daemon answers on its socket and on TCP, two daemons are independent
hosts, a tiny guest boots on one and is live-migrated peer-to-peer to the other (its serial
console log on the shared storage goes on without a reboot), and stopping a host kills its
QEMU processes."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

import libvirt
import pytest

from harness import wait_for
from libvirt_hosts import LibvirtPair, libvirt_host, libvirt_pair
from test_e2e_qemu import tiny_storage
from usher.vmm.libvirt_daemon import LibvirtHost, start_libvirt_host

__all__ = ["libvirt_host", "libvirt_pair", "tiny_storage"]  # the fixtures

BOOT_TIMEOUT = 60.0
MIGRATION_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    # libvirt 9.0 calls any disk outside NFS, Ceph, GFS2, … "not shared storage"; the shared
    # directory here is a plain directory both hosts see
    | libvirt.VIR_MIGRATE_UNSAFE
)


def domain_xml(name: str, storage: Path, disk: Path, console_log: Path) -> str:
    """A TCG domain booting the tiny image's kernel from ``storage`` with the qcow2 ``disk``;
    its serial console is a pty whose output is appended to ``console_log``."""
    image = storage / "images" / "tiny"
    return f"""\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image / "vmlinuz"}</kernel>
    <initrd>{image / "initrd.gz"}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet usher.name={name}</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <log file={quoteattr(str(console_log))} append='on'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def overlay(storage: Path, path: Path) -> Path:
    """A qcow2 overlay at ``path`` on the tiny image's base disk."""
    base = storage / "images" / "tiny" / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)],
        check=True,
    )
    return path


def beats(console_log: Path) -> list[int]:
    """The heartbeat numbers in a console log, in order."""
    if not console_log.exists():
        return []
    return [
        int(n)
        for n in re.findall(r"usher-heartbeat (\d+)", console_log.read_text(errors="replace"))
    ]


def wait_beat(console_log: Path, at_least: int) -> int:
    return wait_for(
        f"heartbeat {at_least} in {console_log}",
        lambda: max(beats(console_log), default=0) >= at_least and beats(console_log)[-1],
        timeout=BOOT_TIMEOUT,
        every=0.2,
    )


def net_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_a_host_answers_on_its_socket_and_on_tcp(libvirt_host: LibvirtHost) -> None:
    for uri in (libvirt_host.uri, libvirt_host.peer_uri):
        conn = libvirt.open(uri)
        try:
            caps = conn.getCapabilities()
            assert f"<uuid>{libvirt_host.host_uuid}</uuid>" in caps
            assert "<domain type='qemu'" in caps  # TCG, as KVM may not work
            assert conn.listAllDomains() == []
        finally:
            conn.close()
    assert Path(f"/proc/{libvirt_host.pid}/comm").read_text().strip() == "libvirtd"


def test_two_hosts_are_independent(libvirt_pair: LibvirtPair, tmp_path: Path) -> None:
    a, b = libvirt_pair
    assert a.host_uuid != b.host_uuid
    assert net_namespace(a.pid) == os.readlink(str(a.netns))
    assert net_namespace(b.pid) == os.readlink(str(b.netns))
    assert net_namespace(a.pid) != net_namespace(b.pid)
    conn_a, conn_b = a.connect(), b.connect()
    name = f"only-a-{uuid.uuid4().hex[:6]}"
    try:
        dom = conn_a.defineXML(domain_xml(name, tmp_path, tmp_path / "d.qcow2", tmp_path / "c"))
        assert (a.root / "etc" / "libvirt" / "qemu" / f"{name}.xml").exists()
        assert [d.name() for d in conn_b.listAllDomains()] == []
        dom.undefine()
        # their TCP listeners answer on the bridge
        for peer in (a, b):
            peer_conn = libvirt.open(peer.peer_uri)
            assert f"<uuid>{peer.host_uuid}</uuid>" in peer_conn.getCapabilities()
            peer_conn.close()
    finally:
        conn_a.close()
        conn_b.close()


def test_live_migration_peer_to_peer(
    libvirt_pair: LibvirtPair, tiny_storage: Path, tmp_path: Path
) -> None:
    a, b = libvirt_pair
    shared = tmp_path / "shared"  # what both hosts see at the same path
    shared.mkdir()
    name = f"mig-{uuid.uuid4().hex[:6]}"
    console_log = shared / f"{name}.console"
    disk = overlay(tiny_storage, shared / f"{name}.qcow2")
    conn_a, conn_b = a.connect(), b.connect()
    try:
        dom = conn_a.defineXML(domain_xml(name, tiny_storage, disk, console_log))
        dom.create()
        (source_qemu,) = a.qemu_pids()
        assert net_namespace(source_qemu) == net_namespace(a.pid)
        before = wait_beat(console_log, 2)

        started = time.monotonic()
        dom.migrateToURI3(
            b.peer_uri, {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{b.listen_addr}"}, MIGRATION_FLAGS
        )
        print(f"migrated in {time.monotonic() - started:.1f} s")

        assert conn_a.listAllDomains() == []  # not running there, not even defined
        wait_for("the source QEMU to be gone", lambda: a.qemu_pids() == [])
        moved = conn_b.lookupByName(name)
        assert moved.isActive() and moved.isPersistent()
        (target_qemu,) = b.qemu_pids()
        assert net_namespace(target_qemu) == net_namespace(b.pid)
        stats = moved.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        assert stats["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
        assert 0 < stats["downtime"] < stats["time_elapsed"]
        print(f"downtime {stats['downtime']} ms of {stats['time_elapsed']} ms")

        # the target's QEMU appends to the same console log: the heartbeat goes on, no reboot
        after = wait_beat(console_log, before + 3)
        assert beats(console_log) == list(range(1, after + 1))
        assert console_log.read_text().count(f"USHER-READY {name}") == 1
        moved.destroy()
        moved.undefine()
    finally:
        conn_a.close()
        conn_b.close()


def test_stopping_a_host_kills_its_guests(tiny_storage: Path, tmp_path: Path) -> None:
    host = start_libvirt_host("doomed", tmp_path / "host")
    try:
        conn = host.connect()
        disk = overlay(tiny_storage, tmp_path / "d.qcow2")
        conn.createXML(domain_xml("doomed", tiny_storage, disk, tmp_path / "console"))
        conn.close()
        (qemu,) = host.qemu_pids()
    finally:
        host.stop()
    for pid in (host.pid, qemu):
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] in "ZX"


def test_a_daemon_that_does_not_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="libvirtd exited") as error:
        start_libvirt_host("broken", tmp_path, listen_addr="192.0.2.1", tcp_port=16509)
    assert "Unable to bind to port" in str(error.value)  # from the log tail
