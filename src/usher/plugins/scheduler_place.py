"""Placement: a pure function of (cluster snapshot, request) that explains itself.

VMs are placed as a gang (all or none). Specs of one size are placed together from a heap of
the slots that still fit them, keyed by weigher score, so a gang of ``N`` VMs on ``n`` nodes
costs ``O(n + N log n)``: only the node that just took a VM is scored again. For VMs of one
size the result is exact: if any placement satisfies the filters, one is found. Mixed sizes
are placed largest first, greedily.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from usher.model import Node, Placement, VMSpec
from usher.plugins.scheduler_config import SchedulerConfig
from usher.plugins.scheduler_filters import Constraints, Slot, usable

Score = Callable[[Slot, int, int], float]

HOLE = 0.1  # fit: weight of the node's free memory share left (the best fit)
PER_VM = 0.005  # fit: weight of each VM the node runs already (evens out VM counts)


def fit(slot: Slot, vcpus: int, memory_mb: int, mb_per_vcpu: float) -> float:
    """The ``fit`` weigher: higher for the node where the VM wastes least and leaves the
    large holes open.

    A node's *usable* free memory is what VMs needing ``mb_per_vcpu`` per vCPU could still
    take: ``min(free memory, free vCPUs * mb_per_vcpu)``. The VM costs the node what it takes
    from that, per MB of its own: 1 where memory is what runs out, more where it takes
    vCPUs that the node's free memory needs (that memory would be stranded), less where it
    uses memory that the node's vCPUs could not have served. Then, a little, the best fit:
    the node left with the least free memory share keeps the emptier nodes' holes for large
    VMs. And a little less for each VM the node runs already, so that small VMs on equal
    nodes are spread out rather than piled on one.
    """
    free_m = slot.cap_m - slot.used_m
    free_v = slot.cap_v - slot.used_v
    before = min(free_m, free_v * mb_per_vcpu)
    after = min(free_m - memory_mb, (free_v - vcpus) * mb_per_vcpu)
    cost = (before - after) / max(memory_mb, 1)
    return -cost - HOLE * (free_m - memory_mb) / max(slot.cap_m, 1) - PER_VM * (slot.vms + 1)


def scorer(config: SchedulerConfig) -> Score:
    """Higher is better: the weighted sum of the configured weighers' scores.

    ``fit`` (the default): see :func:`fit`. The others look at the node's usage shares after
    taking the VM: ``spread`` prefers free nodes, ``pack`` full ones, ``balanced`` the node
    whose vcpu and memory shares stay closest to each other."""
    weights = config.weights
    fitted, spread, pack, balanced = (
        weights.get(k, 0.0) for k in ("fit", "spread", "pack", "balanced")
    )
    mb_per_vcpu = config.memory_per_vcpu * 1024

    def score(slot: Slot, vcpus: int, memory_mb: int) -> float:
        v = (slot.used_v + vcpus) / max(slot.cap_v, 1)
        m = (slot.used_m + memory_mb) / max(slot.cap_m, 1)
        load = (v + m) / 2
        shares = spread * (1 - load) + pack * load - balanced * abs(v - m)
        return shares + (fitted * fit(slot, vcpus, memory_mb, mb_per_vcpu) if fitted else 0.0)

    return score


def _sizes(specs: list[VMSpec]) -> list[tuple[int, int, list[int]]]:
    """``(vcpus, memory_mb, indices of the specs of that size)``, largest first."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault((spec.vcpus, spec.memory_mb), []).append(i)
    order = sorted(groups, key=lambda size: (-size[1], -size[0]))
    return [(v, m, groups[v, m]) for v, m in order]


def _gang(
    slots: list[Slot], specs: list[VMSpec], score: Score, distinct: bool
) -> tuple[list[Slot | None], set[int], tuple[int, int] | None]:
    """Slot per spec; the slots taken; the size that found no room (``None`` if all did)."""
    chosen: list[Slot | None] = [None] * len(specs)
    taken: set[int] = set()
    for v, m, indices in _sizes(specs):
        heap = [
            (-score(s, v, m), s.name, j)
            for j, s in enumerate(slots)
            if not (distinct and j in taken) and s.fits(v, m)
        ]
        heapq.heapify(heap)
        for i in indices:
            if not heap:
                return chosen, taken, (v, m)
            _, name, j = heapq.heappop(heap)
            slot = slots[j]
            slot.add(v, m)
            chosen[i] = slot
            taken.add(j)
            if not distinct and slot.fits(v, m):
                heapq.heappush(heap, (-score(slot, v, m), name, j))
    return chosen, taken, None


