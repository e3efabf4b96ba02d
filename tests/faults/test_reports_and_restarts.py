"""Reconciliation never moves a record backwards, and nodes that stay away are noticed
(issue 12, items 16, 17 and 18)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.sync.client import connect

from harness import Cluster, wait_for
from test_node_link import ScriptedNode, ctrl
from usher.ctrl.controller import Controller
from usher.ctrl.engine import SYSTEM
from usher.model import VM, OpKind, OpStatus, VMAction, VMSpec, VMState

from .scenario import STATS

__all__ = ["ctrl"]  # the scripted-node tests' controller fixture


class NumberedNode(ScriptedNode):
    """A scripted node whose replies are numbered on receipt, as the link's read loop does."""

    def __init__(self, ctrl: Controller, name: str, answer: Any) -> None:
        super().__init__(name, answer)
        self.link.observations = ctrl.nodes.observations

    async def _send(self, text: str) -> None:
        msg = json.loads(text)
        self.seen.append(msg["action"])
        answer = self.answer(msg)
        reply: dict[str, Any] = {"type": "reply", "id": msg["id"]}
        if isinstance(answer, str):
            reply |= {"ok": False, "error": answer}
        else:
            reply |= {"ok": True, "result": answer}
        loop = asyncio.get_running_loop()
        loop.call_soon(self.link.on_reply, reply, self.link.observations.stamp())


async def test_a_hello_older_than_a_steps_reply_is_not_applied(ctrl: Controller) -> None:
    """The node's hello said ``paused``; a stop ran on the VM before the hello's report was
    reconciled (it waited for the VM's lock): the VM stays ``stopped``, as the stop's
    reply (newer) said, not ``paused``, as the hello (older) did."""
    node = NumberedNode(ctrl, "node-1", lambda msg: {"id": "vm-1", "state": "stopped"})
    await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    vm = VM(id="vm-1", name="one", owner="system", spec=VMSpec(), node="node-1",
            state=VMState.PAUSED)  # fmt: skip
    await ctrl.store.add_vms([vm])
    hello = ctrl.nodes.observations.stamp()  # the hello's snapshot: paused
    op = await ctrl.engine.act(SYSTEM, OpKind.STOP, VMAction(vms=["vm-1"]), None)
    assert (await ctrl.engine.wait(op.id, 10)).status == OpStatus.SUCCEEDED
    await ctrl.engine.node_joined("node-1", [{"id": "vm-1", "state": "paused"}], hello)
    await asyncio.sleep(0.2)
    after = await ctrl.store.get_vm("vm-1")
    assert after is not None and after.state == VMState.STOPPED, after
    # a report received after the reply is newer, and is applied
    newer = ctrl.nodes.observations.stamp()
    await ctrl.engine.vm_reported("node-1", "vm-1", VMState.ERROR, "crashed", newer)
    after = await ctrl.store.get_vm("vm-1")
    assert after is not None and after.state == VMState.ERROR, after


async def test_a_refused_command_does_not_make_an_older_report_stale(ctrl: Controller) -> None:
    """Found by the soak: a VM lost with its node; the node comes back (its hello: the VM
    runs) while a start of the VM is under way, which the node refuses ("it is running").
    A refusal records the VM as it was, not as the node said: the hello's report must still
    be applied (it once was dropped as older than the refusal, and the VM stayed lost)."""
    node = NumberedNode(ctrl, "node-1", lambda msg: "cannot start VM vm-3: it is running")
    await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    await ctrl.store.add_vms([VM(id="vm-3", name="three", owner="system", spec=VMSpec(),
                                 node="node-1", state=VMState.LOST)])  # fmt: skip
    hello = ctrl.nodes.observations.stamp()
    op = await ctrl.engine.act(SYSTEM, OpKind.START, VMAction(vms=["vm-3"]), None)
    assert (await ctrl.engine.wait(op.id, 10)).status == OpStatus.FAILED
    await ctrl.engine.node_joined("node-1", [{"id": "vm-3", "state": "running"}], hello)
    await asyncio.sleep(0.2)
    after = await ctrl.store.get_vm("vm-3")
    assert after is not None and after.state == VMState.RUNNING, after


async def test_an_older_state_report_after_a_newer_one_is_dropped(ctrl: Controller) -> None:
    node = NumberedNode(ctrl, "node-1", lambda msg: {})
    await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    await ctrl.store.add_vms([VM(id="vm-2", name="two", owner="system", spec=VMSpec(),
                                 node="node-1", state=VMState.RUNNING)])  # fmt: skip
    older, newer = ctrl.nodes.observations.stamp(), ctrl.nodes.observations.stamp()
    await ctrl.engine.vm_reported("node-1", "vm-2", VMState.STOPPED, "powered off", newer)
    await ctrl.engine.vm_reported("node-1", "vm-2", VMState.PAUSED, None, older)
    after = await ctrl.store.get_vm("vm-2")
    assert after is not None and after.state == VMState.STOPPED, after


def test_a_node_that_dies_while_the_controller_is_down_is_declared_lost(make_cluster) -> None:
    cluster: Cluster = make_cluster(
        nodes=3,
        plugins=["ha"],
        settings={"rejoin_grace": 3.0},
        lnm_options={"driver_options": {"lease_ttl": 2.0}},
    )
    client = cluster.client()
    op = cluster.run(client.create_vms(names=["keep"], node="node-2", kwargs={"ha": True}))
    vm_id = op.targets[0]
    cluster.kill_ctrl()
    cluster.kill_lnm("node-2")  # dies while nobody watches
    STATS["kills"] += 2
    began = time.monotonic()
    cluster.start_ctrl()
    client = cluster.client()
    lost = wait_for(
        "node-2 declared lost",
        lambda: client.events(name="node_lost", node="node-2").items or None,
        timeout=20,
    )
    took = time.monotonic() - began
    assert "did not dial again" in lost[-1].data["reason"]
    assert 2.5 < took < 12, took
    # its VM is lost, and HA (whose list of down nodes survived too) starts it elsewhere
    wait_for(
        "keep running elsewhere",
        lambda: (v := client.get_vm(vm_id)).state == VMState.RUNNING and v.node != "node-2",
        timeout=30,
    )


def test_an_lnm_that_dies_between_hello_and_welcome_is_let_go_at_once(make_cluster) -> None:
    cluster: Cluster = make_cluster(nodes=0)
    url = cluster.url.replace("http", "ws", 1) + "/v1/lnm"
    token = cluster.join_token_file.read_text().strip()
    for n in range(5):
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            ws.send(json.dumps({"type": "hello", "node": f"brief-{n}", "driver": "fake"}))
    client = cluster.client()

    def down(name: str) -> bool:
        nodes = {node.name: node for node in client.nodes()}
        return name in nodes and not nodes[name].connected

    for n in range(5):
        wait_for(f"brief-{n} down", lambda n=n: down(f"brief-{n}"), timeout=2)
    log = cluster.log("ctrl")
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-2000:]
