"""Real QEMU guests (TCG) through the controller and LNM processes: every operation, live
migration (also across a real network link between namespaces), and the failures around it."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import netns
from harness import Cluster, wait_for
from usher.client import Client
from usher.images.tiny import build_tiny
from usher.model import OpStatus, VMState

BOOT_TIMEOUT = 90.0
HEARTBEAT = re.compile(r"usher-heartbeat (\d+)")


@pytest.fixture(scope="module")
def tiny_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared storage holding the tiny image, built once from Debian packages."""
    storage = tmp_path_factory.mktemp("storage")
    build_tiny(storage)
    return storage


def qemu_cluster(root: Path, storage: Path, nodes: int = 2, **lnm: object) -> Cluster:
    cluster = Cluster(root, None, storage=storage)
    cluster.start_ctrl()
    names = [f"node-{i}" for i in range(1, nodes + 1)]
    for name in names:
        cluster.start_lnm(name, driver="qemu", vcpus=4, memory_mb=4096, wait=False, **lnm)
    for name in names:
        cluster.wait_node(name, connected=True)
    return cluster


@pytest.fixture
def cluster(tmp_path: Path, tiny_storage: Path) -> Iterator[Cluster]:
    cluster = qemu_cluster(tmp_path, tiny_storage)
    yield cluster
    _power_off(cluster)
    cluster.stop()


def _power_off(cluster: Cluster) -> None:
    """Guests outlive their LNM by design: end this test's guests so none lingers."""
    client = cluster.client()
    live = [vm.id for vm in cluster.vms() if vm.state in (VMState.RUNNING, VMState.PAUSED)]
    if live:
        client.wait(client.stop(live, kwargs={"hard": True}), timeout=60)


def console(client: Client, vm: str) -> str:
    return client.console(vm).data


def beats(client: Client, vm: str) -> list[int]:
    return [int(n) for n in HEARTBEAT.findall(console(client, vm))]


def boots(client: Client, vm: str) -> int:
    return console(client, vm).count("USHER-READY")


def wait_ready(client: Client, vm: str, count: int = 1) -> None:
    wait_for(
        f"{vm} to boot (ready marker #{count})",
        lambda: boots(client, vm) >= count,
        timeout=BOOT_TIMEOUT,
        every=0.5,
    )


def wait_beat(client: Client, vm: str, above: int) -> int:
    return wait_for(
        f"{vm} heartbeat above {above}",
        lambda: (b := beats(client, vm)) and b[-1] > above and b[-1],
        timeout=30,
        every=0.3,
    )


def test_every_operation_on_real_guests(cluster: Cluster) -> None:
    client = cluster.client()
    started = time.monotonic()
    op = cluster.run(client.create_vms(count=2, cluster="real", memory_mb=192))
    assert op.status == OpStatus.SUCCEEDED, op.error
    a, b = op.targets
    wait_ready(client, a)
    wait_ready(client, b)
    print(f"request to ready for 2 guests: {time.monotonic() - started:.1f} s")
    vm = client.get_vm(a)
    assert vm.state == VMState.RUNNING and cluster.guest_pid(vm.node, a)
    assert "USHER-READY real-1" in console(client, a)

    # pause freezes the guest, resume thaws it
    last = wait_beat(client, a, 1)
    assert cluster.run(client.pause([a])).status == OpStatus.SUCCEEDED
    frozen = beats(client, a)[-1]
    time.sleep(2.5)
    assert beats(client, a)[-1] <= frozen + 1
    assert client.get_vm(a).state == VMState.PAUSED
    assert cluster.run(client.resume([a])).status == OpStatus.SUCCEEDED
    wait_beat(client, a, frozen + 1)

    # reboot restarts the guest: a new ready marker, the counter from 1 again
    assert cluster.run(client.reboot([a])).status == OpStatus.SUCCEEDED
    wait_ready(client, a, 2)
    assert client.get_vm(a).state == VMState.RUNNING

    # stop powers it off (ACPI): the QEMU process is gone; start boots it again
    node = client.get_vm(a).node
    op = cluster.run(client.stop([a]), timeout=90)
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert client.get_vm(a).state == VMState.STOPPED
    wait_for("QEMU to be gone", lambda: cluster.guest_pid(node, a) is None, timeout=10)
    assert cluster.run(client.start_existing([a])).status == OpStatus.SUCCEEDED
    wait_ready(client, a, 3)

    # cycle: hard off and on
    assert cluster.run(client.cycle([a])).status == OpStatus.SUCCEEDED
    wait_ready(client, a, 4)

    # usage flows from the LNM to the node record
    wait_for("usage of the guests", lambda: cluster.node(node).usage.memory_used_mb > 0)

    # destroy removes the process, the disk and the record
    disk = cluster.storage / "vms" / b / "disk.qcow2"
    assert disk.exists()
    b_node = client.get_vm(b).node
    assert cluster.run(client.destroy([a, b])).status == OpStatus.SUCCEEDED
    assert cluster.vms() == []
    assert not disk.exists()
    assert cluster.guest_pid(b_node, b) is None
    assert last >= 1


