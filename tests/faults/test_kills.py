"""kill -9 of the controller or of an LNM in the middle of each kind of operation, then a
restart, reconciliation and the invariants (fake driver with a latency on the action)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from harness import LEASE_TTL, Cluster, wait_for
from usher.client import Client
from usher.model import OpStatus, VMState

from .scenario import STATS, kill_lnm, restart_ctrl, settle_and_check

LATENCY = 2.0
NODES = ["node-1", "node-2"]


def _setup(make_cluster: Callable[..., Cluster], action: str) -> tuple[Cluster, dict]:
    options = {"driver_options": {"latency": {action: LATENCY}}}
    return make_cluster(nodes=2, lnm_options=options), options


def _vms_on_node1(cluster: Cluster, client: Client, count: int = 2) -> list[str]:
    op = cluster.run(client.create_vms(count=count, cluster="f", node="node-1"), timeout=30)
    assert op.status == OpStatus.SUCCEEDED, op.error
    return list(op.targets)


# (action under latency, prepare the VMs, fire the operation)
def _fire(cluster: Cluster, client: Client, kind: str) -> tuple[str, list[str]]:
    """Prepare VMs on node-1 and fire a ``kind`` operation on them; returns (op id, vms)."""
    if kind == "create":
        op = client.create_vms(count=2, cluster="f", node="node-1")
        return op.id, list(op.targets)
    vms = _vms_on_node1(cluster, client)
    if kind == "start":
        assert cluster.run(client.stop(vms)).status == OpStatus.SUCCEEDED
        return client.start_existing(vms).id, vms
    if kind == "resume":
        assert cluster.run(client.pause(vms)).status == OpStatus.SUCCEEDED
        return client.resume(vms).id, vms
    if kind == "migrate":
        return client.migrate(vms, target_node="node-2").id, vms
    return client.action(kind, vms).id, vms


ACTION_OF = {"create": "start", "migrate": "migrate"}

CTRL_KINDS = ["create", "start", "stop", "pause", "resume", "reboot", "migrate", "destroy"]


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("kind", CTRL_KINDS)
def test_controller_killed_during(make_cluster, kind: str, db_kind: str) -> None:
    """What the controller was doing is in its database: both kinds of database."""
    cluster, _ = _setup(make_cluster, ACTION_OF.get(kind, kind))
    client = cluster.client()
    op_id, _vms = _fire(cluster, client, kind)
    time.sleep(LATENCY / 3)
    assert client.get_operation(op_id).status in (OpStatus.QUEUED, OpStatus.RUNNING)
    restart_ctrl(cluster, NODES)
    client = cluster.client()
    op = cluster.run(client.get_operation(op_id), timeout=30)
    # a running operation is completed or failed with a reason
    assert op.status == OpStatus.SUCCEEDED or op.error, op
    settle_and_check(cluster)
    # the VMs are usable again after the crash: a destroy of what is left goes through
    left = [vm.id for vm in cluster.vms()]
    if left:
        done = cluster.run(client.destroy(left), timeout=30)
        assert done.status == OpStatus.SUCCEEDED, done.error
    settle_and_check(cluster)
    assert cluster.vms() == []


# which node dies: node-1 holds the VMs (and is the migration source), node-2 the target
LNM_CASES = [
    ("create", "node-1"),
    ("start", "node-1"),
    ("stop", "node-1"),
    ("pause", "node-1"),
    ("reboot", "node-1"),
    ("destroy", "node-1"),
    ("migrate", "node-1"),
    ("migrate", "node-2"),
]


@pytest.mark.parametrize(("kind", "victim"), LNM_CASES)
def test_lnm_killed_during(make_cluster, kind: str, victim: str) -> None:
    cluster, options = _setup(make_cluster, ACTION_OF.get(kind, kind))
    client = cluster.client()
    op_id, vms = _fire(cluster, client, kind)
    time.sleep(LATENCY / 3)
    kill_lnm(cluster, victim)
    op = cluster.run(client.get_operation(op_id), timeout=30)
    assert op.status == OpStatus.FAILED, op  # its node went away mid-way
    assert op.error
    # while it is down its VMs are lost, not silently running elsewhere or twice
    cluster.start_lnm(victim, **options)
    settle_and_check(cluster)
    states = {vm.id: vm.state for vm in cluster.vms()}
    if kind == "destroy":
        assert set(states) <= set(vms)
    else:
        assert set(states) == set(vms), states
    # and they can be cleaned up
    done = cluster.run(client.destroy(list(states)), timeout=30)
    assert done.status == OpStatus.SUCCEEDED, done.error
    settle_and_check(cluster)


def test_migration_target_dies_for_good(make_cluster) -> None:
    """The target LNM dies mid-migration and stays dead: the VM keeps running on the source."""
    cluster, _ = _setup(make_cluster, "migrate")
    client = cluster.client()
    vms = _vms_on_node1(cluster, client)
    op = client.migrate(vms, target_node="node-2")
    time.sleep(LATENCY / 3)
    kill_lnm(cluster, "node-2")
    op = cluster.run(op, timeout=30)
    assert op.status == OpStatus.FAILED and op.error
    settle_and_check(cluster)
    for vm in cluster.vms():
        assert (vm.node, vm.state) == ("node-1", VMState.RUNNING), vm


def _host_dies(cluster: Cluster, client: Client, vm_id: str) -> None:
    """node-1's LNM is killed and stays away past its disk leases' ttl: as far as the
    shared storage knows, the host died, and its guests' disks may be taken over."""
    kill_lnm(cluster, "node-1")
    wait_for("lost", lambda: client.get_vm(vm_id).state == VMState.LOST, timeout=10)
    time.sleep(LEASE_TTL + 0.5)


