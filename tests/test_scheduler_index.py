"""The placement index: kept across requests, it must answer what the full computation does.

Random sequences of changes (reservations added and removed, nodes replaced, going down, into
maintenance, joining) are applied the way the controller applies them — a new node record and
a mark in the change log — and after each, a one-VM request answered through the index is
compared with :func:`place` on the same snapshot: same node, or the same error. A stale index
(a change applied late or not at all) picks another node, or refuses, and fails.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from usher.ctrl.reservations import ChangeLog
from usher.model import Capacity, Node, NodeState, OpKind, OpRequest, Principal, VMSpec
from usher.plugins.scheduler import (
    WEIGHERS,
    Constraints,
    Scheduler,
    SchedulerConfig,
    place,
)

Reserved = dict[str, dict[str, Any]]
USER = Principal(name="u")

weights = st.sampled_from(WEIGHERS).flatmap(
    lambda name: st.sampled_from([0.5, 1.0, 3.0]).map(lambda w: {name: w})
) | st.dictionaries(st.sampled_from(WEIGHERS), st.sampled_from([0.0, 1.0]), min_size=1).filter(
    lambda table: any(table.values())
)
configs = st.builds(
    SchedulerConfig,
    weights=weights,
    vcpu_ratio=st.sampled_from([0.5, 1.0, 1.5, 4.0]),
    memory_ratio=st.sampled_from([0.75, 1.0, 2.0]),
    max_vms_per_node=st.none() | st.integers(1, 5),
    memory_per_vcpu=st.sampled_from([0.25, 1.0, 1.5, 4.0]),
)
specs = st.builds(VMSpec, vcpus=st.integers(1, 3), memory_mb=st.sampled_from([256, 512, 1024]))
capacities = st.builds(
    Capacity, vcpus=st.sampled_from([0, 2, 4, 8]), memory_mb=st.sampled_from([0, 1024, 4096])
)
records = st.fixed_dictionaries(
    {
        "capacity": capacities,
        "labels": st.sampled_from([{}, {"rack": "r1"}, {"rack": "r2"}]),
        "connected": st.booleans() | st.just(True),
        "drained": st.just(False) | st.booleans(),
        "maintenance": st.just(False) | st.booleans(),
    }
)
requests = st.fixed_dictionaries(
    {
        "kwargs": st.sampled_from(
            [{}, {}, {"labels": {"rack": "r1"}}, {"anti_affinity": True}, {"affinity": True}]
        ),
        "cluster": st.sampled_from([None, "web"]),
        "target_node": st.none() | st.none() | st.sampled_from(["n0", "n3", "nope"]),
    }
)
steps = st.one_of(
    st.tuples(st.just("place"), specs, requests, st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("record"), st.integers(0, 20), records),
    st.tuples(st.just("join"), records),
)


def make_node(name: str, record: dict[str, Any]) -> Node:
    node = Node(name=name, **record)
    state = NodeState.DOWN if not node.connected else NodeState.UP
    if node.connected and node.maintenance:
        state = NodeState.MAINTENANCE
    elif node.connected and node.drained:
        state = NodeState.DRAINING
    return node.model_copy(update={"state": state})


class Controller:
    """What the engine keeps: the snapshot, the records' reservations, the change log."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.nodes = [make_node(f"n{i}", r) for i, r in enumerate(records)]
        self.reserved: Reserved = {}
        self.vms: list[tuple[str, VMSpec, str | None]] = []
        self.log = ChangeLog(keep=8)  # short, so that falling behind it is exercised too

    def reserve(self, node: str, spec: VMSpec, cluster: str | None) -> None:
        used = self.reserved.setdefault(
            node, {"vcpus": 0, "memory_mb": 0, "vms": 0, "clusters": {}}
        )
        used["vcpus"] += spec.vcpus
        used["memory_mb"] += spec.memory_mb
        used["vms"] += 1
        if cluster:
            used["clusters"][cluster] = used["clusters"].get(cluster, 0) + 1
        self.vms.append((node, spec, cluster))
        self.log.mark(node)

    def release(self, which: int) -> None:
        if not self.vms:
            return
        node, spec, cluster = self.vms.pop(which % len(self.vms))
        used = self.reserved[node]
        used["vcpus"] -= spec.vcpus
        used["memory_mb"] -= spec.memory_mb
        used["vms"] -= 1
        if cluster:
            used["clusters"][cluster] -= 1
            if not used["clusters"][cluster]:
                del used["clusters"][cluster]
        self.log.mark(node)

    def record(self, which: int, record: dict[str, Any]) -> None:
        i = which % len(self.nodes)
        self.nodes[i] = make_node(self.nodes[i].name, record)
        self.log.mark(self.nodes[i].name)

    def join(self, record: dict[str, Any]) -> None:
        self.nodes.append(make_node(f"n{len(self.nodes)}", record))
        self.log.mark(self.nodes[-1].name)


