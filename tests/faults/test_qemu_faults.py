"""Faults around real QEMU guests: a guest's QEMU killed from outside, an LNM killed while
its guests run, the controller killed mid-migration; then the invariants (at most one live
QEMU per VM across all nodes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness import Cluster, wait_for
from test_e2e_qemu import (
    _power_off,
    beats,
    boots,
    cluster,
    qemu_cluster,
    tiny_storage,
    wait_beat,
    wait_ready,
)
from usher.model import LEASE_HELD, OpStatus, VMState

from .scenario import kill_lnm, restart_ctrl, settle_and_check

__all__ = ["cluster", "tiny_storage"]  # the QEMU tests' fixtures: their image and cluster


def test_guest_qemu_killed_then_lnm_killed(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=2, cluster="q", node="node-1"), timeout=120)
    assert op.status == OpStatus.SUCCEEDED, op.error
    victim, other = op.targets
    wait_ready(client, victim)
    os.kill(cluster.guest_pid("node-1", victim), signal.SIGKILL)
    wait_for("error", lambda: client.get_vm(victim).state == VMState.ERROR, timeout=15)
    settle_and_check(cluster, bound=60)
    # the LNM dies while the other guest runs: the guest outlives it, is found again
    kill_lnm(cluster, "node-1")
    assert cluster.guest_pid("node-1", other) is not None
    cluster.start_lnm("node-1", driver="qemu", vcpus=4, memory_mb=4096)
    wait_for("running again", lambda: client.get_vm(other).state == VMState.RUNNING, timeout=30)
    # the crashed one starts again, once
    assert cluster.run(client.start_existing([victim]), timeout=120).status == OpStatus.SUCCEEDED
    vms = settle_and_check(cluster, bound=60)
    assert {vm.state for vm in vms} == {VMState.RUNNING}


def test_controller_killed_during_a_real_migration(tmp_path: Path, tiny_storage: Path) -> None:
    """kill -9 of the controller while a real guest live-migrates (a slow link): the new
    controller finds the incoming QEMU nobody will finish and has node-2 settle it: still
    ``inmigrate``, it is dropped, the source's migration fails and the guest runs on at
    node-1; arrived whole, it runs on node-2. Either way one copy, never rebooted."""
    cluster = qemu_cluster(tmp_path, tiny_storage, driver_options={"migrate_bandwidth_mbps": 4})
    try:
        client = cluster.client()
        op = cluster.run(client.create_vms(count=1, cluster="m", node="node-1"), timeout=120)
        vm_id = op.targets[0]
        wait_ready(client, vm_id)
        client.migrate([vm_id], target_node="node-2")
        wait_for("the incoming QEMU", lambda: cluster.guest_pid("node-2", vm_id), timeout=20)
        time.sleep(1.0)
        restart_ctrl(cluster, ["node-1", "node-2"])
        client = cluster.client()
        settled = wait_for(
            "incoming_settled",
            lambda: client.events(name="incoming_settled", vm=vm_id).items or None,
            timeout=30,
        )
        # still receiving: dropped, the guest stays on node-1; arrived whole: runs on node-2
        assert settled[0].node == "node-2"
        outcome = settled[0].data["outcome"]
        where = {"dropped": "node-1", "running": "node-2"}[outcome]
        print(f"incoming copy {outcome}: the guest runs on {where}")
        wait_for(
            f"running on {where}",
            lambda: (v := client.get_vm(vm_id)).state == VMState.RUNNING and v.node == where,
            timeout=60,
        )
        settle_and_check(cluster, bound=60)
        wait_beat(client, vm_id, beats(client, vm_id)[-1] + 1)
        assert boots(client, vm_id) == 1
        assert cluster.guest_pid("node-1" if where == "node-2" else "node-2", vm_id) is None
    finally:
        _power_off(cluster)
        cluster.stop()


def test_a_second_qemu_cannot_take_the_disk_of_a_guest_that_runs(cluster: Cluster) -> None:
    """The disk lease with real guests: QEMU's image lock (kept on). An LNM killed while its
    guest runs leaves the guest running; a start of that (lost) VM elsewhere boots a second
    QEMU on node-2, which cannot lock the disk: the start fails saying so, one QEMU runs."""
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="l", node="node-1"), timeout=120)
    vm_id = op.targets[0]
    wait_ready(client, vm_id)
    kill_lnm(cluster, "node-1")
    wait_for("lost", lambda: client.get_vm(vm_id).state == VMState.LOST, timeout=15)
    start = cluster.run(client.start_existing([vm_id]), timeout=120)
    assert start.status == OpStatus.FAILED, start
    assert LEASE_HELD in (start.error or "") and "lock" in (start.error or ""), start.error
    assert cluster.guest_pid("node-2", vm_id) is None
    assert cluster.guest_pid("node-1", vm_id) is not None
    assert client.get_vm(vm_id).node == "node-1"
    cluster.start_lnm("node-1", driver="qemu", vcpus=4, memory_mb=4096)
    wait_for("running on node-1", lambda: client.get_vm(vm_id).state == VMState.RUNNING, 30)
    settle_and_check(cluster, bound=60)
