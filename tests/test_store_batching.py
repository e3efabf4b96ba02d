"""The store's batching: concurrent writes share a transaction, concurrent lookups a query,
and what is written behind (events, node usage) is there for whoever reads it next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from usher.ctrl.store import Store
from usher.model import VM, Event, Node, NodeState, VMSpec, VMState, new_id


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    yield store
    await store.close()


def vm(name: str) -> VM:
    return VM(id=new_id("vm"), name=name, owner="alice", spec=VMSpec(), node="n1")


async def test_concurrent_updates_are_all_committed(store: Store) -> None:
    vms = [vm(f"v-{i}") for i in range(50)]
    await store.add_vms(vms)
    for i, one in enumerate(vms):
        one.state = VMState.RUNNING if i % 2 else VMState.STOPPED
    await asyncio.gather(*(store.update_vm(one) for one in vms))
    got = await store.get_vms([one.id for one in vms])
    assert [got[one.id].state for one in vms] == [one.state for one in vms]


async def test_concurrent_lookups_by_id_and_name(store: Store) -> None:
    a, b = vm("a"), vm("b")
    await store.add_vms([a, b])
    found = await asyncio.gather(
        store.get_vm(a.id), store.get_vm("b"), store.get_vm("a"), store.get_vm("nope")
    )
    assert [f.id if f else None for f in found] == [a.id, b.id, a.id, None]
    assert found[0] is not found[2]  # each caller gets its own object to change


async def test_events_written_behind_are_listed(store: Store) -> None:
    await store.add_events([Event(name="register", vm_id="vm-1")])
    page = await store.list_events(vm="vm-1")
    assert [e.name for e in page.items] == ["register"]


async def test_a_saved_node_wins_over_queued_usage(store: Store) -> None:
    node = Node(name="n1", state=NodeState.UP, connected=True)
    store.save_node_later(node)
    down = node.model_copy(update={"state": NodeState.DOWN, "connected": False})
    await store.save_node(down)
    await store.flush()
    assert (await store.get_node("n1")).state == NodeState.DOWN  # type: ignore[union-attr]
    node.usage.vms = 3
    store.save_node_later(node)
    assert (await store.get_node("n1")).usage.vms == 3  # type: ignore[union-attr]
