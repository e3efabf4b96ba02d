"""Placement keeps its word, checked on generated clusters with slow nodes.

Random clusters (nodes of random sizes, VMs already on them) get random requests at once:
creates, migrations of chosen VMs or of a whole virtual cluster, evacuations. After every
write of a VM record, no node may hold more than its capacity, counting a VM both where it
runs and where it is migrating to. And with nothing else going on, a dry run's plan is what
the same request then does.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from usher import wire
from usher.ctrl.config import Settings
from usher.ctrl.controller import Controller
from usher.ctrl.engine import SYSTEM, RequestError
from usher.ctrl.link_messages import Hello
from usher.ctrl.nodes import NodeLink
from usher.images import catalog
from usher.model import VM, Capacity, CreateVMs, OpKind, VMAction, VMSpec, VMState

SLOW = 0.02  # seconds a node takes over a migration or a boot


class SlowNode:
    """A node's end of a link that does what it is told, slowly for the long commands."""

    def __init__(self, name: str, capacity: Capacity) -> None:
        self.name = name
        self.capacity = capacity
        self.link = NodeLink(name, self._send, self._close)

    async def _send(self, text: str) -> None:
        msg = wire.loads(text)
        action = msg["action"]
        result: dict[str, Any] = {"id": msg.get("vm_id"), "state": "running"}
        if action == "prepare_incoming":
            result = {"uri": f"fake://{self.name}/{msg['vm_id']}"}
        elif action in ("stop", "destroy"):
            result = {"id": msg.get("vm_id"), "state": "stopped"}
        delay = SLOW if action in ("migrate", "start", "prepare_incoming") else 0.0
        reply = {"type": "reply", "id": msg["id"], "ok": True, "result": result}
        asyncio.get_running_loop().call_later(delay, self.link.on_reply, reply)

    async def _close(self) -> None:
        return None

    def hello(self) -> Hello:
        return Hello(
            type="hello",
            node=self.name,
            driver="fake",
            capacity=self.capacity,
            capabilities=["live_migrate", "pause", "reboot"],
        )


class CapacityWatch:
    """Checks, after every write of VM records, that no node holds more than it has."""

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl = ctrl
        self.records: dict[str, VM] = {}
        self.checks = 0
        self.breaches: list[str] = []

    def install(self) -> None:
        store = self.ctrl.store
        add_vms, update_vms, delete_vm = store.add_vms, store.update_vms, store.delete_vm

        async def watched_add(vms: Iterable[VM]) -> None:
            vms = list(vms)
            await add_vms(vms)
            self.saw(vms)

        async def watched_update(vms: Iterable[VM]) -> None:
            vms = list(vms)
            await update_vms(vms)
            self.saw(vms)

        async def watched_delete(vm: VM) -> None:
            await delete_vm(vm)
            self.records.pop(vm.id, None)

        store.add_vms, store.update_vms, store.delete_vm = (
            watched_add,
            watched_update,
            watched_delete,
        )

    def saw(self, vms: list[VM]) -> None:
        for vm in vms:
            self.records[vm.id] = vm.model_copy(deep=True)
        self.check()

    def check(self) -> None:
        self.checks += 1
        used: dict[str, list[int]] = {}
        for vm in self.records.values():
            if vm.state == VMState.STOPPED:
                continue
            for node in {vm.node, vm.target_node} - {None}:
                mine = used.setdefault(node, [0, 0])  # type: ignore[arg-type]
                mine[0] += vm.spec.vcpus
                mine[1] += vm.spec.memory_mb
        for name, (vcpus, memory) in used.items():
            node = self.ctrl.nodes.get(name)
            assert node is not None
            if vcpus > node.capacity.vcpus or memory > node.capacity.memory_mb:
                self.breaches.append(
                    f"{name}: {vcpus} vcpus / {memory} MiB of "
                    f"{node.capacity.vcpus} / {node.capacity.memory_mb}"
                )


@contextlib.asynccontextmanager
async def controller(storage: Path, nodes: list[SlowNode]) -> Any:
    with tempfile.TemporaryDirectory() as state:
        ctrl = Controller(Settings(state_dir=Path(state), storage_dir=storage))
        await ctrl.start()
        try:
            for node in nodes:
                await ctrl.nodes.attach(node.hello(), node.link, ctrl.settings.max_node_capacity)
            yield ctrl
        finally:
            await ctrl.stop()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("placement")
    blank = root / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
    catalog.import_disk(root / "storage", "tiny", blank, "blank disk")
    return root / "storage"


SIZES = [(1, 256), (1, 512), (2, 512), (2, 1024)]


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[SlowNode], list[VM]]:
    """2 to 5 nodes of random sizes, each holding VMs that fit on it."""
    nodes: list[SlowNode] = []
    vms: list[VM] = []
    for i in range(draw(st.integers(2, 5))):
        vcpus = draw(st.integers(2, 8))
        memory = draw(st.sampled_from([1024, 2048, 4096]))
        node = SlowNode(f"n{i}", Capacity(vcpus=vcpus, memory_mb=memory))
        nodes.append(node)
        free = [vcpus, memory]
        for _ in range(draw(st.integers(0, 4))):
            cpu, mem = draw(st.sampled_from(SIZES))
            if cpu > free[0] or mem > free[1]:
                break
            free[0] -= cpu
            free[1] -= mem
            n = len(vms)
            vms.append(
                VM(
                    id=f"vm-{n}",
                    name=f"old-{n}",
                    owner="system",
                    cluster=draw(st.sampled_from([None, "web", "db"])),
                    spec=VMSpec(vcpus=cpu, memory_mb=mem),
                    state=VMState.RUNNING,
                    node=node.name,
                )
            )
    return nodes, vms


