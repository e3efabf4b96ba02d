"""Snapshot operations: ``snapshot`` (take one), ``snapshot_revert`` and ``snapshot_delete``.

Each is an operation on one VM (``kwargs.snapshot`` names the snapshot) through the same
phases as any action, so plugins (quotas, audit) see it. The VM record keeps the snapshots
its node reported after the last snapshot operation (:attr:`usher.model.VM.snapshots`): a
listing needs no node, quotas read sizes from the records, and a request naming a snapshot
the VM does not have is refused before anything runs. A snapshot to be taken carries what it
would hold (``kwargs.snapshot_bytes``, the node's :meth:`~usher.vmm.base.Driver.disk_usage`),
so a quota can refuse it beforehand."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from usher.bounds import MAX_SNAPSHOTS
from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.engine.runner import Runner, Step
from usher.ctrl.engine.transitions import check_still_admissible
from usher.ctrl.nodes import CommandFailed, NodeGone
from usher.model import VM, Operation, OpKind, OpRequest, Snapshot, now

COMMANDS = {
    OpKind.SNAPSHOT: "snapshot_create",
    OpKind.SNAPSHOT_REVERT: "snapshot_revert",
    OpKind.SNAPSHOT_DELETE: "snapshot_delete",
}
"""The node command of each snapshot operation."""
USAGE_TIMEOUT = 60.0
"""Seconds a node may take to tell what a VM's disks hold."""


class Snapshots:
    def __init__(self, crew: Crew, runner: Runner) -> None:
        self.crew = crew
        self.runner = runner

    async def prepare(self, kind: OpKind, vm: VM, name: str) -> dict[str, Any]:
        """Check snapshot ``name`` against ``vm``'s record (409 for one taken already or
        too many; 404 for one to revert to or delete that it does not have); the kwargs the
        operation carries."""
        known = any(snap.name == name for snap in vm.snapshots)
        if kind is not OpKind.SNAPSHOT:
            if not known:
                raise RequestError(404, f"{vm.name} has no snapshot {name!r}")
            return {"snapshot": name}
        if known:
            raise RequestError(409, f"{vm.name} has a snapshot {name!r} already")
        if len(vm.snapshots) >= MAX_SNAPSHOTS:
            raise RequestError(
                409, f"{vm.name} has {len(vm.snapshots)} snapshots, the most a VM may have"
            )
        return {"snapshot": name, "snapshot_bytes": await self.disk_usage(vm)}

    async def disk_usage(self, vm: VM) -> int:
        """What ``vm``'s disks hold now, as its node tells (409 if it cannot)."""
        try:
            answer = await self.crew.nodes.link(vm.node).call(
                "disk_usage", vm_id=vm.id, timeout=USAGE_TIMEOUT
            )
        except (CommandFailed, NodeGone) as exc:
            raise RequestError(409, f"cannot snapshot {vm.name}: {exc}") from exc
        usage = answer.get("bytes")
        return usage if isinstance(usage, int) and usage >= 0 else 0

    def step(self, req: OpRequest) -> Step:
        """The step of a snapshot operation: the node's command, then the snapshots the node
        reports recorded."""
        kind = req.kind
        command = COMMANDS[kind]

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            name = req.kwargs.get("snapshot")
            if not isinstance(name, str):
                raise StepFailed(f"{vm.name}: the request names no snapshot")
            answer = await self.runner.call(
                op, vm, command, undo_state=vm.state, args={"name": name}
            )
            snapshots = await self.record(vm, answer)
            details: dict[str, Any] = {"snapshot": name}
            if kind is OpKind.SNAPSHOT:
                taken = [snap for snap in snapshots if snap.name == name]
                details["size_bytes"] = taken[0].size_bytes if taken else 0
            return details

        return step

    async def record(self, vm: VM, answer: dict[str, Any]) -> list[Snapshot]:
        """Record the snapshots a node reported for ``vm`` (a report that does not parse
        fails the step; what the node did stands)."""
        try:
            snapshots = [Snapshot.model_validate(snap) for snap in answer["snapshots"]]
        except (KeyError, TypeError, ValidationError) as exc:
            raise StepFailed(f"{vm.name}: its node reported snapshots that do not parse") from exc
        vm.snapshots = snapshots[-MAX_SNAPSHOTS:]
        vm.updated_at = now()
        await self.crew.store.update_vm(vm)
        return vm.snapshots
