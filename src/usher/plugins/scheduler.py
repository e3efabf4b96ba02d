"""Built-in scheduler: a capacity filter, a state filter, and a spread or pack weigher.

Placement is a pure function of (cluster snapshot, request): :func:`place` can run offline and
says, for every node it did not use, which filter rejected it and why. Config
(``[plugins.scheduler]``): ``weigher = "spread" | "pack"``.
"""

from __future__ import annotations

from typing import Any

from usher.hookspecs import hookimpl
from usher.model import Node, NodeState, OpRequest, Placement, VMSpec

WEIGHERS = ("spread", "pack")


def _free(node: Node, used: dict[str, int]) -> tuple[int, int]:
    return (
        node.capacity.vcpus - used.get("vcpus", 0),
        node.capacity.memory_mb - used.get("memory_mb", 0),
    )


def _state_reason(node: Node) -> str | None:
    if not node.connected or node.state == NodeState.DOWN:
        return "node is down"
    if node.drained or node.state != NodeState.UP:
        return f"node is {node.state.value}"
    return None


def place(
    nodes: list[Node],
    specs: list[VMSpec],
    reserved: dict[str, dict[str, int]],
    *,
    weigher: str = "spread",
    only: str | None = None,
) -> Placement:
    """Place every spec on a node, or none of them (a gang), explaining each rejection."""
    rejected: dict[str, str] = {}
    candidates: list[Node] = []
    for node in nodes:
        if only is not None and node.name != only:
            rejected[node.name] = f"request: not the asked-for node {only}"
        elif reason := _state_reason(node):
            rejected[node.name] = f"state: {reason}"
        else:
            candidates.append(node)
    if only is not None and only not in {n.name for n in nodes}:
        return Placement(rejected=rejected, error=f"unknown node {only!r}")
    used = {n.name: dict(reserved.get(n.name, {})) for n in candidates}
    chosen: list[str] = []
    for i, spec in enumerate(specs):
        fits = []
        for node in candidates:
            vcpus, mem = _free(node, used[node.name])
            if spec.vcpus <= vcpus and spec.memory_mb <= mem:
                fits.append((node, vcpus, mem))
        if not fits:
            for node in candidates:
                vcpus, mem = _free(node, used[node.name])
                rejected[node.name] = (
                    f"capacity: needs {spec.vcpus} vcpus and {spec.memory_mb} MB, "
                    f"has {vcpus} vcpus and {mem} MB free"
                )
            placed = f"{i} of {len(specs)} VMs fit" if i else "no VM fits"
            return Placement(
                rejected=rejected,
                error=f"not enough capacity: {placed} ({spec.vcpus} vcpus, {spec.memory_mb} MB "
                f"each) on {len(candidates)} usable of {len(nodes)} nodes",
            )

        def score(entry: tuple[Node, int, int]) -> tuple[float, str]:
            node, vcpus, mem = entry
            share = mem / max(node.capacity.memory_mb, 1) + vcpus / max(node.capacity.vcpus, 1)
            return (-share if weigher == "spread" else share, node.name)

        best = min(fits, key=score)[0]
        chosen.append(best.name)
        u = used[best.name]
        u["vcpus"] = u.get("vcpus", 0) + spec.vcpus
        u["memory_mb"] = u.get("memory_mb", 0) + spec.memory_mb
        u["vms"] = u.get("vms", 0) + 1
    for node in candidates:
        if node.name not in chosen:
            rejected.setdefault(node.name, f"weigher: {weigher} preferred other nodes")
    return Placement(nodes=chosen, rejected=rejected)


class Scheduler:
    weigher: str = "spread"

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        weigher = config.get("weigher", "spread")
        if weigher not in WEIGHERS:
            raise ValueError(f"scheduler: unknown weigher {weigher!r} (one of {WEIGHERS})")
        self.weigher = weigher

    @hookimpl
    def schedule(
        self,
        nodes: list[Node],
        specs: list[VMSpec],
        request: OpRequest,
        reserved: dict[str, dict[str, int]],
    ) -> Placement:
        only = request.target_node or request.node
        return place(nodes, specs, reserved, weigher=self.weigher, only=only)
