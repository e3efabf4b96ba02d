"""DHCP and DNS for a real guest: the ipam plugin allocates, its dnsmasq serves the lease and
the name on a bridge of the test's own (10.213.9.0/24 on usher-t-dhcp, DNS on a free port)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster, free_port, wait_for
from test_e2e_qemu import BOOT_TIMEOUT, _power_off, console, tiny_storage
from usher.model import OpStatus

__all__ = ["tiny_storage"]  # the image fixture, shared with the QEMU tests

BRIDGE = "usher-t-dhcp"
GATEWAY = "10.213.9.1"
NXDOMAIN = 3


def ipam_config(dns_port: int) -> dict[str, object]:
    lab = {
        "name": "lab",
        "network": "10.213.9.0/24",
        "first": "10.213.9.100",
        "last": "10.213.9.199",
        "gateway": GATEWAY,
        "bridge": BRIDGE,
        "allow": {"roles": ["admin", "user"]},
    }
    return {"domain": "usher.test", "dnsmasq": True, "dns_port": dns_port, "ranges": [lab]}


def resolve(name: str, port: int) -> tuple[int, str | None]:
    """Ask the dnsmasq on the bridge for the A record of ``name``: (rcode, address or None)."""
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query = struct.pack(">6H", 0x5553, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(query, (GATEWAY, port))
        answer = sock.recv(512)
    ident, flags, _, count = struct.unpack(">4H", answer[:8])
    assert ident == 0x5553
    offset = len(query)  # the answer repeats the question
    for _ in range(count):
        while answer[offset] and answer[offset] < 0xC0:  # a name: labels, maybe a pointer
            offset += answer[offset] + 1
        offset += 2 if answer[offset] >= 0xC0 else 1
        rtype, _, _, length = struct.unpack(">HHIH", answer[offset : offset + 10])
        offset += 10
        if rtype == 1:
            return flags & 0xF, socket.inet_ntoa(answer[offset : offset + length])
        offset += length
    return flags & 0xF, None


def _drop_bridge() -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


def _dnsmasq_pid(cluster: Cluster) -> int | None:
    pidfile = cluster.state / "dnsmasq" / BRIDGE / "pid"
    return int(pidfile.read_text()) if pidfile.exists() else None


@pytest.fixture
def dhcp(tmp_path: Path, tiny_storage: Path) -> Iterator[tuple[Cluster, int]]:
    """A controller running ipam with dnsmasq, and one QEMU node on the same host."""
    _drop_bridge()
    port = free_port()
    cluster = Cluster(
        tmp_path,
        None,
        plugins=["ipam"],
        plugin_tables={"ipam": ipam_config(port)},
        storage=tiny_storage,
    )
    try:
        cluster.start_ctrl()
        cluster.start_lnm("node-1", driver="qemu", vcpus=4, memory_mb=4096)
        yield cluster, port
        if cluster.ctrl is not None and cluster.ctrl.poll() is None:
            _power_off(cluster)
    finally:
        pid = _dnsmasq_pid(cluster)
        cluster.stop()
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)  # the controller did not stop it: the test fails below
        _drop_bridge()


def test_guest_gets_its_address_and_name(dhcp: tuple[Cluster, int]) -> None:
    cluster, port = dhcp
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="web"), timeout=120)
    assert op.status == OpStatus.SUCCEEDED, op.error
    vm = client.get_vm(op.targets[0])
    assert vm.addresses == ["10.213.9.100"]
    assert vm.spec.nics == [
        {"mac": "52:54:00:d5:09:64", "network": f"bridge:{BRIDGE}", "address": "10.213.9.100"}
    ]
    wait_for(
        "the guest's DHCP lease",
        lambda: "USHER-IP " in console(client, vm.id),
        timeout=BOOT_TIMEOUT,
        every=0.5,
    )
    assert "USHER-IP 10.213.9.100\n" in console(client, vm.id).replace("\r", "")
    assert resolve("web-1.web.usher.test", port) == (0, "10.213.9.100")
    assert resolve("nothing.web.usher.test", port) == (NXDOMAIN, None)
    leases = (cluster.state / "dnsmasq" / BRIDGE / "leases").read_text()
    assert "52:54:00:d5:09:64 10.213.9.100" in leases

    client.change_vm(vm.id, name="www-1")  # renamed: the new name resolves, the old one not
    wait_for("the new name", lambda: resolve("www-1.web.usher.test", port) == (0, "10.213.9.100"))
    assert resolve("web-1.web.usher.test", port) == (NXDOMAIN, None)

    cluster.run(client.destroy([vm.id]), timeout=60)
    wait_for("the name to go", lambda: resolve("www-1.web.usher.test", port) == (NXDOMAIN, None))
    assert cluster.http("GET", "/v1/ipam/allocations").json() == []
    # the address is free again: the next VM gets it, and its own name
    op = cluster.run(client.create_vms(count=1, cluster="db"), timeout=120)
    assert client.get_vm(op.targets[0]).addresses == ["10.213.9.100"]
    wait_for("the new name", lambda: resolve("db-1.db.usher.test", port) == (0, "10.213.9.100"))

    pid = _dnsmasq_pid(cluster)
    assert pid is not None and Path(f"/proc/{pid}").exists()
    _power_off(cluster)
    cluster.stop()
    wait_for("dnsmasq to stop with the controller", lambda: not Path(f"/proc/{pid}").exists())
