"""The API's VM listing (Store.list_vms_json, built from cached JSON) says exactly what the
model listing (Store.list_vms) says, page by page and filter by filter, and never serves a
record older than the database's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from usher.ctrl.store import Store
from usher.ctrl.tables import VMRow
from usher.model import VM, Page, Scope, VMSpec, VMState, now


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = Store(f"sqlite:///{tmp_path}/state.db")
    await store.open()
    vms = [
        VM(
            id=f"vm-{i:04d}",
            name=f"v{i}",
            owner=("alice", "bob")[i % 2],
            cluster=("web", "db", None)[i % 3],
            spec=VMSpec(vcpus=1 + i % 4, memory_mb=256, image="tiny"),
            node=f"node-{i % 5}",
            state=(VMState.RUNNING, VMState.STOPPED)[i % 2],
            addresses=[f"10.0.0.{i % 250}"] if i % 4 else [],
        )
        for i in range(230)
    ]
    await store.add_vms(vms)
    yield store
    await store.close()


async def pages(store: Store, **query: Any) -> tuple[list[Page[VM]], list[Page[VM]]]:
    """Every page of a listing, both ways."""
    got: list[Page[VM]] = []
    want: list[Page[VM]] = []
    cursor: str | None = None
    while True:
        page = await store.list_vms(cursor=cursor, **query)
        want.append(page)
        got.append(Page[VM].model_validate_json(await store.list_vms_json(cursor=cursor, **query)))
        cursor = page.next
        if cursor is None:
            return got, want


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 100},
        {"limit": 7, "owner": "alice"},
        {"limit": 50, "cluster": "web", "state": "running"},
        {"limit": 1000, "node": "node-3"},
        {"limit": 10, "scope": Scope(owners=["bob"], clusters=["db"])},
        {"limit": 10, "owner": "nobody"},
    ],
)
async def test_the_json_listing_is_the_model_listing(store: Store, query: dict[str, Any]) -> None:
    got, want = await pages(store, **query)
    assert got == want
    assert sum(len(p.items) for p in got) == got[0].total


async def test_past_the_end_is_an_empty_page_with_the_total(store: Store) -> None:
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=10, cursor="999999"))
    assert page.items == [] and page.total == 230 and page.next is None


async def test_a_record_changed_behind_the_cache_is_read_again(store: Store) -> None:
    await store.list_vms_json(limit=1000)  # every VM's JSON cached
    async with store.sessions() as s, s.begin():
        await s.execute(
            update(VMRow)
            .where(VMRow.id == "vm-0004")
            .values(state="error", state_reason="changed elsewhere", updated_at=now())
        )
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=1000))
    vm = next(v for v in page.items if v.id == "vm-0004")
    assert (vm.state, vm.state_reason) == (VMState.ERROR, "changed elsewhere")


async def test_writes_through_the_store_show_at_once(store: Store) -> None:
    await store.list_vms_json(limit=1000)
    vm = await store.get_vm("vm-0010")
    assert vm is not None
    vm.state, vm.node, vm.updated_at = VMState.MIGRATING, "node-9", now()
    await store.update_vms([vm])
    await store.delete_vm(VM.model_validate({**vm.model_dump(), "id": "vm-0011"}))
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=1000))
    shown = {v.id: v for v in page.items}
    assert shown["vm-0010"] == vm
    assert "vm-0011" not in shown and page.total == 229


async def test_a_vm_deleted_while_its_page_is_read_is_left_out(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_page = store._vm_page

    async def page_then_delete(*args: Any) -> Any:
        found = await read_page(*args)
        victim = await store.get_vm("vm-0003")
        assert victim is not None
        await store.delete_vm(victim)  # after the page was read, before its JSON is
        return found

    store._listing.forget("vm-0003")
    monkeypatch.setattr(store, "_vm_page", page_then_delete)
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=10))
    assert [vm.id for vm in page.items] == [f"vm-{i:04d}" for i in range(10) if i != 3]