def compare(plugin: Scheduler, ctrl: Controller, spec: VMSpec, asked: dict[str, Any]) -> str | None:
    """Ask through the index (a fresh ``reserved``, as the store builds one per request) and
    in full; they must agree. Returns the node chosen."""
    req = OpRequest(kind=OpKind.START, principal=USER, count=1, **asked)
    fast = plugin.schedule(
        list(ctrl.nodes), [spec], req, copy.deepcopy(ctrl.reserved), changes=ctrl.log
    )
    want = Constraints.of(req, [spec])
    full = place(ctrl.nodes, [spec], ctrl.reserved, plugin.config, want, explain=False)
    assert fast.error == full.error
    assert fast.nodes == full.nodes
    return fast.nodes[0] if fast.nodes else None


@settings(max_examples=300, deadline=None)
@given(configs, st.lists(records, min_size=1, max_size=8), st.lists(steps, max_size=40))
def test_the_index_answers_as_the_full_computation(
    config: SchedulerConfig, nodes: list[dict[str, Any]], sequence: list[tuple[Any, ...]]
) -> None:
    plugin = Scheduler()
    plugin.config, plugin.index = config, type(plugin.index)(config)
    ctrl = Controller(nodes)
    for step in sequence:
        match step:
            case ("place", spec, asked, commit):
                chosen = compare(plugin, ctrl, spec, asked)
                if chosen is not None and commit:
                    ctrl.reserve(chosen, spec, asked["cluster"])
            case ("release", which):
                ctrl.release(which)
            case ("record", which, record):
                ctrl.record(which, record)
            case ("join", record):
                ctrl.join(record)
    compare(plugin, ctrl, VMSpec(vcpus=1, memory_mb=256), {"kwargs": {}, "cluster": None})


def test_one_vm_is_placed_from_the_index_and_the_next_sees_it() -> None:
    plugin = Scheduler()
    plugin.usher_configure({"weigher": "spread"})
    record = {"capacity": Capacity(vcpus=4, memory_mb=4096), "connected": True}
    ctrl = Controller([record] * 3)
    spec = VMSpec(vcpus=1, memory_mb=512)
    chosen = [compare(plugin, ctrl, spec, {}) for _ in range(3)]
    assert chosen == ["n0", "n0", "n0"]  # nothing reserved in between: the same node
    for _ in range(3):
        node = compare(plugin, ctrl, spec, {})
        assert node is not None
        ctrl.reserve(node, spec, None)
    assert sorted(ctrl.reserved) == ["n0", "n1", "n2"]
    assert plugin.index.place_one(ctrl.nodes, spec, ctrl.reserved, Constraints(), ctrl.log)


def test_a_snapshot_without_a_node_is_answered_in_full_and_forgotten() -> None:
    """A caller that drops a node (a migration's own node) but passes ``changes`` anyway
    gets the full computation, and the next complete snapshot a fresh index."""
    plugin = Scheduler()
    record = {"capacity": Capacity(vcpus=4, memory_mb=4096), "connected": True}
    ctrl = Controller([record] * 3)
    spec = VMSpec(vcpus=1, memory_mb=512)
    assert compare(plugin, ctrl, spec, {}) == "n0"
    req = OpRequest(kind=OpKind.START, principal=USER, count=1)
    ctrl.log.mark("n0")
    partial = plugin.schedule(ctrl.nodes[1:], [spec], req, {}, changes=ctrl.log)
    assert partial.nodes == ["n1"]
    assert compare(plugin, ctrl, spec, {}) == "n0"


def test_change_log_says_what_changed_while_it_remembers() -> None:
    log = ChangeLog(keep=2)
    assert log.generation == 0 and log.since(0) == set()
    log.mark("a", "b")
    assert log.since(0) == {"a", "b"} and log.since(1) == {"b"} and log.since(3) is None
    log.mark("c", "d", "e")  # more than twice keep: the oldest are dropped
    assert log.generation == 5
    assert log.since(0) is None and log.since(3) == {"d", "e"}


def test_equal_keys_with_other_usage_are_all_scored() -> None:
    """Two nodes whose scores after the VM tie with other usage (for the share weighers, one
    busier in vcpus, one in memory; for fit, one with a vcpu more that its memory does not
    need): the full computation takes the first by name, and so must the index."""
    for weigher in WEIGHERS:
        plugin = Scheduler()
        plugin.usher_configure({"weigher": weigher})
        record = {"capacity": Capacity(vcpus=4, memory_mb=4096), "connected": True}
        ctrl = Controller([record] * 2)
        other = {"vms": 1} if weigher == "fit" else {"memory_mb": 1024, "vms": 1}
        ctrl.reserved = {"n0": {"vcpus": 1, "vms": 1}, "n1": other}
        ctrl.log.mark("n0", "n1")
        assert compare(plugin, ctrl, VMSpec(vcpus=1, memory_mb=1024), {}) == "n0"