@pytest.mark.parametrize("kind", ["start", "cycle"])
def test_lost_vm_started_elsewhere_then_node_returns(make_cluster, kind: str) -> None:
    cluster = make_cluster(nodes=2)
    client = cluster.client()
    vms = _vms_on_node1(cluster, client, count=1)
    _host_dies(cluster, client, vms[0])
    op = cluster.run(client.action(kind, vms), timeout=30)
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert client.get_vm(vms[0]).node == "node-2"
    # its driver still "runs" the old copy, which lost its disk lease: it comes back
    # error and is fenced (tests/faults/test_split_brain.py: while its lease holds, a
    # start elsewhere is refused)
    cluster.start_lnm("node-1")
    fenced = wait_for(
        "the stale copy fenced", lambda: client.events(name="fenced", vm=vms[0]).items or None
    )
    assert [e.node for e in fenced] == ["node-1"]
    settle_and_check(cluster)
    assert (client.get_vm(vms[0]).node, client.get_vm(vms[0]).state) == (
        "node-2",
        VMState.RUNNING,
    )


def test_vm_destroyed_while_its_old_node_was_away(make_cluster) -> None:
    """A lost VM is started elsewhere, then destroyed; its old node comes back with the
    copy: the controller remembers the destroy and fences it (not an unknown VM left
    running and holding capacity)."""
    cluster = make_cluster(nodes=2)
    client = cluster.client()
    vms = _vms_on_node1(cluster, client, count=1)
    _host_dies(cluster, client, vms[0])
    assert cluster.run(client.start_existing(vms)).status == OpStatus.SUCCEEDED
    assert cluster.run(client.destroy(vms)).status == OpStatus.SUCCEEDED
    cluster.start_lnm("node-1")
    fenced = wait_for(
        "the copy fenced", lambda: client.events(name="fenced", vm=vms[0]).items or None
    )
    assert fenced[0].node == "node-1" and "was destroyed" in fenced[0].data["reason"]
    assert client.events(name="unknown_vm", vm=vms[0]).items == []
    settle_and_check(cluster)


def test_lnm_frozen_is_detected_within_node_timeout(make_cluster) -> None:
    """SIGSTOP an LNM (socket open, no heartbeats): it is declared down after node_timeout
    (3 s in the test cluster), its VMs lost; SIGCONT and it reconciles."""
    cluster = make_cluster(nodes=2)
    client = cluster.client()
    vms = _vms_on_node1(cluster, client)
    proc = cluster.lnms["node-1"]
    os.kill(proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:
        wait_for("node-1 down", lambda: not client.node("node-1").connected, timeout=15)
        took = time.monotonic() - frozen
        STATS["detect_s"].append(took)
        STATS["kills"] += 1
        print(f"frozen LNM declared down after {took:.2f} s (node_timeout 3.0)")
        assert 2.0 <= took <= 6.0, took
        wait_for(
            "its VMs lost",
            lambda: {client.get_vm(v).state for v in vms} == {VMState.LOST},
            timeout=5,
        )
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    wait_for("node-1 back", lambda: client.node("node-1").connected, timeout=30)
    settle_and_check(cluster)
    assert {client.get_vm(v).state for v in vms} == {VMState.RUNNING}