def _apart(
    slots: list[Slot],
    specs: list[VMSpec],
    score: Score,
    want: Constraints,
    weigher: str | None,
) -> tuple[list[str], dict[str, str], str | None]:
    """Place the specs one by one (on distinct nodes with anti-affinity)."""
    chosen, taken, failed = _gang(slots, specs, score, want.anti_affinity)
    rejected: dict[str, str] = {}
    if failed is not None:
        v, m = failed
        for j, slot in enumerate(slots):
            if want.anti_affinity and j in taken:
                rejected[slot.name] = "anti-affinity: would already run a VM of this request"
            else:
                rejected[slot.name] = slot.why_not(v, m)
        placed = sum(c is not None for c in chosen)
        fit = f"{placed} of {len(specs)} VMs fit" if placed else "no VM fits"
        apart = ", one per node (anti-affinity)" if want.anti_affinity else ""
        return [], rejected, f"not enough capacity: {fit} ({v} vcpus, {m} MB each{apart})"
    sizes = _sizes(specs)
    for j, slot in enumerate(slots if weigher is not None else ()):
        if j in taken:
            continue
        if any(slot.fits(v, m) for v, m, _ in sizes):
            rejected[slot.name] = f"weigher: {weigher} preferred other nodes"
        else:
            v, m, _ = sizes[-1]
            rejected[slot.name] = slot.why_not(v, m)
    return [c.name for c in chosen if c is not None], rejected, None


def _together(
    slots: list[Slot],
    specs: list[VMSpec],
    score: Score,
    want: Constraints,
    weigher: str | None,
) -> tuple[list[str], dict[str, str], str | None]:
    """Place all specs on the one best node that has room for them all (affinity)."""
    v, m, n = sum(s.vcpus for s in specs), sum(s.memory_mb for s in specs), len(specs)
    fitting = {s for s in slots if s.fits(v, m, n)}
    best = min(fitting, key=lambda s: (-score(s, v, m), s.name)) if fitting else None
    rejected = {
        s.name: f"weigher: {weigher} preferred other nodes" if s in fitting else s.why_not(v, m, n)
        for s in slots
        if s is not best and (weigher is not None or best is None or s not in fitting)
    }
    if best is None:
        group = f" of cluster {want.cluster}" if want.cluster else ""
        return (
            [],
            rejected,
            f"not enough capacity: no node has room for all {n} VMs{group} together "
            f"({v} vcpus, {m} MB; affinity)",
        )
    return [best.name] * n, rejected, None


def place(
    nodes: list[Node],
    specs: list[VMSpec],
    reserved: Mapping[str, Mapping[str, Any]],
    config: SchedulerConfig | None = None,
    want: Constraints | None = None,
    *,
    explain: bool = True,
) -> Placement:
    """Place every spec on a node, or none of them (a gang), explaining each rejection.

    ``reserved`` maps a node name to what is committed there already:
    ``{"vcpus": n, "memory_mb": m, "vms": k, "clusters": {cluster: vm count}}`` (every key
    optional). Pure: nothing passed in is changed. With ``explain`` false, a placement that
    succeeds explains only the nodes the filters rejected, not those that had no room or
    that the weigher liked less (a string per node: on a large cluster, a good share of a
    one-VM decision's cost).
    """
    config = config or SchedulerConfig()
    want = want or Constraints()
    slots, rejected = usable(nodes, reserved, config, want)
    if want.only is not None and want.only not in {n.name for n in nodes}:
        return Placement(rejected=rejected, error=f"unknown node {want.only!r}")
    if not slots:
        return Placement(rejected=rejected, error=_none_usable(rejected, len(nodes)))
    strategy = _together if want.affinity else _apart
    weigher = config.describe_weights() if explain else None
    chosen, more, error = strategy(slots, specs, scorer(config), want, weigher)
    rejected.update(more)
    if error is not None:
        return Placement(
            rejected=rejected, error=f"{error} on {len(slots)} usable of {len(nodes)} nodes"
        )
    return Placement(nodes=chosen, rejected=rejected)


def _none_usable(rejected: Mapping[str, str], total: int) -> str:
    """Why no node may take the VMs at all (not a matter of room): each filter's reason,
    with how many nodes it ruled out."""
    if not total:
        return "no node has joined the controller yet"
    reasons = Counter(rejected.values())
    listed = "; ".join(
        f"{reason} ({count} node{'s' if count > 1 else ''})"
        for reason, count in reasons.most_common(5)
    )
    return f"no node of {total} may take these VMs: {listed}"
