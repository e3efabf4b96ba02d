"""Resizing one VM (``POST /v1/vms/{vm}/resize``, ``ush resize``): its vCPUs and memory while
it is stopped, and its disks, which only grow, stopped, running or paused.

A resize passes the phases of any action (authorize ``vm.resize``; the ``request`` and
``resize_request`` hooks see the VM's spec as it would become, which is how quotas count
it; a hook may change that spec, within what a resize may change) and, when it asks for
more vCPUs or memory, the scheduler: the VM must fit its node as it would start there. The
step asks the node (``resize_disk`` per disk, or ``info`` to confirm a stopped VM), and the
record's spec changes only once the node said yes. Disk growth is relative: two resizes of
the same disk at once grow it twice, one after the other (each step holds the VM's lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from usher.bounds import MAX_DISK_GB
from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.placement import Placer
from usher.ctrl.engine.runner import Runner, Step
from usher.ctrl.engine.transitions import check_still_admissible
from usher.model import VM, Capability, Operation, OpRequest, ResizeVM, VMSpec, VMState

RESIZABLE_FIELDS = ("vcpus", "memory_mb", "disk_gb", "disks")
"""What a resize may change of a VM's spec (a request hook too)."""


@dataclass(frozen=True)
class Plan:
    """What one resize does: the new vCPUs and memory (None: as they are) and, by disk
    (0: root; N: data disk N), how many GiB it grows."""

    vcpus: int | None
    memory_mb: int | None
    growth: dict[int, int]

    @property
    def cpu_or_memory(self) -> bool:
        return self.vcpus is not None or self.memory_mb is not None


