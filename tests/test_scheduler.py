"""The built-in scheduler: each filter and weigher, its config, and the plugin hook."""

from __future__ import annotations

import time
from typing import Any

import pytest

from usher.model import Capacity, Node, NodeState, OpKind, OpRequest, Principal, VMSpec
from usher.plugins.scheduler import Constraints, Scheduler, SchedulerConfig, place


def node(name: str, vcpus: int = 8, mem: int = 8192, **kw: Any) -> Node:
    fields: dict[str, Any] = {"connected": True, "state": NodeState.UP, **kw}
    return Node(name=name, capacity=Capacity(vcpus=vcpus, memory_mb=mem), **fields)


SMALL = VMSpec(vcpus=1, memory_mb=1024)


def config(**table: Any) -> SchedulerConfig:
    return SchedulerConfig.parse(table)


def request(**kw: Any) -> OpRequest:
    return OpRequest(kind=OpKind.START, principal=Principal(name="u"), **kw)


# --- weighers -----------------------------------------------------------------------------


def test_spread_balances_and_pack_fills() -> None:
    nodes = [node("a"), node("b"), node("c")]
    spread = place(nodes, [SMALL] * 6, {}, config(weigher="spread"))
    assert sorted(spread.nodes) == ["a", "a", "b", "b", "c", "c"]
    pack = place(nodes, [SMALL] * 6, {}, config(weigher="pack"))
    assert pack.nodes == ["a"] * 6
    assert pack.rejected == {
        "b": "weigher: pack preferred other nodes",
        "c": "weigher: pack preferred other nodes",
    }


# a: vcpus half used; b: memory half used; c: empty. A 1-vcpu 4 GB VM leaves a closest to
# balanced (5/8 vcpus, 4/8 memory) while c stays emptiest.
UNEVEN = [node("a"), node("b"), node("c")]
UNEVEN_USE = {"a": {"vcpus": 4}, "b": {"memory_mb": 4096}}
WIDE = VMSpec(vcpus=1, memory_mb=4096)


def test_balanced_prefers_the_node_whose_shares_stay_even() -> None:
    assert place(UNEVEN, [WIDE], UNEVEN_USE, config(weigher="spread")).nodes == ["c"]
    balanced = place(UNEVEN, [WIDE], UNEVEN_USE, config(weigher="balanced"))
    assert balanced.nodes == ["a"]
    assert balanced.rejected["c"] == "weigher: balanced preferred other nodes"


def test_weights_combine_weighers() -> None:
    light = config(weighers={"spread": 1.0, "balanced": 0.5})
    heavy = config(weighers={"spread": 1.0, "balanced": 2.0})
    assert place(UNEVEN, [WIDE], UNEVEN_USE, light).nodes == ["c"]
    chosen = place(UNEVEN, [WIDE], UNEVEN_USE, heavy)
    assert chosen.nodes == ["a"]
    assert chosen.rejected["c"] == "weigher: spread*1 + balanced*2 preferred other nodes"


GIB = 1024


