"""Properties of placement, checked on generated clusters and requests.

Every answer is checked against :func:`valid`, an independent statement of every filter; for
small clusters a brute-force search over all assignments says whether the request is feasible,
and then it must not be refused.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from usher.model import Capacity, Node, NodeState, VMSpec
from usher.plugins.scheduler import WEIGHERS, Constraints, SchedulerConfig, place

Reserved = dict[str, dict[str, Any]]
CLUSTER = "web"

# Ratios exact in binary, so capacity * ratio needs no rounding care in the oracle.
ratios = st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 4.0])
configs = st.builds(
    SchedulerConfig,
    weights=st.dictionaries(
        st.sampled_from(WEIGHERS), st.sampled_from([0.5, 1.0, 2.0]), min_size=1
    ),
    vcpu_ratio=ratios,
    memory_ratio=ratios,
    max_vms_per_node=st.none() | st.integers(1, 4),
)
wants = st.builds(
    Constraints,
    labels=st.sampled_from([{}, {"rack": "r1"}, {"gpu": "yes"}]),
    cluster=st.sampled_from([None, CLUSTER]),
    affinity=st.booleans(),
) | st.builds(
    Constraints,
    cluster=st.sampled_from([None, CLUSTER]),
    anti_affinity=st.just(True),
)
sizes = st.builds(VMSpec, vcpus=st.integers(1, 4), memory_mb=st.sampled_from([256, 512, 1024]))


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int) -> tuple[list[Node], Reserved]:
    """Nodes in any state, with labels, and what is already reserved on them."""
    count = draw(st.integers(1, max_nodes))
    nodes: list[Node] = []
    reserved: Reserved = {}
    for i in range(count):
        name = f"n{i}"
        vcpus, memory = draw(st.integers(0, 8)), draw(st.sampled_from([0, 512, 1024, 2048, 4096]))
        nodes.append(
            Node(
                name=name,
                capacity=Capacity(vcpus=vcpus, memory_mb=memory),
                connected=draw(st.booleans() | st.just(True)),
                state=draw(st.sampled_from(list(NodeState)) | st.just(NodeState.UP)),
                drained=draw(st.booleans() | st.just(False)),
                labels=draw(st.sampled_from([{}, {"rack": "r1"}, {"rack": "r1", "gpu": "yes"}])),
            )
        )
        if draw(st.booleans()):
            reserved[name] = {
                "vcpus": draw(st.integers(0, vcpus)),
                "memory_mb": draw(st.integers(0, memory)),
                "vms": draw(st.integers(0, 3)),
                "clusters": draw(st.sampled_from([{}, {CLUSTER: 1}, {"other": 2}])),
            }
    return nodes, reserved


def valid(
    nodes: list[Node],
    reserved: Reserved,
    config: SchedulerConfig,
    want: Constraints,
    specs: list[VMSpec],
    chosen: list[str],
) -> bool:
    """Does ``chosen`` (a node per spec) satisfy every filter? Written apart from the scheduler."""
    by_name = {n.name: n for n in nodes}
    if len(chosen) != len(specs) or not set(chosen) <= set(by_name):
        return False

    def held(name: str) -> int:
        return reserved.get(name, {}).get("clusters", {}).get(want.cluster, 0)

    for name in set(chosen):
        n, r = by_name[name], reserved.get(name, {})
        mine = [s for s, c in zip(specs, chosen, strict=True) if c == name]
        if not n.connected or n.state != NodeState.UP or n.drained:
            return False
        if want.only not in (None, name) or any(
            n.labels.get(k) != v for k, v in want.labels.items()
        ):
            return False
        if r.get("vcpus", 0) + sum(s.vcpus for s in mine) > n.capacity.vcpus * config.vcpu_ratio:
            return False
        memory = r.get("memory_mb", 0) + sum(s.memory_mb for s in mine)
        if memory > n.capacity.memory_mb * config.memory_ratio:
            return False
        if config.max_vms_per_node and r.get("vms", 0) + len(mine) > config.max_vms_per_node:
            return False
        if want.anti_affinity and want.cluster and held(name):
            return False
    if want.anti_affinity and len(set(chosen)) != len(chosen):
        return False
    if want.affinity and chosen:
        holders = {n.name for n in nodes if want.cluster and held(n.name)}
        return len(set(chosen)) == 1 and (not holders or chosen[0] in holders)
    return True


def feasible(
    nodes: list[Node],
    reserved: Reserved,
    config: SchedulerConfig,
    want: Constraints,
    specs: list[VMSpec],
) -> bool:
    names = [n.name for n in nodes]
    return any(
        valid(nodes, reserved, config, want, specs, list(chosen))
        for chosen in itertools.product(names, repeat=len(specs))
    )


def check_answer(
    nodes: list[Node],
    reserved: Reserved,
    config: SchedulerConfig,
    want: Constraints,
    specs: list[VMSpec],
) -> bool:
    """Place, check the answer's shape and validity; return whether it placed the VMs."""
    before = copy.deepcopy(reserved)
    placement = place(nodes, specs, reserved, config, want)
    assert reserved == before, "place() changed its input"
    names = {n.name for n in nodes}
    assert set(placement.rejected) <= names
    assert not set(placement.rejected) & set(placement.nodes)
    assert all(": " in why for why in placement.rejected.values())
    if placement.error:
        assert placement.nodes == []
        assert set(placement.rejected) == names
        return False
    assert len(placement.nodes) == len(specs)
    assert set(placement.rejected) | set(placement.nodes) == names
    assert valid(nodes, reserved, config, want, specs, placement.nodes)
    return True


