"""The store's batching: concurrent writes share a transaction, concurrent lookups a query,
and what is written behind (events, node usage) is there for whoever reads it next."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from usher.ctrl.store import Store
from usher.model import (
    VM,
    Event,
    Node,
    NodeState,
    Operation,
    OpKind,
    OpStatus,
    VMSpec,
    VMState,
    new_id,
    now,
)


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


def op(kind: OpKind = OpKind.START) -> Operation:
    return Operation(id=new_id("op"), kind=kind, principal="alice")


async def test_operations_share_transactions_and_keep_their_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many operations created and changed at once are committed in a few transactions
    (not one each), every change is there, and they are listed in the order they came."""
    transactions = 0
    write = store.db.write

    def counted() -> Any:
        nonlocal transactions
        transactions += 1
        return write()

    monkeypatch.setattr(store.db, "write", counted)
    ops = [op() for _ in range(60)]

    async def life(one: Operation) -> None:
        await store.add_op(one)
        one.status, one.started_at = OpStatus.RUNNING, now()
        await store.update_op(one)
        one.status, one.finished_at = OpStatus.SUCCEEDED, now()
        await store.update_op(one)

    await asyncio.gather(*(life(one) for one in ops))
    assert transactions <= 10, f"{transactions} transactions for 180 writes"
    listed = (await store.list_ops(limit=100)).items
    assert [o.id for o in listed] == [o.id for o in reversed(ops)]  # newest first
    assert all(o.status is OpStatus.SUCCEEDED and o.finished_at for o in listed)


async def test_a_change_queued_with_its_insert_is_written_with_it(store: Store) -> None:
    one = op()
    added = asyncio.ensure_future(store.add_op(one))
    changed = one.model_copy(update={"status": OpStatus.FAILED, "error": "gone"})
    await asyncio.gather(added, store.update_op(changed))
    got = await store.get_op(one.id)
    assert got is not None and got.status is OpStatus.FAILED and got.error == "gone"


async def test_a_bad_operation_fails_only_its_own_caller(store: Store) -> None:
    """An operation whose row cannot be written (here: an id taken) fails its caller; the
    writes batched with it (another operation, a VM update, an event) are committed."""
    taken, other, mine = op(), op(), vm("mine")
    await store.add_op(taken)
    await store.add_vms([mine])
    mine.state = VMState.RUNNING
    results = await asyncio.gather(
        store.add_op(taken.model_copy(update={"kind": OpKind.STOP})),
        store.add_op(other),
        store.update_vm(mine),
        store.add_events([Event(name="register", vm_id=mine.id)]),  # queued in the same batch
        return_exceptions=True,
    )
    assert isinstance(results[0], Exception) and results[1:] == [None, None, None]
    assert await store.get_op(other.id) is not None
    assert (await store.get_op(taken.id)).kind is OpKind.START  # type: ignore[union-attr]
    assert (await store.get_vm(mine.id)).state is VMState.RUNNING  # type: ignore[union-attr]
    events = (await store.list_events(vm=mine.id)).items
    assert [e.name for e in events] == ["register"]  # not dropped with the bad operation


async def test_a_locked_database_fails_each_caller_once_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds SQLite's write lock past the timeout: every operation of the
    batch fails with "locked" after one timeout, not after one more each (a write split
    apart only when a row may be to blame)."""
    from sqlalchemy.exc import OperationalError

    import usher.ctrl.store.database as database

    real = database.inline_creator
    monkeypatch.setattr(database, "inline_creator", lambda path, _timeout: real(path, 0.5))
    path = tmp_path / "usher.db"
    store = Store(f"sqlite:///{path}")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        began = time.monotonic()
        results = await asyncio.gather(
            *(store.add_op(op()) for _ in range(4)), return_exceptions=True
        )
        took = time.monotonic() - began
        other.execute("ROLLBACK")
        assert all(isinstance(r, OperationalError) and "locked" in str(r) for r in results)
        assert took < 1.5, f"four operations held {took:.1f} s by a 0.5 s timeout"
        assert (await store.list_ops(limit=10)).items == []
    finally:
        other.close()
        await store.close()
