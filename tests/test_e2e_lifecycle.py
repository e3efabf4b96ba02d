"""Failures, recovery, timeouts, cancel and host maintenance, end to end (issue 5): a real
controller and fake LNMs as processes; the fake driver's latencies make timings deterministic.
Durations are printed as figures; the assertions are about behaviour."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from faults.invariants import fake_running
from harness import Cluster, wait_for
from usher import hookimpl
from usher.ctrl.api.deps import PrincipalDep
from usher.ctrl.context import PluginContext
from usher.model import VM, NodeState, Operation, OpKind, OpStatus, VMState

NODE_TIMEOUT = 3.0  # the harness's config


class FacadeProbe:
    """A plugin (loaded by the controller as ``test_e2e_lifecycle:FacadeProbe``) that exposes
    PluginContext.submit and .fence as routes, so a test can drive them."""

    ctx: PluginContext

    @hookimpl
    def usher_configure(self, ctx: PluginContext) -> None:
        self.ctx = ctx

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/probe")

        @router.post("/start/{vm}", response_model=Operation)
        async def start(
            vm: str, _: PrincipalDep, target: str | None = None, strict: bool = False
        ) -> Operation:
            return await self.ctx.submit(OpKind.START, [vm], target_node=target, strict=strict)

        @router.post("/fence/{node}/{vm_id}")
        async def fence(node: str, vm_id: str, _: PrincipalDep) -> dict[str, str]:
            await self.ctx.fence(node, vm_id, "probe")
            return {"fenced": vm_id}

        return [router]


def _vm(cluster: Cluster, name: str) -> VM:
    return cluster.client().get_vm(name)


def _create(cluster: Cluster, name: str, node: str, **kwargs: Any) -> VM:
    client = cluster.client()
    op = client.create_vms(names=[name], node=node, kwargs=dict(kwargs))
    done = cluster.run(op)
    assert done.status == OpStatus.SUCCEEDED, done.error
    return client.get_vm(name)


def _wait_state(cluster: Cluster, name: str, state: VMState, timeout: float = 20) -> VM:
    return wait_for(
        f"{name} {state.value}",
        lambda: vm if (vm := _vm(cluster, name)).state == state else None,
        timeout,
    )


def test_silent_node_goes_down_its_vms_lost_then_reconciled(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=2)
    _create(cluster, "silent-a", "node-1")
    _create(cluster, "silent-b", "node-1")
    lnm = cluster.lnms["node-1"]
    os.kill(lnm.pid, signal.SIGSTOP)  # alive, link open, but not a heartbeat more
    silenced = time.monotonic()
    try:
        wait_for(
            "node-1 down",
            lambda: cluster.node("node-1").state == NodeState.DOWN,
            NODE_TIMEOUT + 5,
            every=0.05,
        )
        detected = time.monotonic() - silenced
        print(f"\nlost-node detection: {detected:.2f} s (node_timeout {NODE_TIMEOUT:g} s)")
        assert detected <= NODE_TIMEOUT + 1.0
        for name in ("silent-a", "silent-b"):
            vm = _wait_state(cluster, name, VMState.LOST)
            assert "node-1 lost" in (vm.state_reason or "")
        events = cluster.client().events(name="node_lost", node="node-1").items
        assert events and events[-1].data["reason"] == "missed heartbeats"
    finally:
        os.kill(lnm.pid, signal.SIGCONT)
    cluster.wait_node("node-1", connected=True)
    for name in ("silent-a", "silent-b"):  # the LNM reports they run: the records follow
        vm = _wait_state(cluster, name, VMState.RUNNING)
        assert vm.node == "node-1"


def test_controller_killed_with_node_gone_transitional_vm_becomes_lost(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=1)
    cluster.start_lnm("node-2", driver_options={"latency": {"start": 60}})
    client = cluster.client()
    op = client.create_vms(names=["stranded"], node="node-2")
    _wait_state(cluster, "stranded", VMState.STARTING)
    cluster.kill_ctrl()
    cluster.kill_lnm("node-2")
    restarted = time.monotonic()
    cluster.start_ctrl()
    assert cluster.client().get_operation(op.id).status == OpStatus.FAILED
    vm = _wait_state(cluster, "stranded", VMState.LOST, timeout=NODE_TIMEOUT + 10)
    print(f"\ntransitional VM settled {time.monotonic() - restarted:.2f} s after the restart")
    assert "controller restart" in (vm.state_reason or "")
    assert "node-2 did not come back" in (vm.state_reason or "")


def test_step_over_its_timeout_fails_and_the_vm_is_settled(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"start": 30}}})
    client = cluster.client()
    op = client.create_vms(names=["slow"], kwargs={"timeout": 2})
    done = cluster.run(op, timeout=30)
    assert done.status == OpStatus.FAILED
    assert "slow: timed out after 2 s" in (done.error or "")
    assert done.result["timeout"] == 2
    vm = _vm(cluster, "slow")
    assert vm.state == VMState.STOPPED  # the node never got to boot it: it says so
    assert "start timed out after 2 s" in (vm.state_reason or "")
    print(f"\nstep timeout: failed after {done.finished_at - done.created_at:.2f} s (limit 2 s)")


def test_cancel_of_a_queued_step_it_never_runs(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"reboot": 4}}})
    _create(cluster, "busy", "node-1")
    client = cluster.client()
    first = client.action(OpKind.REBOOT, ["busy"])
    second = client.action(OpKind.STOP, ["busy"])  # queued behind the reboot (VM lock)
    answer = client.cancel(second)
    assert answer.result["cancel"]["refused"] == {}
    done = cluster.run(second)
    assert done.status == OpStatus.CANCELLED
    assert done.result["progress"]["cancelled"] == 1
    assert cluster.run(first).status == OpStatus.SUCCEEDED
    assert _vm(cluster, "busy").state == VMState.RUNNING  # the stop never ran
    again = cluster.http("POST", f"/v1/operations/{second.id}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["error"]


def test_cancel_of_a_running_reboot_is_refused_and_it_goes_on(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"reboot": 3}}})
    _create(cluster, "rebooting", "node-1")
    client = cluster.client()
    op = client.action(OpKind.REBOOT, ["rebooting"])
    wait_for("the reboot to run", lambda: client.get_operation(op).status == OpStatus.RUNNING)
    vm_id = _vm(cluster, "rebooting").id
    refused = client.cancel(op).result["cancel"]["refused"]
    assert "cannot be cancelled" in refused[vm_id]
    assert cluster.run(op).status == OpStatus.SUCCEEDED


def test_cancel_of_a_running_migration_keeps_the_vm_on_its_source(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=2, lnm_options={"driver_options": {"latency": {"migrate": 20}}})
    _create(cluster, "mover", "node-1")
    client = cluster.client()
    op = client.action(OpKind.MIGRATE, ["mover"], target_node="node-2")
    _wait_state(cluster, "mover", VMState.MIGRATING)
    time.sleep(1)  # the migrate command is on node-1 now
    asked = time.monotonic()
    answer = client.cancel(op)
    assert answer.result["cancel"]["refused"] == {}
    done = cluster.run(op)
    print(f"\nmigration cancelled in {time.monotonic() - asked:.2f} s")
    assert done.status == OpStatus.CANCELLED
    vm = _vm(cluster, "mover")
    assert (vm.node, vm.state) == ("node-1", VMState.RUNNING)
    assert client.node("node-2").usage.vms == 0 or wait_for(
        "node-2 to free the incoming VM", lambda: client.node("node-2").usage.vms == 0
    )


def test_a_migration_that_breaks_after_the_guest_arrived_leaves_it_on_the_target(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The whole guest reached node-2 (its source let go of it), then node-2 fails to finish
    the migration: the target settles its copy and runs it. (Before, the target's copy was
    aborted, which destroyed the only one: the VM was lost.)"""
    cluster = make_cluster(nodes=1)
    cluster.start_lnm("node-2", driver_options={"fail": {"finish_incoming": 1.0}})
    _create(cluster, "arrives", "node-1")
    client = cluster.client()
    done = cluster.run(client.action(OpKind.MIGRATE, ["arrives"], target_node="node-2"))
    assert done.status == OpStatus.SUCCEEDED, done.error
    vm = _vm(cluster, "arrives")
    assert (vm.node, vm.state, vm.target_node) == ("node-2", VMState.RUNNING, None)
    assert "arrived on node-2" in (vm.state_reason or "")
    assert fake_running(cluster, "node-2", vm.id) and not fake_running(cluster, "node-1", vm.id)