def test_fit_keeps_the_large_hole_that_spread_fills() -> None:
    """A 16 GiB hole and a 48 GiB one: under fit, five 4 GiB VMs fill the small hole first
    and a 32 GiB VM still has room after them; spread puts them all into the large hole,
    and the 32 GiB VM is turned away."""
    nodes = [node("a", vcpus=96, mem=64 * GIB), node("b", vcpus=96, mem=64 * GIB)]
    small, large = VMSpec(vcpus=2, memory_mb=4 * GIB), VMSpec(vcpus=8, memory_mb=32 * GIB)
    free_memory = {}
    for weigher, large_fits in (("fit", True), ("spread", False)):
        reserved = {
            "a": {"vcpus": 16, "memory_mb": 48 * GIB},
            "b": {"vcpus": 4, "memory_mb": 16 * GIB},
        }
        for _ in range(5):
            (chosen,) = place(nodes, [small], reserved, config(weigher=weigher)).nodes
            reserved[chosen]["vcpus"] += small.vcpus
            reserved[chosen]["memory_mb"] += small.memory_mb
        free_memory[weigher] = {n: (64 * GIB - r["memory_mb"]) // GIB for n, r in reserved.items()}
        assert (
            place(nodes, [large], reserved, config(weigher=weigher)).error is None
        ) is large_fits
    assert free_memory == {"fit": {"a": 0, "b": 44}, "spread": {"a": 16, "b": 28}}


# c: 24 CPUs, 64 GiB, overcommit 4 (96 vCPUs): memory runs out first. d: 16 CPUs, 128 GiB
# (64 vCPUs) with half its vCPUs taken: at 1.5 GiB per vCPU, its vCPUs run out first.
MIXED = [node("c", vcpus=24, mem=64 * GIB), node("d", vcpus=16, mem=128 * GIB)]
MIXED_USE = {"d": {"vcpus": 32, "memory_mb": 32 * GIB, "vms": 4}}


def test_fit_sends_each_vm_where_it_strands_the_least() -> None:
    fit = config(weigher="fit", vcpu_ratio=4)
    memory_heavy = VMSpec(vcpus=8, memory_mb=32 * GIB)
    vcpu_heavy = VMSpec(vcpus=4, memory_mb=4 * GIB)
    # d's spare memory needs few vCPUs: the memory-heavy VM uses it; spread would take c
    assert place(MIXED, [memory_heavy], MIXED_USE, fit).nodes == ["d"]
    assert place(
        MIXED, [memory_heavy], MIXED_USE, config(weigher="spread", vcpu_ratio=4)
    ).nodes == ["c"]
    # on d the vCPU-heavy VM would take vCPUs that d's free memory needs
    assert place(MIXED, [vcpu_heavy], MIXED_USE, fit).nodes == ["c"]
    # expecting VMs of 0.5 GiB per vCPU, d's vCPUs are not what runs out: the fuller d wins
    thin = config(weigher="fit", vcpu_ratio=4, memory_per_vcpu=0.5)
    assert place(MIXED, [vcpu_heavy], MIXED_USE, thin).nodes == ["d"]


def test_fit_spreads_small_vms_over_equal_nodes_and_packs_large_ones() -> None:
    nodes = [
        node("a", vcpus=64, mem=256 * GIB),
        node("b", vcpus=64, mem=256 * GIB),
        node("c", vcpus=64, mem=256 * GIB),
    ]
    tiny = place(nodes, [VMSpec(vcpus=1, memory_mb=256)] * 6, {}, config(weigher="fit"))
    assert sorted(tiny.nodes) == ["a", "a", "b", "b", "c", "c"]
    large = place(nodes, [VMSpec(vcpus=8, memory_mb=32 * GIB)] * 3, {}, config(weigher="fit"))
    assert large.nodes == ["a", "a", "a"]


# --- filters ------------------------------------------------------------------------------


def test_capacity_is_never_exceeded_and_gang_is_all_or_nothing() -> None:
    nodes = [node("a", mem=2048), node("b", mem=2048)]
    fits = place(nodes, [SMALL] * 4, {})
    assert sorted(fits.nodes) == ["a", "a", "b", "b"] and fits.error is None
    too_many = place(nodes, [SMALL] * 5, {})
    assert too_many.nodes == []
    assert too_many.error == (
        "not enough capacity: 4 of 5 VMs fit (1 vcpus, 1024 MB each) on 2 usable of 2 nodes"
    )
    assert too_many.rejected["a"] == (
        "capacity: needs 1 vcpus and 1024 MB, has 6 vcpus and 0 MB free"
    )


def test_reserved_capacity_counts() -> None:
    nodes = [node("a", mem=2048), node("b", mem=2048)]
    placement = place(nodes, [SMALL], {"a": {"vcpus": 1, "memory_mb": 2048, "vms": 1}})
    assert placement.nodes == ["b"]
    assert placement.rejected["a"].startswith("capacity: needs 1 vcpus and 1024 MB")


def test_overcommit_ratios_scale_what_can_be_reserved() -> None:
    nodes = [node("a", vcpus=4, mem=65536)]
    assert len(place(nodes, [SMALL] * 4, {}).nodes) == 4
    assert place(nodes, [SMALL] * 5, {}).error
    doubled = config(vcpu_ratio=2.0)
    assert len(place(nodes, [SMALL] * 8, {}, doubled).nodes) == 8
    assert place(nodes, [SMALL] * 9, {}, doubled).error
    halved = config(memory_ratio=0.5)
    small_memory = [node("b", vcpus=64, mem=4096)]
    assert len(place(small_memory, [SMALL] * 2, {}, halved).nodes) == 2
    refused = place(small_memory, [SMALL] * 3, {}, halved)
    assert refused.error and "has 62 vcpus and 0 MB free" in refused.rejected["b"]


def test_down_and_drained_nodes_are_rejected_with_reasons() -> None:
    down = node("down", connected=False)
    drained = node("drained", drained=True)
    drained.state = NodeState.DRAINING
    placement = place([down, drained, node("ok")], [SMALL], {})
    assert placement.nodes == ["ok"]
    assert placement.rejected["down"] == "state: node is down"
    assert placement.rejected["drained"] == "state: node is draining"


def test_asked_for_node_only() -> None:
    nodes = [node("a"), node("b")]
    placement = place(nodes, [SMALL], {}, want=Constraints(only="b"))
    assert placement.nodes == ["b"]
    assert placement.rejected["a"] == "request: not the asked-for node b"
    assert "unknown node" in (place(nodes, [SMALL], {}, want=Constraints(only="zz")).error or "")
    full = place(nodes, [VMSpec(vcpus=9, memory_mb=16)], {}, want=Constraints(only="a"))
    assert full.error and "capacity" in full.rejected["a"]


def test_required_labels() -> None:
    nodes = [
        node("a", labels={"rack": "r1"}),
        node("b", labels={"rack": "r2", "gpu": "yes"}),
        node("c", labels={"rack": "r1", "gpu": "yes"}),
    ]
    want = Constraints(labels={"rack": "r1", "gpu": "yes"})
    placement = place(nodes, [SMALL] * 2, {}, want=want)
    assert placement.nodes == ["c", "c"]
    assert placement.rejected == {"a": "labels: lacks gpu=yes", "b": "labels: lacks rack=r1"}
    none = place(nodes, [SMALL], {}, want=Constraints(labels={"rack": "r9"}))
    assert none.error == "no node of 3 may take these VMs: labels: lacks rack=r9 (3 nodes)"
    assert "capacity" not in (none.error or "")  # a label no node has is not a lack of room
    assert place([], [SMALL], {}).error == "no node has joined the controller yet"


def test_anti_affinity_spreads_a_request_and_avoids_its_cluster() -> None:
    nodes = [node("a"), node("b"), node("c"), node("d")]
    packed = config(weigher="pack")
    apart = place(nodes, [SMALL] * 4, {}, packed, Constraints(anti_affinity=True))
    assert sorted(apart.nodes) == ["a", "b", "c", "d"]
    reserved = {"a": {"vcpus": 1, "memory_mb": 1024, "vms": 1, "clusters": {"web": 1}}}
    want = Constraints(cluster="web", anti_affinity=True)
    placement = place(nodes, [SMALL] * 3, reserved, packed, want)
    assert sorted(placement.nodes) == ["b", "c", "d"]
    assert placement.rejected == {"a": "anti-affinity: already runs 1 VM(s) of cluster web"}
    other_cluster = place(nodes, [SMALL] * 4, reserved, packed, Constraints(anti_affinity=True))
    assert sorted(other_cluster.nodes) == ["a", "b", "c", "d"]
    too_many = place(nodes, [SMALL] * 4, reserved, packed, want)
    assert too_many.error == (
        "not enough capacity: 3 of 4 VMs fit (1 vcpus, 1024 MB each, one per node "
        "(anti-affinity)) on 3 usable of 4 nodes"
    )
    assert too_many.rejected["b"] == "anti-affinity: would already run a VM of this request"


def test_affinity_keeps_a_cluster_on_one_node() -> None:
    nodes = [node("a"), node("b"), node("c")]
    together = place(nodes, [SMALL] * 3, {}, want=Constraints(affinity=True))
    assert together.nodes == ["a"] * 3
    reserved = {"b": {"vcpus": 1, "memory_mb": 1024, "vms": 1, "clusters": {"db": 1}}}
    want = Constraints(cluster="db", affinity=True)
    joined = place(nodes, [SMALL] * 3, reserved, want=want)
    assert joined.nodes == ["b"] * 3
    assert joined.rejected["a"] == "affinity: cluster db runs on b"
    too_big = place(nodes, [SMALL] * 8, reserved, want=want)
    assert too_big.error == (
        "not enough capacity: no node has room for all 8 VMs of cluster db together "
        "(8 vcpus, 8192 MB; affinity) on 1 usable of 3 nodes"
    )
    assert too_big.rejected["b"] == (
        "capacity: 8 VMs together need 8 vcpus and 8192 MB, has 7 vcpus and 7168 MB free"
    )


def test_max_vms_per_node() -> None:
    nodes = [node("a"), node("b"), node("c")]
    limited = config(weigher="pack", max_vms_per_node=2)
    assert sorted(place(nodes, [SMALL] * 6, {}, limited).nodes) == ["a", "a", "b", "b", "c", "c"]
    full = place(nodes, [SMALL], {"a": {"vms": 2}}, limited)
    assert full.nodes == ["b"]
    assert full.rejected["a"] == "max-vms: runs 2 VMs, at most 2 allowed per node"
    assert place(nodes, [SMALL] * 7, {}, limited).error


def test_every_node_not_chosen_is_explained() -> None:
    nodes = [node(f"n{i}", vcpus=2) for i in range(5)] + [node("down", connected=False)]
    for count in (1, 3, 10, 11):
        placement = place(nodes, [SMALL] * count, {})
        names = {n.name for n in nodes}
        assert set(placement.rejected) | set(placement.nodes) == names
        assert not set(placement.rejected) & set(placement.nodes)
        assert all(": " in why for why in placement.rejected.values())


def test_mixed_sizes_are_placed_largest_first() -> None:
    nodes = [node("a", vcpus=4, mem=4096), node("b", vcpus=4, mem=4096)]
    big = VMSpec(vcpus=3, memory_mb=3072)
    placement = place(nodes, [SMALL, SMALL, big, big], {}, config(weigher="pack"))
    assert placement.nodes == ["a", "b", "a", "b"]


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"weigher": "random"}, "unknown weigher 'random'"),
        ({"weighers": {"spread": 1.0, "fancy": 1.0}}, "unknown weigher 'fancy'"),
        ({"weigher": "pack", "weighers": {"spread": 1.0}}, "weigher or weighers, not both"),
        ({"weighers": {"spread": -1}}, "weight of spread must be a number ≥ 0"),
        ({"weighers": {"spread": 0}}, "at least one weigher"),
        ({"weighers": "spread"}, "weighers must be a table"),
        ({"vcpu_ratio": 0}, "vcpu_ratio must be a number above 0"),
        ({"memory_ratio": -1.5}, "memory_ratio must be a number above 0"),
        ({"vcpu_ratio": "2"}, "vcpu_ratio must be a number above 0"),
        ({"memory_ratio": True}, "memory_ratio must be a number above 0"),
        ({"max_vms_per_node": 0}, "max_vms_per_node must be an integer ≥ 1"),
        ({"max_vms_per_node": 2.5}, "max_vms_per_node must be an integer ≥ 1"),
        ({"memory_per_vcpu": 0}, "memory_per_vcpu must be a number above 0"),
        ({"memory_per_vcpu": "2G"}, "memory_per_vcpu must be a number above 0"),
        ({"overcommit": 2}, "unknown setting(s) overcommit"),
    ],
)
def test_bad_config_is_refused_at_configure(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^scheduler: ") as info:
        Scheduler().usher_configure(table)
    assert message in str(info.value)


def test_config_defaults_and_shortcut() -> None:
    scheduler = Scheduler()
    scheduler.usher_configure({})
    assert scheduler.config == SchedulerConfig()
    assert scheduler.config.weights == {"fit": 1.0}
    assert scheduler.config.memory_per_vcpu == 1.5
    scheduler.usher_configure(
        {"weigher": "balanced", "vcpu_ratio": 4, "max_vms_per_node": 3, "memory_per_vcpu": 2}
    )
    assert scheduler.config == SchedulerConfig(
        weights={"balanced": 1.0}, vcpu_ratio=4.0, max_vms_per_node=3, memory_per_vcpu=2.0
    )


# --- the hook -----------------------------------------------------------------------------


def test_hook_reads_constraints_from_the_request() -> None:
    scheduler = Scheduler()
    scheduler.usher_configure({"weigher": "pack"})
    nodes = [node("a"), node("b", labels={"ssd": "yes"}), node("c", labels={"ssd": "yes"})]
    reserved = {"b": {"vcpus": 1, "memory_mb": 1024, "vms": 1, "clusters": {"web": 1}}}
    req = request(cluster="web", kwargs={"labels": {"ssd": "yes"}, "anti_affinity": True})
    placement = scheduler.schedule(nodes, [SMALL], req, reserved, None)
    assert placement.nodes == ["c"]
    assert placement.rejected == {
        "a": "labels: lacks ssd=yes",
        "b": "anti-affinity: already runs 1 VM(s) of cluster web",
    }


def test_hook_falls_back_to_the_vms_own_kwargs_for_a_migration() -> None:
    nodes = [node("a"), node("b", labels={"ssd": "yes"})]
    spec = VMSpec(vcpus=1, memory_mb=1024, kwargs={"labels": {"ssd": "yes"}})
    migrate = OpRequest(kind=OpKind.MIGRATE, principal=Principal(name="u"))
    assert Scheduler().schedule(nodes, [spec], migrate, {}, None).nodes == ["b"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["ssd"]}, "scheduler: labels must map names to strings"),
        ({"labels": {"ssd": 1}}, "scheduler: labels must map names to strings"),
        ({"anti_affinity": "yes"}, "scheduler: anti_affinity must be true or false"),
        ({"affinity": True, "anti_affinity": True}, "scheduler: affinity and anti_affinity"),
    ],
)
def test_hook_refuses_malformed_constraints(kwargs: dict[str, Any], message: str) -> None:
    placement = Scheduler().schedule([node("a")], [SMALL], request(kwargs=kwargs), {}, None)
    assert placement.nodes == [] and (placement.error or "").startswith(message)


# --- speed --------------------------------------------------------------------------------


@pytest.mark.parametrize("want", [Constraints(), Constraints(anti_affinity=True)])
def test_a_thousand_vms_on_a_thousand_nodes_is_quick(want: Constraints) -> None:
    nodes = [node(f"n{i:04}", vcpus=16, mem=65536) for i in range(1000)]
    reserved = {
        f"n{i:04}": {"vcpus": i % 8, "memory_mb": 1024 * (i % 5), "vms": 1} for i in range(1000)
    }
    started = time.perf_counter()
    placement = place(nodes, [SMALL] * 1000, reserved, config(weigher="balanced"), want)
    elapsed = time.perf_counter() - started
    assert len(placement.nodes) == 1000 and placement.error is None
    assert elapsed < 2.0, f"placing 1000 VMs on 1000 nodes took {elapsed:.2f}s"