def test_live_migration_keeps_the_guest_running(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="mig", node="node-1"))
    vm_id = op.targets[0]
    wait_ready(client, vm_id)
    before = wait_beat(client, vm_id, 2)
    source_pid = cluster.guest_pid("node-1", vm_id)
    assert source_pid

    op = cluster.run(client.migrate([vm_id], target_node="node-2"))
    assert op.status == OpStatus.SUCCEEDED, op.error
    details = op.result["details"][vm_id]
    print(f"migration: total {details['total_ms']:.0f} ms, downtime {details['downtime_ms']} ms")
    assert details["from"] == "node-1" and details["to"] == "node-2"
    assert details["total_ms"] > 0 and details["downtime_ms"] is not None
    assert 0 < details["paused_ms"] < details["total_ms"]  # the source's stop to the target's run

    vm = client.get_vm(vm_id)
    assert vm.node == "node-2" and vm.state == VMState.RUNNING
    assert cluster.guest_pid("node-2", vm_id)
    wait_for("the source QEMU to be gone", lambda: cluster.guest_pid("node-1", vm_id) is None)
    after = wait_beat(client, vm_id, before + 2)
    counts = beats(client, vm_id)
    assert counts == list(range(1, after + 1)), "the heartbeat restarted: the guest rebooted"
    assert boots(client, vm_id) == 1


def test_target_dies_during_migration(tmp_path: Path, tiny_storage: Path) -> None:
    # a slow migration link, so there is time to kill the target midway
    cluster = qemu_cluster(tmp_path, tiny_storage, driver_options={"migrate_bandwidth_mbps": 4})
    try:
        client = cluster.client()
        op = cluster.run(client.create_vms(count=1, cluster="die", node="node-1", memory_mb=256))
        vm_id = op.targets[0]
        wait_ready(client, vm_id)
        migrating = client.migrate([vm_id], target_node="node-2")
        incoming = wait_for(
            "the incoming QEMU on node-2", lambda: cluster.guest_pid("node-2", vm_id), timeout=20
        )
        time.sleep(1.0)
        cluster.kill_lnm("node-2")
        os.kill(incoming, signal.SIGKILL)
        op = cluster.run(migrating, timeout=90)
        assert op.status == OpStatus.FAILED
        assert "migration to node-2 failed" in (op.error or "")
        vm = client.get_vm(vm_id)
        assert vm.node == "node-1" and vm.state == VMState.RUNNING, vm
        assert cluster.guest_pid("node-1", vm_id)
        last = beats(client, vm_id)[-1]
        wait_beat(client, vm_id, last + 1)  # still alive on the source
        assert boots(client, vm_id) == 1
    finally:
        _power_off(cluster)
        cluster.stop()


def test_lnm_kill_and_restart_reattaches_guests(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="re", node="node-1"))
    vm_id = op.targets[0]
    wait_ready(client, vm_id)
    pid = cluster.guest_pid("node-1", vm_id)
    cluster.kill_lnm("node-1")
    wait_for("the VM to be lost", lambda: client.get_vm(vm_id).state == VMState.LOST)
    assert cluster.guest_pid("node-1", vm_id) == pid  # the guest did not notice
    cluster.start_lnm("node-1", driver="qemu", vcpus=4, memory_mb=4096)
    wait_for("the VM reattached", lambda: client.get_vm(vm_id).state == VMState.RUNNING)
    assert cluster.guest_pid("node-1", vm_id) == pid
    last = beats(client, vm_id)[-1]
    wait_beat(client, vm_id, last + 1)
    assert boots(client, vm_id) == 1
    assert cluster.run(client.pause([vm_id])).status == OpStatus.SUCCEEDED  # it obeys again


def test_guest_killed_from_outside_is_noticed(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="kill"))
    vm_id = op.targets[0]
    node = client.get_vm(vm_id).node
    wait_ready(client, vm_id)
    os.kill(cluster.guest_pid(node, vm_id), signal.SIGKILL)
    killed = time.monotonic()
    wait_for("the VM in error", lambda: client.get_vm(vm_id).state == VMState.ERROR, timeout=10)
    print(f"noticed a killed guest in {time.monotonic() - killed:.2f} s")
    vm = client.get_vm(vm_id)
    assert "signal 9" in (vm.state_reason or ""), vm.state_reason
    changes = [e for e in client.iter_events(vm=vm_id, name="state_change")]
    assert changes[-1].data["to"] == "error"
    # the VM can be started again
    assert cluster.run(client.start_existing([vm_id])).status == OpStatus.SUCCEEDED
    wait_ready(client, vm_id, 2)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, dict[str, str]]]:
    """Two namespace hosts on a bridge; the controller at .1 (see tests/netns.py)."""
    with netns.two_hosts("usher-t", "10.213.7") as hosts:
        yield hosts


def test_migration_across_a_network_link(
    tmp_path: Path, tiny_storage: Path, two_hosts: tuple[str, dict[str, str]]
) -> None:
    ctrl_address, hosts = two_hosts
    cluster = Cluster(tmp_path, None, storage=tiny_storage, listen_host=ctrl_address)
    try:
        cluster.start_ctrl()
        for i, (ns, address) in enumerate(hosts.items(), start=1):
            cluster.start_lnm(
                f"node-{i}",
                driver="qemu",
                vcpus=4,
                memory_mb=4096,
                netns=ns,
                migration_host=address,
            )
        client = cluster.client()
        op = cluster.run(client.create_vms(count=1, cluster="net", node="node-1"))
        vm_id = op.targets[0]
        wait_ready(client, vm_id)
        before = wait_beat(client, vm_id, 2)
        op = cluster.run(client.migrate([vm_id], target_node="node-2"))
        assert op.status == OpStatus.SUCCEEDED, op.error
        assert client.get_vm(vm_id).node == "node-2"
        # the migration stream went to node-2's address, in its own namespace
        node2_address = list(hosts.values())[1]
        assert op.result["details"][vm_id]["uri"].startswith(f"tcp:{node2_address}:")
        wait_for("the source QEMU to be gone", lambda: cluster.guest_pid("node-1", vm_id) is None)
        after = wait_beat(client, vm_id, before + 2)
        assert beats(client, vm_id) == list(range(1, after + 1))
    finally:
        _power_off(cluster)
        cluster.stop()