def test_maintenance_evacuates_running_live_and_stopped_cold_then_activate(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=3)
    for name in ("evac-1", "evac-2", "evac-3"):
        _create(cluster, name, "node-1")
    assert cluster.run(cluster.client().action(OpKind.STOP, ["evac-3"])).status == (
        OpStatus.SUCCEEDED
    )
    result = cluster.ush("node", "maintenance", "node-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert cluster.node("node-1").state == NodeState.MAINTENANCE
    vms = {vm.name: vm for vm in cluster.vms()}
    assert all(vm.node != "node-1" for vm in vms.values())
    assert vms["evac-1"].state == vms["evac-2"].state == VMState.RUNNING
    assert vms["evac-3"].state == VMState.STOPPED
    op = cluster.client().list_operations(kind=OpKind.MIGRATE, limit=1).items[0]
    assert op.result["evacuate"] == "node-1"
    assert op.result["details"][vms["evac-3"].id]["cold"] is True
    assert op.result["progress"] == {
        "done": 3,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
        "total": 3,
    }
    # nothing new goes to a node in maintenance
    new = _create(cluster, "after", "node-2")
    assert new.node == "node-2"
    plan = cluster.client().plan_start(node="node-1")
    assert plan.error
    # maintenance is kept in the database: a controller restart does not end it
    cluster.kill_ctrl()
    cluster.start_ctrl()
    for name in ("node-1", "node-2", "node-3"):  # (each redials after its own backoff)
        cluster.wait_node(name, connected=True)
    assert cluster.node("node-1").state == NodeState.MAINTENANCE
    assert cluster.client().plan_start(node="node-1").error
    result = cluster.ush("node", "activate", "node-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert cluster.node("node-1").state == NodeState.UP
    shown = cluster.ush("node", "node-1")
    assert shown.returncode == 0 and "node-1" in shown.stdout
    # a plain evacuate of node-2 (no maintenance): its VMs move, the node stays up
    evac = cluster.run(cluster.client().evacuate("node-2"))
    assert evac.status == OpStatus.SUCCEEDED, evac.error
    assert not cluster.vms(node="node-2")
    assert cluster.node("node-2").state == NodeState.UP


def test_node_actions_are_for_admins(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1, plugins=["authz"])
    user = cluster.issue_token("alice", ["user"])
    for action in ("evacuate", "maintenance", "activate"):
        r = cluster.http("POST", f"/v1/nodes/node-1/{action}", token=user)
        assert r.status_code == 403, (action, r.text)


def test_start_of_a_lost_vm_moves_it_cold_to_another_node(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=3)
    _create(cluster, "orphan-1", "node-1")
    _create(cluster, "orphan-2", "node-1")
    cluster.host_dies("node-1")  # (while its guests may run, they hold their disks)
    _wait_state(cluster, "orphan-1", VMState.LOST)
    _wait_state(cluster, "orphan-2", VMState.LOST)
    client = cluster.client()
    chosen = cluster.run(client.action(OpKind.START, ["orphan-1"]))  # the scheduler picks
    assert chosen.status == OpStatus.SUCCEEDED, chosen.error
    vm = _vm(cluster, "orphan-1")
    assert vm.state == VMState.RUNNING and vm.node in ("node-2", "node-3")
    assert chosen.result["details"][vm.id] == {"from": "node-1", "to": vm.node, "cold": True}
    named = cluster.run(client.action(OpKind.START, ["orphan-2"], target_node="node-3"))
    assert named.status == OpStatus.SUCCEEDED, named.error
    vm = _vm(cluster, "orphan-2")
    assert (vm.node, vm.state) == ("node-3", VMState.RUNNING)


def test_plugin_facade_submits_as_system_and_fences(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=3, plugins=["test_e2e_lifecycle:FacadeProbe"])
    client = cluster.client()
    kept = _create(cluster, "kept", "node-2")
    r = cluster.http("POST", f"/v1/probe/fence/node-2/{kept.id}")
    assert r.status_code == 200, r.text
    assert _vm(cluster, "kept").model_dump(exclude={"updated_at"}) == kept.model_dump(
        exclude={"updated_at"}
    )  # the record is not touched
    wait_for("node-2 to run nothing", lambda: client.node("node-2").usage.vms == 0)
    fenced = client.events(name="fenced", vm=kept.id).items
    assert fenced and fenced[0].node == "node-2" and fenced[0].data == {"reason": "probe"}

    orphan = _create(cluster, "ha-orphan", "node-1")
    cluster.host_dies("node-1")
    _wait_state(cluster, "ha-orphan", VMState.LOST)
    r = cluster.http("POST", "/v1/probe/start/ha-orphan", params={"target": "node-3"})
    assert r.status_code == 200, r.text
    op = cluster.run(Operation.model_validate(r.json()))
    assert (op.principal, op.status) == ("system", OpStatus.SUCCEEDED)
    vm = _vm(cluster, "ha-orphan")
    assert (vm.id, vm.node, vm.state) == (orphan.id, "node-3", VMState.RUNNING)
    # running already: skipped and named as such, or (strict) the request refused
    again = cluster.run(
        Operation.model_validate(cluster.http("POST", "/v1/probe/start/ha-orphan").json())
    )
    assert again.status == OpStatus.SUCCEEDED
    assert again.result["skipped"] == {orphan.id: "ha-orphan is running already"}
    strict = cluster.http("POST", "/v1/probe/start/ha-orphan", params={"strict": "true"})
    assert strict.status_code == 409 and "ha-orphan is running already" in strict.json()["error"]


def test_evacuation_respects_anti_affinity(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client()
    op = cluster.run(client.create_vms(count=2, cluster="aa", kwargs={"anti_affinity": True}))
    placed = {client.get_vm(v).node: v for v in op.targets}
    assert len(placed) == 2
    source = sorted(placed)[0]
    free = ({"node-1", "node-2", "node-3"} - set(placed)).pop()
    evac = cluster.run(client.evacuate(source))
    assert evac.status == OpStatus.SUCCEEDED, evac.error
    assert client.get_vm(placed[source]).node == free  # not beside its cluster sibling
    # and back: the only node without a VM of the cluster is the one it left
    again = cluster.run(client.evacuate(free))
    assert again.status == OpStatus.SUCCEEDED, again.error
    assert client.get_vm(placed[source]).node == source
