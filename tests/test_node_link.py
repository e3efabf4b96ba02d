"""A node link that breaks under a command: the caller hears ``NodeGone`` whatever the
transport raised, and an operation does not leave its VM in a transition no one finishes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from usher import wire
from usher.ctrl.config import Settings
from usher.ctrl.controller import Controller
from usher.ctrl.engine import SYSTEM
from usher.ctrl.link_messages import Hello
from usher.ctrl.nodes import NodeGone, NodeLink
from usher.images import catalog
from usher.model import VM, Capacity, OpKind, OpStatus, VMAction, VMSpec, VMState

Answer = Callable[[dict[str, Any]], dict[str, Any] | str]


class ScriptedNode:
    """A node's end of a link that answers each command with ``answer(msg)`` (a result, or
    an error string) until it is ``broken``: then sending raises as Starlette does."""

    def __init__(self, name: str, answer: Answer) -> None:
        self.name = name
        self.answer = answer
        self.broken = False
        self.seen: list[str] = []
        self.link = NodeLink(name, self._send, self._close)

    async def _send(self, text: str) -> None:
        if self.broken:
            raise WebSocketDisconnect(code=1006)
        msg = wire.loads(text)
        self.seen.append(msg["action"])
        answer = self.answer(msg)
        reply: dict[str, Any] = {"type": "reply", "id": msg["id"]}
        if isinstance(answer, str):
            reply |= {"ok": False, "error": answer}
        else:
            reply |= {"ok": True, "result": answer}
        asyncio.get_running_loop().call_soon(self.link.on_reply, reply)

    async def _close(self) -> None:
        return None

    def hello(self) -> Hello:
        return Hello(
            type="hello",
            node=self.name,
            driver="fake",
            capacity=Capacity(vcpus=8, memory_mb=8192),
            capabilities=["live_migrate"],
        )


async def test_a_send_on_a_dropped_link_raises_node_gone() -> None:
    node = ScriptedNode("node-1", lambda msg: {})
    assert await node.link.call("info", vm_id="vm-1", timeout=5) == {}
    node.broken = True
    with pytest.raises(NodeGone, match="node-1: link lost"):
        await node.link.call("info", vm_id="vm-1", timeout=5)
    assert node.link._pending == {}


def running_vm() -> VM:
    return VM(
        id="vm-1",
        name="one",
        owner="system",
        spec=VMSpec(vcpus=1, memory_mb=256),
        state=VMState.RUNNING,
        node="node-1",
    )


@pytest.fixture
async def ctrl(tmp_path: Path) -> Any:
    settings = Settings(state_dir=tmp_path, storage_dir=tmp_path / "storage")
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    catalog.import_disk(settings.storage_dir, "tiny", blank, "blank disk")
    controller = Controller(settings)
    await controller.start()
    yield controller
    await controller.stop()


async def test_a_target_link_that_breaks_mid_migration_leaves_the_vm_running_on_its_source(
    ctrl: Controller,
) -> None:
    """The source's migrate fails as the target goes; telling the target to abort then meets
    a link that raises on send (not a ConnectionError): the VM must end ``running`` on its
    source, as the source reports, not stay ``migrating``."""
    source = ScriptedNode(
        "node-1",
        lambda msg: (
            "the migration target closed the connection"
            if msg["action"] == "migrate"
            else {"id": msg["vm_id"], "state": "running"}
        ),
    )
    target = ScriptedNode("node-2", lambda msg: {"uri": "fake://127.0.0.1:1/vm-1"})

    def break_target(msg: dict[str, Any]) -> dict[str, Any] | str:
        if msg["action"] == "migrate":
            target.broken = True
            return "the migration target closed the connection"
        return {"id": msg["vm_id"], "state": "running"}

    source.answer = break_target
    for node in (source, target):
        await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    await ctrl.store.add_vms([running_vm()])
    body = VMAction(vms=["vm-1"], target_node="node-2")
    op = await ctrl.engine.act(SYSTEM, OpKind.MIGRATE, body, None)
    op = await ctrl.engine.wait(op.id, 10)
    assert op.status == OpStatus.FAILED and "closed the connection" in (op.error or ""), op
    assert target.seen == ["prepare_incoming"] and source.seen == ["migrate", "info"]
    after = await ctrl.store.get_vm("vm-1")
    assert after is not None
    assert (after.node, after.state) == ("node-1", VMState.RUNNING), after


async def test_a_bug_in_a_step_does_not_leave_its_vm_in_transition(
    ctrl: Controller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that breaks on something unforeseen after it set ``migrating``: the VM is
    recorded as its node reports it, and the operation says what broke."""
    nodes = [ScriptedNode(f"node-{i}", lambda msg: {"state": "running"}) for i in (1, 2)]
    for node in nodes:
        await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    await ctrl.store.add_vms([running_vm()])

    async def broken(vm: VM) -> dict[str, Any]:
        raise KeyError("a bug")

    monkeypatch.setattr(ctrl.engine.images, "guest", broken)
    body = VMAction(vms=["vm-1"], target_node="node-2")
    op = await ctrl.engine.wait((await ctrl.engine.act(SYSTEM, OpKind.MIGRATE, body, None)).id, 10)
    assert op.status == OpStatus.FAILED and "internal error: KeyError" in (op.error or ""), op
    after = await ctrl.store.get_vm("vm-1")
    assert after is not None
    assert (after.node, after.state) == ("node-1", VMState.RUNNING), after
    assert "internal error" in (after.state_reason or "")
