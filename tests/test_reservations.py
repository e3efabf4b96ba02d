"""Reservations kept in memory: always what summing the VM records gives, with every node
whose sum changed marked in the change log; rebuilt from the database when the store opens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from usher.ctrl.reservations import ChangeLog, Reservations
from usher.ctrl.store import Store
from usher.model import VM, VMSpec, VMState

SPEC = {"vcpus": 2, "memory_mb": 512}

NODES = ["a", "b", "c", None]
STATES = [VMState.RUNNING.value, VMState.STOPPED.value, VMState.STARTING.value]


def summed(vms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What the records hold per node, summed from scratch."""
    out: dict[str, dict[str, Any]] = {}
    for vm in vms.values():
        if vm["node"] is None or vm["state"] == VMState.STOPPED.value:
            continue
        used = out.setdefault(vm["node"], {"vms": 0, "vcpus": 0, "memory_mb": 0, "clusters": {}})
        used["vms"] += 1
        used["vcpus"] += vm["spec"]["vcpus"]
        used["memory_mb"] += vm["spec"]["memory_mb"]
        if vm["cluster"] is not None:
            used["clusters"][vm["cluster"]] = used["clusters"].get(vm["cluster"], 0) + 1
    return out


row = st.fixed_dictionaries(
    {
        "id": st.sampled_from([f"vm-{i}" for i in range(6)]),
        "node": st.sampled_from(NODES),
        "state": st.sampled_from(STATES),
        "cluster": st.sampled_from([None, "web", "db"]),
        "spec": st.fixed_dictionaries(
            {"vcpus": st.integers(1, 4), "memory_mb": st.sampled_from([256, 1024])}
        ),
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(row, st.sampled_from([f"vm-{i}" for i in range(6)])), max_size=40))
def test_reservations_match_the_records_and_mark_what_changed(steps: list[Any]) -> None:
    log = ChangeLog()
    reservations = Reservations(log)
    records: dict[str, dict[str, Any]] = {}
    for step in steps:
        before, generation = summed(records), log.generation
        if isinstance(step, str):  # a VM record deleted
            records.pop(step, None)
            reservations.forget(step)
        else:
            records[step["id"]] = step
            reservations.apply([step])
        after = summed(records)
        assert reservations.by_node == after
        changed = {n for n in set(before) | set(after) if before.get(n) != after.get(n)}
        assert changed <= set(log.since(generation) or ())
    assert reservations.copy() == summed(records)


async def test_the_store_keeps_them_through_writes_and_rebuilds_them_when_opened(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/state.db"
    store = Store(url)
    await store.open()
    spec = VMSpec(vcpus=2, memory_mb=512, image="tiny")
    vms = [
        VM(id=f"vm-{i}", name=f"v{i}", owner="u", cluster="web", spec=spec, node=node)
        for i, node in enumerate(["a", "a", "b"])
    ]
    await store.add_vms(vms)
    assert store.reservations.by_node["a"] == {
        "vms": 2,
        "vcpus": 4,
        "memory_mb": 1024,
        "clusters": {"web": 2},
    }
    generation = store.changes.generation
    vms[0].state, vms[1].node = VMState.STOPPED, "b"
    await store.update_vms(vms[:2])
    assert "a" not in store.reservations.by_node
    assert store.reservations.by_node["b"]["vms"] == 2
    assert {"a", "b"} <= set(store.changes.since(generation) or ())
    await store.delete_vm(vms[2])
    assert store.reservations.by_node["b"]["vcpus"] == 2
    kept = store.reservations.copy()
    await store.close()

    again = Store(url)
    await again.open()
    assert again.reservations.by_node == kept
    await again.close()


def test_a_migrating_vm_holds_room_on_its_target_once() -> None:
    """A migration's target holds the VM from its placement (promise) through its record's
    ``target_node`` until it arrives: never twice, and a stale ``target_node`` of a VM that
    is neither migrating nor lost holds nothing."""
    changes = ChangeLog()
    res = Reservations(changes)
    row = {"id": "v", "node": "a", "state": "running", "cluster": "c", "spec": SPEC}
    res.apply([row])
    res.promise("v", "b", "c", 2, 512)
    assert res.by_node["b"]["vcpus"] == 2 and res.by_node["a"]["vcpus"] == 2
    res.apply([row | {"state": "migrating", "target_node": "b"}])
    assert res.by_node["b"]["vms"] == 1  # the record's target and the promise are one hold
    res.apply([row | {"node": "b", "target_node": None}])
    assert "a" not in res.by_node and res.by_node["b"]["vms"] == 1  # arrived: held once
    res.release("v")
    assert res.by_node["b"] == {"vms": 1, "vcpus": 2, "memory_mb": 512, "clusters": {"c": 1}}
    res.release("v")  # twice: nothing more
    res.apply([row | {"node": "b", "target_node": "c"}])  # a stale target: running, not moving
    assert "c" not in res.by_node
    res.apply([row | {"node": "b", "state": "lost", "target_node": "c"}])  # may be there
    assert res.by_node["c"]["vms"] == 1
    res.forget("v")
    assert res.by_node == {}
