"""The built-in scheduler's placement: a pure function of (snapshot, request)."""

from __future__ import annotations

from usher.model import Capacity, Node, NodeState, VMSpec
from usher.plugins.scheduler import place


def node(name: str, vcpus: int = 8, mem: int = 8192, **kw: object) -> Node:
    return Node(
        name=name,
        capacity=Capacity(vcpus=vcpus, memory_mb=mem),
        connected=True,
        state=NodeState.UP,
        **kw,
    )


SMALL = VMSpec(vcpus=1, memory_mb=1024)


def test_spread_balances_and_pack_fills() -> None:
    nodes = [node("a"), node("b"), node("c")]
    spread = place(nodes, [SMALL] * 6, {}, weigher="spread")
    assert sorted(spread.nodes) == ["a", "a", "b", "b", "c", "c"]
    pack = place(nodes, [SMALL] * 6, {}, weigher="pack")
    assert pack.nodes == ["a"] * 6


def test_capacity_is_never_exceeded_and_gang_is_all_or_nothing() -> None:
    nodes = [node("a", mem=2048), node("b", mem=2048)]
    fits = place(nodes, [SMALL] * 4, {})
    assert sorted(fits.nodes) == ["a", "a", "b", "b"] and fits.error is None
    too_many = place(nodes, [SMALL] * 5, {})
    assert too_many.nodes == [] and "4 of 5 VMs fit" in (too_many.error or "")
    assert "capacity" in too_many.rejected["a"]


def test_reserved_capacity_counts() -> None:
    nodes = [node("a", mem=2048), node("b", mem=2048)]
    placement = place(nodes, [SMALL], {"a": {"vcpus": 1, "memory_mb": 2048}})
    assert placement.nodes == ["b"]


def test_down_and_drained_nodes_are_rejected_with_reasons() -> None:
    down = node("down")
    down.connected = False
    drained = node(
        "drained",
        drained=True,
    )
    drained.state = NodeState.DRAINING
    placement = place([down, drained, node("ok")], [SMALL], {})
    assert placement.nodes == ["ok"]
    assert placement.rejected["down"] == "state: node is down"
    assert placement.rejected["drained"] == "state: node is draining"


def test_asked_for_node_only() -> None:
    nodes = [node("a"), node("b")]
    assert place(nodes, [SMALL], {}, only="b").nodes == ["b"]
    assert "unknown node" in (place(nodes, [SMALL], {}, only="zz").error or "")
    full = place(nodes, [VMSpec(vcpus=9, memory_mb=16)], {}, only="a")
    assert full.error and "capacity" in full.rejected["a"]
