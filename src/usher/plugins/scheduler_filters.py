"""The scheduler's filters: what a request asks for, and why a node cannot take a VM.

Every reason reads ``"<filter>: <reason>"``; the filters are ``request`` (an asked-for node),
``state``, ``labels``, ``affinity``, ``anti-affinity``, ``max-vms`` and ``capacity``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from usher.model import Node, NodeState, OpRequest, VMSpec
from usher.plugins.scheduler_config import SchedulerConfig

UNLIMITED = sys.maxsize


@dataclass(frozen=True)
class Constraints:
    """What one request asks of its nodes, besides room for its VMs.

    ``anti_affinity``: every VM of the request on its own node, and none on a node already
    holding VMs of ``cluster``. ``affinity``: all on one node, one already holding VMs of
    ``cluster`` if there is any.
    """

    only: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    cluster: str | None = None
    affinity: bool = False
    anti_affinity: bool = False

    @classmethod
    def of(cls, request: OpRequest, specs: list[VMSpec]) -> Constraints:
        """Read them from ``request.kwargs``, falling back to the kwargs the VMs were started
        with (so a migration keeps honouring them). Raise :class:`ValueError` if malformed."""
        kwargs: dict[str, Any] = {**(specs[0].kwargs if specs else {}), **request.kwargs}
        labels = kwargs.get("labels") or {}
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValueError('labels must map names to strings, e.g. {"rack": "r1"}')
        flags = {key: kwargs.get(key, False) for key in ("affinity", "anti_affinity")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, not {value!r}")
        if flags["affinity"] and flags["anti_affinity"]:
            raise ValueError("affinity and anti_affinity exclude each other")
        return cls(
            only=request.target_node or request.node,
            labels=dict(labels),
            cluster=request.cluster,
            **flags,
        )


class Slot:
    """A usable node during one placement: its limits and what is reserved on it so far."""

    __slots__ = ("cap_m", "cap_v", "max_vms", "name", "used_m", "used_v", "vms")

    def __init__(self, node: Node, reserved: Mapping[str, Any], config: SchedulerConfig) -> None:
        self.name = node.name
        self.cap_v = math.floor(node.capacity.vcpus * config.vcpu_ratio)
        self.cap_m = math.floor(node.capacity.memory_mb * config.memory_ratio)
        self.max_vms = config.max_vms_per_node or UNLIMITED
        self.used_v = int(reserved.get("vcpus", 0))
        self.used_m = int(reserved.get("memory_mb", 0))
        self.vms = int(reserved.get("vms", 0))

    def fits(self, vcpus: int, memory_mb: int, count: int = 1) -> bool:
        return (
            self.used_v + vcpus <= self.cap_v
            and self.used_m + memory_mb <= self.cap_m
            and self.vms + count <= self.max_vms
        )

    def add(self, vcpus: int, memory_mb: int) -> None:
        self.used_v += vcpus
        self.used_m += memory_mb
        self.vms += 1

    def why_not(self, vcpus: int, memory_mb: int, count: int = 1) -> str:
        """Why ``count`` VMs needing ``vcpus`` and ``memory_mb`` in all do not fit here."""
        if self.vms + count > self.max_vms:
            return f"max-vms: runs {self.vms} VMs, at most {self.max_vms} allowed per node"
        what = f"{count} VMs together need" if count > 1 else "needs"
        return (
            f"capacity: {what} {vcpus} vcpus and {memory_mb} MB, has "
            f"{self.cap_v - self.used_v} vcpus and {self.cap_m - self.used_m} MB free"
        )


def _asked_for(node: Node, only: str | None) -> str | None:
    if only is None or only == node.name:
        return None
    return f"request: not the asked-for node {only}"


def unusable_state(node: Node) -> str | None:
    """Why ``node``'s state keeps VMs off it (None: it may take them)."""
    if not node.connected or node.state == NodeState.DOWN:
        return "state: node is down"
    if node.drained or node.state != NodeState.UP:
        return f"state: node is {node.state.value}"
    return None


def _labels(node: Node, wanted: Mapping[str, str]) -> str | None:
    if not wanted:
        return None
    missing = [f"{k}={v}" for k, v in wanted.items() if node.labels.get(k) != v]
    return f"labels: lacks {', '.join(missing)}" if missing else None


def _groups(cluster_vms: int, held_by: list[str], want: Constraints) -> str | None:
    if want.anti_affinity and cluster_vms:
        return f"anti-affinity: already runs {cluster_vms} VM(s) of cluster {want.cluster}"
    if want.affinity and held_by and not cluster_vms:
        return f"affinity: cluster {want.cluster} runs on {', '.join(held_by)}"
    return None


def usable(
    nodes: list[Node],
    reserved: Mapping[str, Mapping[str, Any]],
    config: SchedulerConfig,
    want: Constraints,
) -> tuple[list[Slot], dict[str, str]]:
    """Split ``nodes`` into slots that may take VMs of the request and rejected nodes (with
    the reason); room for the VMs themselves is checked while placing."""

    def cluster_vms(name: str) -> int:
        if want.cluster is None:
            return 0
        return int(reserved.get(name, {}).get("clusters", {}).get(want.cluster, 0))

    held_by = sorted(n.name for n in nodes if cluster_vms(n.name)) if want.affinity else []
    slots: list[Slot] = []
    rejected: dict[str, str] = {}
    for node in nodes:
        reason = (
            _asked_for(node, want.only)
            or unusable_state(node)
            or _labels(node, want.labels)
            or _groups(cluster_vms(node.name), held_by, want)
        )
        if reason:
            rejected[node.name] = reason
        else:
            slots.append(Slot(node, reserved.get(node.name, {}), config))
    return slots, rejected
