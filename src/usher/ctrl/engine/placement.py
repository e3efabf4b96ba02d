"""Placement: where new VMs go and where VMs move, asked of the scheduler plugins.

A request's VMs are placed in one decision before the request is answered (all of them, or
none and the request is refused), under one lock, and what is placed is promised at once:
a migration's target holds room for the VM from the moment it is placed (see
:class:`usher.ctrl.reservations.Reservations`), so the next request sees it taken. A dry
run takes the same path and promises nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.plugins import PluginError, Vetoed
from usher.ctrl.reservations import Changes
from usher.model import VM, OpRequest, Placement, Plan, PlannedVM, VMSpec, VMState


@dataclass
class Moves:
    """Where each VM of a migration or evacuation goes (``targets``: VM id to node), or why
    they cannot all go (``error``, naming the first VM that has nowhere to go)."""

    targets: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def plan(self, vms: list[VM]) -> Plan:
        return Plan(
            vms=[PlannedVM(name=vm.name, vm_id=vm.id, node=self.targets.get(vm.id)) for vm in vms],
            rejected=self.rejected,
            error=self.error,
        )


def _holds(vm: VM) -> bool:
    """Whether ``vm`` holds room on a node (a stopped VM reserves nothing)."""
    return vm.state != VMState.STOPPED


class Placer:
    def __init__(self, crew: Crew) -> None:
        self.crew = crew

    async def new_vms(self, req: OpRequest, specs: list[VMSpec]) -> list[str]:
        """Nodes for new VMs of ``specs``, all or none (409); call under ``placement_lock``
        and record the VMs before releasing it."""
        placement = await self.ask(req, specs)
        if placement.error:
            raise RequestError(409, placement.error, {"rejected": placement.rejected})
        return list(placement.nodes)

    async def moves(self, req: OpRequest, vms: list[VM], target: str | None) -> Moves:
        """Where ``vms`` go: to ``target`` if given, else each where the scheduler puts it
        (never its own node; in its own virtual cluster's terms), counting the VMs placed
        before it. Call under ``placement_lock``; :meth:`promise` the result for a real
        request before releasing it."""
        moves = Moves()
        extra: dict[str, dict[str, Any]] = {}
        for vm in vms:
            if target is not None:
                placement = Placement(nodes=[target])
            else:
                placement = await self.ask(for_vm(req, vm), [vm.spec], vm.node, extra)
            moves.rejected.update(placement.rejected)
            if placement.error or not placement.nodes:
                moves.error = f"{vm.name}: {placement.error or 'no node'}"
                break
            node = moves.targets[vm.id] = placement.nodes[0]
            if _holds(vm):
                _add(extra.setdefault(node, _empty()), vm)
        return moves

    def promise(self, vms: list[VM], moves: Moves) -> None:
        """Hold room on each VM's new node until :meth:`release`."""
        reservations = self.crew.store.reservations
        for vm in vms:
            node = moves.targets.get(vm.id)
            if node is not None and _holds(vm):
                spec = vm.spec
                reservations.promise(vm.id, node, vm.cluster, spec.vcpus, spec.memory_mb)

    def release(self, vm_id: str) -> None:
        self.crew.store.reservations.release(vm_id)

    def is_promised(self, vm_id: str) -> bool:
        return self.crew.store.reservations.is_promised(vm_id)

    async def pick_target(self, req: OpRequest, vm: VM) -> str:
        """A node for ``vm`` other than its own, chosen by the scheduler (which passes over
        nodes that are down, drained or in maintenance), inside a step."""
        try:
            async with self.crew.placement_lock:
                placement = await self.ask(for_vm(req, vm), [vm.spec], exclude=vm.node)
        except RequestError as exc:
            raise StepFailed(f"{vm.name}: no node to move it to: {exc}") from exc
        if placement.error:
            raise StepFailed(f"{vm.name}: no node to move it to: {placement.error}")
        return placement.nodes[0]

    async def ask(
        self,
        req: OpRequest,
        specs: list[VMSpec],
        exclude: str | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> Placement:
        """Ask the scheduler plugins; ``extra`` is room promised beyond the reservations.

        A placement over the whole cluster as recorded passes the live reservations and the
        log of what changed since the last one (the scheduler's index reads only those
        nodes); one that leaves a node out or adds ``extra`` passes copies, and no log."""
        crew = self.crew
        nodes = crew.nodes.snapshot()
        reserved: Mapping[str, Mapping[str, Any]] = crew.store.reservations.by_node
        changes: Changes | None = crew.store.changes
        if exclude is not None or extra:
            nodes = [n for n in nodes if n.name != exclude]
            reserved, changes = self._with_extra(extra or {}), None
        try:
            placement = await crew.plugins.decide(
                "schedule",
                nodes=nodes,
                specs=specs,
                request=req,
                reserved=reserved,
                changes=changes,
            )
        except (PluginError, Vetoed) as exc:
            raise RequestError(403, f"{exc}; nothing was changed") from exc
        if placement is None:
            raise RequestError(409, "no scheduler plugin is enabled: cannot place VMs")
        known = {n.name for n in nodes}
        if not placement.error and (
            len(placement.nodes) != len(specs) or not set(placement.nodes) <= known
        ):
            raise RequestError(403, "the scheduler plugin returned an invalid placement")
        return placement

    def _with_extra(self, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A copy of the reservations with ``extra`` added."""
        reserved = self.crew.store.reservations.copy()
        for node, used in extra.items():
            mine = reserved.setdefault(node, _empty())
            for key in ("vcpus", "memory_mb", "vms"):
                mine[key] = mine.get(key, 0) + used.get(key, 0)
            clusters = mine.setdefault("clusters", {})
            for cluster, count in used.get("clusters", {}).items():
                clusters[cluster] = clusters.get(cluster, 0) + count
        return reserved


def for_vm(req: OpRequest, vm: VM) -> OpRequest:
    """``req`` as the scheduler should see it for moving ``vm``: in its virtual cluster."""
    return req.model_copy(update={"cluster": vm.cluster})


def _empty() -> dict[str, Any]:
    return {"vcpus": 0, "memory_mb": 0, "vms": 0, "clusters": {}}


def _add(used: dict[str, Any], vm: VM) -> None:
    used["vcpus"] += vm.spec.vcpus
    used["memory_mb"] += vm.spec.memory_mb
    used["vms"] += 1
    if vm.cluster:
        used["clusters"][vm.cluster] = used["clusters"].get(vm.cluster, 0) + 1