def one_request(
    nodes: list[SlowNode], vms: list[VM], evacuate: bool = True
) -> st.SearchStrategy[tuple[str, Any]]:
    """A create, a migration (of chosen VMs or of a virtual cluster) or an evacuation."""
    names = [vm.name for vm in vms]
    create = st.builds(
        lambda size, count: ("create", CreateVMs(vcpus=size[0], memory_mb=size[1], count=count)),
        st.sampled_from(SIZES),
        st.integers(1, 3),
    )
    options = [create]
    if evacuate:
        options.append(st.sampled_from([("evacuate", n.name) for n in nodes]))
    if names:
        options.append(
            st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).map(
                lambda chosen: ("migrate", VMAction(vms=chosen))
            )
        )
        options.append(
            st.sampled_from(["web", "db"]).map(
                lambda cluster: ("migrate", VMAction(cluster=cluster))
            )
        )
    return st.one_of(options)


async def send(ctrl: Controller, kind: str, body: Any) -> str | None:
    """Ask for it as the system (admin) would; the operation's id, or None if refused."""
    engine = ctrl.engine
    try:
        if kind == "create":
            op = await engine.create(SYSTEM, body, None)
        elif kind == "evacuate":
            op = await engine.evacuate(SYSTEM, body)
        else:
            op = await engine.act(SYSTEM, OpKind.MIGRATE, body, None)
    except RequestError:
        return None
    return op.id


EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure shows its whole example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@EXAMPLES
@given(data=st.data(), cluster=clusters())
def test_no_node_is_ever_over_capacity(
    storage: Path, data: st.DataObject, cluster: tuple[list[SlowNode], list[VM]]
) -> None:
    nodes, vms = cluster
    asked = data.draw(st.lists(one_request(nodes, vms), min_size=1, max_size=6))

    async def scenario() -> None:
        async with controller(storage, nodes) as ctrl:
            await ctrl.store.add_vms(vms)
            watch = CapacityWatch(ctrl)
            watch.install()
            watch.saw(vms)
            ops = await asyncio.gather(*(send(ctrl, kind, body) for kind, body in asked))
            for op_id in ops:
                if op_id is not None:
                    await ctrl.engine.wait(op_id, 30)
            assert not watch.breaches, watch.breaches
            reserved = ctrl.store.reservations.by_node
            for vm in await ctrl.store.vms_where():
                assert vm.target_node is None, vm  # every promise ended with its step
            assert sum(used["vms"] for used in reserved.values()) == len(
                [vm for vm in watch.records.values() if vm.state != VMState.STOPPED]
            )

    asyncio.run(scenario())


@EXAMPLES
@given(data=st.data(), cluster=clusters())
def test_a_dry_run_plans_what_the_request_then_does(
    storage: Path, data: st.DataObject, cluster: tuple[list[SlowNode], list[VM]]
) -> None:
    nodes, vms = cluster
    kind, body = data.draw(one_request(nodes, vms, evacuate=False))

    async def scenario() -> None:
        async with controller(storage, nodes) as ctrl:
            await ctrl.store.add_vms(vms)
            engine = ctrl.engine
            try:
                if kind == "create":
                    plan = await engine.plan_start(SYSTEM, body, None)
                else:
                    plan = await engine.plan_migrate(SYSTEM, body, None)
            except RequestError:
                assert await send(ctrl, kind, body) is None, "refused dry, done for real"
                return
            op_id = await send(ctrl, kind, body)
            if plan.error:
                assert op_id is None, f"planned {plan.error!r}, but the request was admitted"
                return
            assert op_id is not None, f"planned {plan}, but the request was refused"
            await engine.wait(op_id, 30)
            by_name = {vm.name: vm.node for vm in await ctrl.store.vms_where()}
            assert {p.name: p.node for p in plan.vms} == {p.name: by_name[p.name] for p in plan.vms}

    asyncio.run(scenario())


def test_a_vm_being_moved_is_not_placed_again_until_its_move_ends(storage: Path) -> None:
    """A second migration of a VM whose first one holds room on its target is refused (it
    would take that promise over, and the first one's room would be given away)."""
    nodes = [SlowNode(f"n{i}", Capacity(vcpus=4, memory_mb=4096)) for i in range(3)]
    vm = VM(
        id="vm-0",
        name="moved",
        owner="system",
        spec=VMSpec(vcpus=1, memory_mb=256),
        state=VMState.RUNNING,
        node="n0",
    )

    async def scenario() -> None:
        async with controller(storage, nodes) as ctrl:
            await ctrl.store.add_vms([vm])
            first = await send(ctrl, "migrate", VMAction(vms=["moved"]))
            assert first is not None
            with pytest.raises(RequestError, match="already being moved") as refused:
                await ctrl.engine.act(SYSTEM, OpKind.MIGRATE, VMAction(vms=["moved"]), None)
            assert refused.value.status == 409
            await ctrl.engine.wait(first, 30)
            assert not ctrl.store.reservations.is_promised("vm-0")
            again = await send(ctrl, "migrate", VMAction(vms=["moved"]))
            assert again is not None
            await ctrl.engine.wait(again, 30)
            used = ctrl.store.reservations.by_node
            assert sum(u["vms"] for u in used.values()) == 1, used

    asyncio.run(scenario())