@settings(max_examples=300, deadline=None)
@given(clusters(max_nodes=8), configs, wants, st.lists(sizes, min_size=1, max_size=12))
def test_placements_respect_every_filter(
    cluster: tuple[list[Node], Reserved],
    config: SchedulerConfig,
    want: Constraints,
    specs: list[VMSpec],
) -> None:
    """Capacity * ratio, the VM limit, state, labels, (anti-)affinity always hold; the count
    placed equals the count asked for, or nothing is placed and the error says why."""
    check_answer(*cluster, config, want, specs)


@settings(max_examples=300, deadline=None)
@given(clusters(max_nodes=4), configs, wants, sizes, st.integers(1, 4))
def test_a_feasible_request_is_never_refused(
    cluster: tuple[list[Node], Reserved],
    config: SchedulerConfig,
    want: Constraints,
    spec: VMSpec,
    count: int,
) -> None:
    """``start -n N`` (N VMs of one size) is placed exactly when some placement exists."""
    nodes, reserved = cluster
    specs = [spec] * count
    placed = check_answer(nodes, reserved, config, want, specs)
    assert placed == feasible(nodes, reserved, config, want, specs)


@st.composite
def roomy(draw: st.DrawFn) -> tuple[list[Node], Reserved, VMSpec, list[int]]:
    """Up nodes built to hold exactly ``room[i]`` more VMs of ``spec`` each."""
    spec = draw(sizes)
    room = draw(st.lists(st.integers(0, 5), min_size=1, max_size=40))
    nodes, reserved = [], {}
    for i, k in enumerate(room):
        used_v, used_m = draw(st.integers(0, 8)), draw(st.integers(0, 4096))
        reserved[f"n{i}"] = {"vcpus": used_v, "memory_mb": used_m, "vms": draw(st.integers(0, 9))}
        capacity = Capacity(vcpus=used_v + k * spec.vcpus, memory_mb=used_m + k * spec.memory_mb)
        nodes.append(Node(name=f"n{i}", capacity=capacity, connected=True, state=NodeState.UP))
    return nodes, reserved, spec, room


@settings(max_examples=200, deadline=None)
@given(roomy(), st.sampled_from(WEIGHERS), st.booleans(), st.data())
def test_what_fits_by_construction_is_placed(
    built: tuple[list[Node], Reserved, VMSpec, list[int]],
    weigher: str,
    apart: bool,
    data: st.DataObject,
) -> None:
    nodes, reserved, spec, room = built
    fit = sum(1 for k in room if k) if apart else sum(room)
    count = data.draw(st.integers(1, max(fit, 1)))
    want = Constraints(anti_affinity=apart)
    config = SchedulerConfig(weights={weigher: 1.0})
    placement = place(nodes, [spec] * count, reserved, config, want)
    assert placement.error is None if fit else placement.error is not None
    if fit:
        per_node = Counter(placement.nodes)
        assert all(per_node[f"n{i}"] <= k for i, k in enumerate(room))
    over = place(nodes, [spec] * (fit + 1), reserved, config, want)
    assert over.error is not None and over.nodes == []
