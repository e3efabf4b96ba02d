"""Nothing is lost: controller kill -9 and restart, LNM kill -9 and restart."""

from __future__ import annotations

from harness import Cluster, wait_for
from usher.model import OpStatus, VMState


def snapshot(cluster: Cluster) -> list[tuple[str, str, str, str | None]]:
    return sorted((vm.id, vm.name, vm.state.value, vm.node) for vm in cluster.vms())


def test_controller_kill_and_restart_loses_nothing(cluster: Cluster) -> None:
    client = cluster.client()
    created = cluster.run(client.create_vms(count=6, cluster="p"))
    stopped = cluster.run(client.stop(["p-2"]))
    cluster.run(client.pause(["p-3"]))
    cluster.client().drain("node-3")
    before = snapshot(cluster)
    ops_before = {op.id: op.status for op in client.list_operations().items}

    cluster.kill_ctrl()
    cluster.start_ctrl()
    for name in ("node-1", "node-2", "node-3"):
        cluster.wait_node(name, connected=True)

    client = cluster.client()
    assert snapshot(cluster) == before
    assert {op.id: op.status for op in client.list_operations().items} == ops_before
    assert client.get_operation(created.id).targets == created.targets
    assert client.get_operation(stopped.id).status == OpStatus.SUCCEEDED
    assert client.node("node-3").state.value == "draining"  # admin state survives too
    # the restarted controller works on the same VMs
    op = cluster.run(client.start_existing(["p-2"]))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert client.get_vm("p-2").state == VMState.RUNNING
    names = [e.name for e in client.iter_events()]
    assert names.count("ctrl_start") == 2


def test_controller_killed_during_an_operation(make_cluster) -> None:
    cluster = make_cluster(nodes=2, lnm_options={"driver_options": {"latency": {"start": 2.0}}})
    client = cluster.client()
    op = client.create_vms(count=3, cluster="mid")
    wait_for(
        "the VMs to be starting",
        lambda: {vm.state for vm in cluster.vms()} == {VMState.STARTING},
        timeout=5,
    )
    cluster.kill_ctrl()
    cluster.start_ctrl()
    client = cluster.client()
    after = client.get_operation(op.id)
    assert after.status == OpStatus.FAILED
    assert "controller restarted" in (after.error or "")
    # the LNMs finished the starts while the controller was away and say so on reconnect
    wait_for(
        "VMs reconciled to running",
        lambda: {vm.state for vm in cluster.vms()} == {VMState.RUNNING},
        timeout=20,
    )
    assert sorted(vm.id for vm in cluster.vms()) == sorted(op.targets)


def test_lnm_kill_and_restart_reattaches_its_vms(cluster: Cluster) -> None:
    client = cluster.client()
    cluster.run(client.create_vms(count=6, cluster="l"))
    on_node1 = {vm.id for vm in cluster.vms(node="node-1")}
    assert on_node1
    cluster.kill_lnm("node-1")
    cluster.wait_node("node-1", connected=False, timeout=10)
    wait_for(
        "node-1's VMs to be lost",
        lambda: {vm.state for vm in cluster.vms(node="node-1")} == {VMState.LOST},
    )
    assert {vm.state for vm in cluster.vms() if vm.id not in on_node1} == {VMState.RUNNING}
    assert "node_lost" in [e.name for e in client.iter_events(node="node-1")]

    cluster.start_lnm("node-1")
    wait_for(
        "node-1's VMs to run again",
        lambda: {vm.state for vm in cluster.vms(node="node-1")} == {VMState.RUNNING},
    )
    assert {vm.id for vm in cluster.vms(node="node-1")} == on_node1
    # and they answer operations again
    op = cluster.run(client.reboot(sorted(on_node1)))
    assert op.status == OpStatus.SUCCEEDED, op.error


def test_operation_on_a_down_node_fails_clearly(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1, cluster="d", node="node-2"))
    stopped = cluster.run(client.create_vms(count=1, cluster="s", node="node-1")).targets[0]
    assert cluster.run(client.stop([stopped])).status == OpStatus.SUCCEEDED
    cluster.host_dies("node-2")
    cluster.wait_node("node-2", connected=False, timeout=10)
    wait_for("lost", lambda: client.get_vm(op.targets[0]).state == VMState.LOST)
    # a start asked onto the down node fails with the reason; the VM stays where it was
    moved = cluster.run(client.action("start", [stopped], target_node="node-2"))
    assert moved.status == OpStatus.FAILED
    assert "node-2 is not connected" in (moved.error or "")
    vm = client.get_vm(stopped)
    assert (vm.node, vm.state) == ("node-1", VMState.STOPPED)
    # a cycle of the VM lost with node-2 boots it on a node that is up
    cycled = cluster.run(client.cycle(cluster="d"))
    assert cycled.status == OpStatus.SUCCEEDED, cycled.error
    vm = client.get_vm("d-1")
    assert vm.state == VMState.RUNNING and vm.node in ("node-1", "node-3")
    assert cycled.result["details"][vm.id] == {"from": "node-2", "to": vm.node, "cold": True}
