"""What each kind of operation does to one VM: the steps the runner runs, VM by VM.

Each step checks the VM is still in a state its operation may start from, shows the
transitional state while it works, sends its command to the VM's node, and records the
state the node reports (or the honest state if it fails: as before, or ``lost``)."""

from __future__ import annotations

from typing import Any

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import StepFailed, StepLost
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.migration import Migration
from usher.ctrl.engine.placement import Moves, Placer
from usher.ctrl.engine.runner import Runner, Step
from usher.ctrl.engine.transitions import TRANSITIONS, check_still_admissible
from usher.ctrl.nodes import CommandFailed, NodeGone
from usher.model import VM, Operation, OpKind, OpRequest, VMState

S = VMState


def driver_args(kind: OpKind, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request kwargs a driver action understands: ``stop`` takes ``hard`` (no ACPI
    power-down first) and ``timeout`` (seconds to wait for the guest before a hard stop),
    both checked on admission (:func:`usher.ctrl.kwargs.check_core_kwargs`)."""
    if kind != OpKind.STOP:
        return {}
    args: dict[str, Any] = {"hard": kwargs.get("hard") is True}
    if kwargs.get("timeout") is not None:
        args["timeout"] = float(kwargs["timeout"])
    return args


class Steps:
    def __init__(self, crew: Crew, runner: Runner, images: ImageCache, placer: Placer) -> None:
        self.crew = crew
        self.runner = runner
        self.images = images
        self.placer = placer
        self.migration = Migration(crew, runner, images)

    def for_request(self, req: OpRequest, moves: Moves | None = None) -> Step:
        """The step of an action on existing VMs (``moves``: where a migration's VMs go)."""
        kind = req.kind
        if kind == OpKind.START:
            return self.start(req)
        if kind == OpKind.CYCLE:
            return self.cycle(req)
        if kind == OpKind.DESTROY:
            return self.destroy
        if kind == OpKind.MIGRATE:
            return self.migrate(req, moves or Moves())
        return self.simple(kind, driver_args(kind, req.kwargs))

    def start(self, req: OpRequest) -> Step:
        """Boot a VM where it is, or first move it cold (its disks are on shared storage) to
        ``req.target_node`` or, if its node is down, to a node the scheduler picks."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            crew = self.crew
            before = vm.state if vm.state != S.PENDING else S.ERROR
            moved: dict[str, Any] = {}
            target = req.target_node
            if target is None and vm.node not in crew.nodes.links and vm.state != S.PENDING:
                target = await self.placer.pick_target(req, vm)
            if target is not None and target != vm.node:
                moved = {"from": vm.node, "to": target, "cold": True}
            await crew.set_state(vm, S.STARTING, op=op, **({"node": target} if moved else {}))
            guest = await self.images.guest(vm)
            try:
                info = await self.runner.call(op, vm, "start", undo_state=before, guest=guest)
            except StepLost:
                raise  # the target may have booted it: it is lost there
            except StepFailed:
                if moved:  # the target refused it (say, its disk lease is held): it never left
                    await crew.set_state(vm, vm.state, vm.state_reason, op, node=moved["from"])
                raise
            await crew.set_state(vm, VMState(info.get("state", S.RUNNING)), op=op)
            return moved or None

        return step

    def cycle(self, req: OpRequest) -> Step:
        """Hard stop and boot again where the VM is; one whose node is down (``lost``) boots
        on another node, as a start would."""
        start = self.start(req)

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            if vm.node not in self.crew.nodes.links:
                return await start(op, vm)
            check_still_admissible(op, vm)
            before = vm.state
            await self.crew.set_state(vm, S.STARTING, op=op)
            guest = await self.images.guest(vm)
            info = await self.runner.call(op, vm, "cycle", undo_state=before, guest=guest)
            await self.crew.set_state(vm, VMState(info.get("state", S.RUNNING)), op=op)
            return None

        return step

    def simple(self, kind: OpKind, args: dict[str, Any]) -> Step:
        """Stop, pause, resume, reboot: one command where the VM is."""
        _, during, after = TRANSITIONS[kind]
        assert after is not None

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            before = vm.state
            if during is not None:
                await self.crew.set_state(vm, during, op=op)
            await self.runner.call(op, vm, kind.value, undo_state=before, args=args)
            await self.crew.set_state(vm, after, op=op)
            return None

        return step

    async def destroy(self, op: Operation, vm: VM) -> dict[str, Any] | None:
        """Destroy the VM on its node (disks too), then its record; the record stays if
        the node cannot be told."""
        crew = self.crew
        if vm.node is not None:
            try:
                await crew.nodes.link(vm.node).call(
                    "destroy", vm_id=vm.id, timeout=crew.settings.command_timeout
                )
            except (CommandFailed, NodeGone) as exc:
                raise StepFailed(f"{vm.name}: {exc}; the VM record is kept") from exc
        await crew.remove_vm(vm, op)
        return None

    def migrate(self, req: OpRequest, moves: Moves) -> Step:
        """Live-migrate to where the request placed the VM (placed again only if that node
        has gone since)."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            target = await self._target(req, moves, vm)
            if target == vm.node:
                raise StepFailed(f"{vm.name} is already on node {target}")
            return await self.migration.run(op, vm, target)

        return step

    def evacuate(self, req: OpRequest, node: str, moves: Moves) -> Step:
        """Move a VM off ``node``: running and paused ones live, stopped ones cold (their
        record moves; the disks are on shared storage)."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            if vm.node != node:
                return {"skipped": f"no longer on node {node}"}
            if vm.state in (S.RUNNING, S.PAUSED):
                return await self.migration.run(op, vm, await self._target(req, moves, vm))
            if vm.state != S.STOPPED:
                raise StepFailed(f"cannot evacuate {vm.name}: it is {vm.state.value}")
            target = await self._target(req, moves, vm)
            await self.crew.set_state(vm, S.STOPPED, f"moved cold off node {node}", op, node=target)
            return {"from": node, "to": target, "cold": True}

        return step

    async def _target(self, req: OpRequest, moves: Moves, vm: VM) -> str:
        """Where the request placed ``vm``; if that node is no longer connected (and the
        request did not name it), a node the scheduler picks now."""
        if req.target_node is not None:
            return req.target_node
        placed = moves.targets.get(vm.id)
        if placed is not None and placed in self.crew.nodes.links:
            return placed
        self.placer.release(vm.id)
        return await self.placer.pick_target(req, vm)