class Resizes:
    def __init__(self, crew: Crew, runner: Runner, images: ImageCache, placer: Placer) -> None:
        self.crew = crew
        self.runner = runner
        self.images = images
        self.placer = placer

    async def check(self, vm: VM, body: ResizeVM) -> VMSpec:
        """What ``body`` makes of ``vm``'s spec; refused (nothing changed) if it asks for
        nothing, changes vCPUs or memory of a VM that is not stopped, names a disk the VM
        lacks, grows one past :data:`usher.bounds.MAX_DISK_GB`, or needs a driver that
        cannot grow disks."""
        if body.vcpus is None and body.memory_mb is None and not body.disks:
            raise RequestError(422, "say what to resize: vcpus, memory_mb or disks")
        if (body.vcpus is not None or body.memory_mb is not None) and vm.state != VMState.STOPPED:
            raise RequestError(
                409,
                f"cannot change the vCPUs or memory of {vm.name}: it is {vm.state.value}; "
                "stop it first (disks grow while it runs); nothing was changed",
            )
        update = {"vcpus": body.vcpus, "memory_mb": body.memory_mb}
        spec = vm.spec.model_copy(update={k: v for k, v in update.items() if v is not None})
        for growth in body.disks:
            size = await self._size(vm.spec, growth.disk, vm.name) + growth.grow_gb
            if size > MAX_DISK_GB:
                raise RequestError(
                    422,
                    f"disk {growth.disk} of {vm.name} would be {size} GiB, more than the "
                    f"{MAX_DISK_GB} GiB a disk may have; nothing was changed",
                )
            spec = spec.with_disk_size(growth.disk, size)
        if body.disks:
            self._check_driver(vm)
        return spec

    async def _size(self, spec: VMSpec, disk: int, name: str) -> int:
        """Disk ``disk``'s size in GiB as ``spec`` has it (a root disk of its image's size:
        that size, rounded up); 422 for a disk it does not have."""
        if disk > len(spec.disks):
            raise RequestError(
                422,
                f"{name} has no disk {disk} (0 is its root disk; it has {len(spec.disks)} "
                "data disks, numbered from 1); nothing was changed",
            )
        if disk == 0:
            return await self.images.root_gb(spec)
        return int(spec.disks[disk - 1]["size_gb"])

    def _check_driver(self, vm: VM) -> None:
        node = self.crew.nodes.get(vm.node or "")
        if (
            node is not None
            and node.capabilities
            and Capability.RESIZE_DISK not in node.capabilities
        ):
            raise RequestError(
                409,
                f"cannot grow the disks of {vm.name}: the {node.driver} driver of node "
                f"{node.name} cannot resize disks; nothing was changed",
            )

    async def plan(self, vm: VM, req: OpRequest) -> Plan:
        """What the resize does, from the spec the request hooks left (checked again: a
        hook may change only :data:`RESIZABLE_FIELDS`, may not shrink a disk, and may not
        change vCPUs or memory of a VM that is not stopped)."""
        after = req.spec
        if after is None:
            raise RequestError(403, "a request hook removed the resize's spec; nothing was changed")
        try:
            after = VMSpec.model_validate(after.model_dump())
        except ValueError as exc:
            raise RequestError(422, f"a request hook made the spec invalid: {exc}") from exc
        before = vm.spec
        kept = set(VMSpec.model_fields) - set(RESIZABLE_FIELDS)
        if after.model_dump(include=kept) != before.model_dump(include=kept) or len(
            after.disks
        ) != len(before.disks):
            raise RequestError(
                403,
                "a request hook changed more than a resize may (vcpus, memory_mb and disk "
                "sizes); nothing was changed",
            )
        growth: dict[int, int] = {}
        for disk, size in enumerate(after.disk_sizes()):
            if size is None:
                continue
            more = size - await self._size(before, disk, vm.name)
            if more < 0:
                raise RequestError(403, "a request hook shrank a disk; nothing was changed")
            if more:
                growth[disk] = more
        plan = Plan(
            vcpus=after.vcpus if after.vcpus != before.vcpus else None,
            memory_mb=after.memory_mb if after.memory_mb != before.memory_mb else None,
            growth=growth,
        )
        if plan.cpu_or_memory and vm.state != VMState.STOPPED:
            raise RequestError(409, f"cannot change the vCPUs or memory of {vm.name}: it runs")
        if not plan.cpu_or_memory and not growth:
            raise RequestError(422, f"{vm.name} is that size already; nothing was changed")
        return plan

    async def check_room(self, req: OpRequest, vm: VM) -> None:
        """A VM given more vCPUs or memory must still fit its node (the scheduler, as for a
        start there: a stopped VM holds nothing, so this is the room free now); 409 if not."""
        spec = req.spec
        assert spec is not None
        if spec.vcpus <= vm.spec.vcpus and spec.memory_mb <= vm.spec.memory_mb:
            return
        ask = req.model_copy(update={"node": vm.node, "cluster": vm.cluster})
        async with self.crew.placement_lock:
            placement = await self.placer.ask(ask, [spec])
        if placement.error:
            why = placement.rejected.get(vm.node or "", placement.error)
            raise RequestError(
                409,
                f"{vm.name} with {spec.vcpus} vCPUs and {spec.memory_mb} MB would not fit "
                f"node {vm.node}: {why}; nothing was changed",
                {"rejected": placement.rejected},
            )

    def step(self, plan: Plan) -> Step:
        """Ask the node, then record the spec it confirmed: each disk's growth as it is
        done (a failure midway leaves the record as the disks are)."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            if plan.cpu_or_memory:
                if vm.state != VMState.STOPPED:
                    raise StepFailed(f"{vm.name} is {vm.state.value} now: not resized")
                info = await self.runner.call(op, vm, "info", undo_state=vm.state)
                if info.get("state") != VMState.STOPPED.value:
                    raise StepFailed(f"{vm.name} is not stopped on node {vm.node}: not resized")
                update = {"vcpus": plan.vcpus, "memory_mb": plan.memory_mb}
                vm.spec = vm.spec.model_copy(
                    update={k: v for k, v in update.items() if v is not None}
                )
            for disk, more in plan.growth.items():
                try:
                    size = await self._size(vm.spec, disk, vm.name) + more
                except RequestError as exc:
                    raise StepFailed(f"{vm.name}: {exc.message}") from exc
                if size > MAX_DISK_GB:
                    raise StepFailed(f"disk {disk} of {vm.name} would pass {MAX_DISK_GB} GiB")
                args = {"disk": disk, "size_gb": size}
                await self.runner.call(op, vm, "resize_disk", undo_state=vm.state, args=args)
                vm.spec = vm.spec.with_disk_size(disk, size)
                await self.crew.store.update_vm(vm)
            await self.crew.store.update_vm(vm)
            return {
                "vcpus": vm.spec.vcpus,
                "memory_mb": vm.spec.memory_mb,
                "disk_gb": vm.spec.disk_gb,
                "disks": [dict(disk) for disk in vm.spec.disks],
            }

        return step
