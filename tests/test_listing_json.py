"""The API's VM listing (Store.list_vms_json: every VM's place and JSON kept in memory from
what the store commits) says exactly what the model listing (Store.list_vms, a query) says,
page by page and filter by filter, before and after writes and a restart; it never shows a
write that was not committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usher.ctrl.listing import Listing
from usher.ctrl.store import Store
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


async def test_the_order_holds_through_deletes_inserts_and_a_restart(
    store: Store, tmp_path: Path
) -> None:
    for i in range(0, 230, 3):
        vm = await store.get_vm(f"vm-{i:04d}")
        assert vm is not None
        await store.delete_vm(vm)
    await store.add_vms(
        VM(id=f"vm-new-{i}", name=f"new{i}", owner="carol", spec=VMSpec()) for i in range(40)
    )
    got, want = await pages(store, limit=17)
    assert got == want and got[0].total == 230 - 77 + 40
    again = Store(f"sqlite:///{tmp_path}/state.db")  # the same database, opened afresh
    await again.open()
    try:
        assert await pages(again, limit=17) == (got, want)
    finally:
        await again.close()


async def test_a_write_that_did_not_commit_is_not_listed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.list_vms_json(limit=1000)
    vm = await store.get_vm("vm-0004")
    assert vm is not None

    async def broken(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(store.batcher, "write_batch", broken)
    vm.state, vm.updated_at = VMState.ERROR, now()
    with pytest.raises(OSError, match="disk full"):
        await store.update_vms([vm])
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=1000))
    assert next(v for v in page.items if v.id == "vm-0004").state == VMState.RUNNING


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
    read_page = store.vm_pages.read_page

    async def page_then_delete(*args: Any) -> Any:
        found = await read_page(*args)
        victim = await store.get_vm("vm-0003")
        assert victim is not None
        await store.delete_vm(victim)  # after the page was read, before its JSON is
        return found

    monkeypatch.setattr(store.vm_pages, "read_page", page_then_delete)
    page = Page[VM].model_validate_json(await store.list_vms_json(limit=5, owner="bob"))
    assert [vm.id for vm in page.items] == ["vm-0001", "vm-0005", "vm-0007", "vm-0009"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=400), st.integers(1, 50))
def test_the_listing_order_pages_like_a_sorted_table(steps: list[Any], limit: int) -> None:
    """Placing and removing in any order (many removals compact it): pages are the live
    ``seq`` in order, ``limit`` at a time, each after the last one's ``seq``."""
    Listing.COMPACT_AFTER = 8  # type: ignore[misc]  # compact often under test
    listing, live = Listing(), {}
    try:
        for add, seq in steps:
            if add and seq not in live:
                listing.place([(seq, f"vm-{seq}")])
                live[seq] = f"vm-{seq}"
            elif not add and seq in live:
                listing.remove(live.pop(seq))
        want = sorted(live.items())
        got: list[tuple[int, str]] = []
        after, more = None, True
        while more:
            page, more = listing.page(after, limit)
            assert len(page) == limit or not more
            got += page
            after = page[-1][0] if page else None
        assert got == want and len(listing) == len(want)
    finally:
        Listing.COMPACT_AFTER = 1024  # type: ignore[misc]


def test_a_row_read_does_not_overwrite_a_commit_remembered_meanwhile() -> None:
    listing = Listing()
    vm = VM(id="vm-1", name="one", owner="o", spec=VMSpec(), state=VMState.STOPPED)
    read = vm.model_dump(mode="json")  # read from the database before the commit below
    listing.remember([("vm-1", '{"id":"vm-1","state":"running"}')])  # committed meanwhile
    assert listing.remember_row(read) == '{"id":"vm-1","state":"running"}'
    assert listing.known(["vm-1"]) == {"vm-1": '{"id":"vm-1","state":"running"}'}
