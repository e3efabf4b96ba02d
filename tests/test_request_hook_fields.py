"""What a request hook may change of a request, and what happens when it changes more.

Hooks may change ``REQUEST_HOOKS_MAY_CHANGE`` (spec, kwargs, node, target node), checked again
afterwards as the caller's were; changing anything else (which VMs, how many, the cluster)
fails the hook, and the request is refused with nothing done: what was authorized is what
runs."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from test_placement_keeps_its_word import SlowNode
from usher.ctrl.config import Settings
from usher.ctrl.controller import Controller
from usher.ctrl.engine import SYSTEM, RequestError
from usher.images import catalog
from usher.model import (
    REQUEST_HOOKS_MAY_CHANGE,
    VM,
    Capacity,
    CreateVMs,
    OpKind,
    OpRequest,
    OpStatus,
    VMAction,
    VMSpec,
    VMState,
)
from usher.plugin import hookimpl

Change = Callable[[OpRequest], None]


class Meddler:
    """A plugin whose request hook applies ``change`` to every request."""

    def __init__(self) -> None:
        self.change: Change = lambda req: None

    @hookimpl
    def request(self, request: OpRequest) -> None:
        self.change(request)


@pytest.fixture
async def meddled(tmp_path: Path) -> AsyncIterator[tuple[Controller, Meddler]]:
    settings = Settings(state_dir=tmp_path, storage_dir=tmp_path / "storage")
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    catalog.import_disk(settings.storage_dir, "tiny", blank, "blank disk")
    ctrl = Controller(settings)
    meddler = Meddler()
    ctrl.plugins.register("meddler", meddler)
    await ctrl.start()
    for name in ("node-1", "node-2"):
        node = SlowNode(name, Capacity(vcpus=8, memory_mb=8192))
        await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
    await ctrl.store.add_vms(
        [
            VM(
                id=f"vm-{n}",
                name=f"vm{n}",
                owner="system",
                spec=VMSpec(vcpus=1, memory_mb=256),
                state=VMState.RUNNING,
                node="node-1",
            )
            for n in (1, 2)
        ]
    )
    yield ctrl, meddler
    await ctrl.stop()


def test_the_fields_a_hook_may_change_are_stated() -> None:
    assert {"spec", "kwargs", "node", "target_node"} == REQUEST_HOOKS_MAY_CHANGE


async def test_a_hook_that_changes_how_many_vms_fails_and_nothing_is_made(
    meddled: tuple[Controller, Meddler],
) -> None:
    ctrl, meddler = meddled
    meddler.change = lambda req: setattr(req, "count", 50)
    with pytest.raises(RequestError) as refused:
        await ctrl.engine.create(SYSTEM, CreateVMs(count=1), None)
    assert refused.value.status == 403 and "it changed count" in refused.value.message
    op = refused.value.detail["operation"]
    assert op["status"] == OpStatus.FAILED.value
    assert len(await ctrl.store.vms_where()) == 2  # the two of the fixture, no more


async def test_a_hook_that_adds_a_vm_fails_and_the_vm_is_untouched(
    meddled: tuple[Controller, Meddler],
) -> None:
    ctrl, meddler = meddled
    meddler.change = lambda req: req.vm_ids.append("vm-2")
    with pytest.raises(RequestError) as refused:
        await ctrl.engine.act(SYSTEM, OpKind.STOP, VMAction(vms=["vm1"]), None)
    assert refused.value.status == 403 and "vm_ids" in refused.value.message
    for vm_id in ("vm-1", "vm-2"):
        vm = await ctrl.store.get_vm(vm_id)
        assert vm is not None and vm.state == VMState.RUNNING


async def test_a_hook_that_changes_the_cluster_fails(meddled: tuple[Controller, Meddler]) -> None:
    ctrl, meddler = meddled
    meddler.change = lambda req: setattr(req, "cluster", "someone-elses")
    with pytest.raises(RequestError, match="it changed cluster"):
        await ctrl.engine.create(SYSTEM, CreateVMs(count=1), None)


async def test_a_hook_may_change_the_spec_and_it_is_checked_again(
    meddled: tuple[Controller, Meddler],
) -> None:
    ctrl, meddler = meddled

    def bigger(req: OpRequest) -> None:
        if req.spec is not None:
            req.spec.memory_mb = 1024

    meddler.change = bigger
    op = await ctrl.engine.create(SYSTEM, CreateVMs(names=["grown"], memory_mb=256), None)
    assert (await ctrl.engine.wait(op.id, 10)).status == OpStatus.SUCCEEDED
    grown = await ctrl.store.get_vm("grown")
    assert grown is not None and grown.spec.memory_mb == 1024

    def broken(req: OpRequest) -> None:
        if req.spec is not None:
            req.spec.vcpus = -3

    meddler.change = broken
    with pytest.raises(RequestError) as refused:
        await ctrl.engine.create(SYSTEM, CreateVMs(names=["shrunk"]), None)
    assert refused.value.status == 422 and "spec invalid" in refused.value.message
    assert await ctrl.store.get_vm("shrunk") is None


async def test_kwargs_a_hook_sets_are_checked_as_the_callers_are(
    meddled: tuple[Controller, Meddler],
) -> None:
    ctrl, meddler = meddled
    meddler.change = lambda req: req.kwargs.update(timeout=10**30)
    with pytest.raises(RequestError) as refused:
        await ctrl.engine.act(SYSTEM, OpKind.STOP, VMAction(vms=["vm1"]), None)
    assert refused.value.status == 422 and "timeout" in refused.value.message
    vm = await ctrl.store.get_vm("vm-1")
    assert vm is not None and vm.state == VMState.RUNNING


async def test_a_target_node_a_hook_names_must_exist(meddled: tuple[Controller, Meddler]) -> None:
    ctrl, meddler = meddled
    meddler.change = lambda req: setattr(req, "target_node", "nowhere")
    with pytest.raises(RequestError) as refused:
        await ctrl.engine.act(SYSTEM, OpKind.MIGRATE, VMAction(vms=["vm1"]), None)
    assert refused.value.status == 404 and "nowhere" in refused.value.message
    meddler.change = lambda req: setattr(req, "target_node", "node-2")
    op = await ctrl.engine.act(SYSTEM, OpKind.MIGRATE, VMAction(vms=["vm1"]), None)
    assert (await ctrl.engine.wait(op.id, 10)).status == OpStatus.SUCCEEDED
    moved = await ctrl.store.get_vm("vm-1")
    assert moved is not None and moved.node == "node-2"
