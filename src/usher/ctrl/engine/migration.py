"""A live migration, as one VM's step: prepare the target, migrate from the source, finish
on the target. If that breaks, the target settles its copy: it runs the VM if the whole
guest arrived (then the source let go of it, and the VM is recorded there), and drops it if
not (then the VM is recorded as its source reports it)."""

from __future__ import annotations

import asyncio
from typing import Any

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import StepCancelled, StepFailed
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.incoming import settle_incoming
from usher.ctrl.engine.runner import Runner
from usher.ctrl.nodes import CommandFailed, NodeGone, NodeLink
from usher.model import VM, Operation, VMState, now


class Migration:
    def __init__(self, crew: Crew, runner: Runner, images: ImageCache) -> None:
        self.crew = crew
        self.runner = runner
        self.images = images

    async def run(self, op: Operation, vm: VM, target: str) -> dict[str, Any]:
        """Move running or paused ``vm`` to ``target`` live. Postcondition: the record names
        the node the VM runs on (``target`` if it succeeded), or it is ``lost`` with
        ``target_node`` kept if the source no longer has it."""
        crew = self.crew
        before, source = vm.state, vm.node
        try:
            src_link = crew.nodes.link(source)
            dst_link = crew.nodes.link(target)
        except NodeGone as exc:
            raise StepFailed(f"{vm.name}: {exc}") from exc
        await crew.set_state(vm, VMState.MIGRATING, f"to {target}", op, target_node=target)
        timeout = crew.settings.migrate_timeout
        started = now()
        prepared: dict[str, Any] = {}
        result: dict[str, Any] = {}
        try:
            prepared = await dst_link.call(
                "prepare_incoming", vm_id=vm.id, guest=await self.images.guest(vm), timeout=timeout
            )
            result = await self.runner.command(
                op,
                vm,
                src_link,
                "migrate",
                timeout=timeout,
                args={"uri": prepared["uri"], "timeout": timeout},
            )
            info = await dst_link.call(
                "finish_incoming", vm_id=vm.id, timeout=timeout, observe=True
            )
        except (CommandFailed, NodeGone, asyncio.CancelledError) as exc:
            info = await self._settle_target(vm, target)
            if info is not None:  # it arrived whole: it runs there, however the rest went
                await crew.set_state(
                    vm,
                    VMState(info.get("state", before)),
                    f"arrived on {target}; the migration broke: {str(exc) or 'it timed out'}",
                    op,
                    node=target,
                    target_node=None,
                )
            if isinstance(exc, asyncio.CancelledError):  # timed out: the runner settles it
                raise
            if info is not None:
                return self._details(prepared, result, info, source, target, started)
            cancelled = self.runner.is_cancelled(op, vm.id)
            why = "cancelled" if cancelled else str(exc)
            await self._settle_after_failure(op, vm, src_link, before, why)
            if cancelled:
                raise StepCancelled(f"{vm.name}: migration to {target} cancelled") from exc
            raise StepFailed(f"{vm.name}: migration to {target} failed: {exc}") from exc
        await crew.set_state(
            vm, VMState(info.get("state", before)), op=op, node=target, target_node=None
        )
        return self._details(prepared, result, info, source, target, started)

    @staticmethod
    def _details(
        prepared: dict[str, Any],
        result: dict[str, Any],
        arrived: dict[str, Any],
        source: str | None,
        target: str,
        started: float,
    ) -> dict[str, Any]:
        stopped, resumed = result.get("extra", {}).get("stopped_at"), arrived.get("resumed_at")
        return {
            "from": source,
            "to": target,
            "uri": prepared.get("uri"),
            "total_ms": round((now() - started) * 1000, 1),  # all of it, as the user waits
            "migration_ms": result.get("total_ms"),  # the hypervisor's transfer alone
            "downtime_ms": result.get("downtime_ms"),  # the hypervisor's figure, the source's
            # the guest's pause, from its stop on the source to its run on the target (as the
            # two nodes' clocks stamped them)
            "paused_ms": round((resumed - stopped) * 1000, 1) if stopped and resumed else None,
            "transferred_bytes": result.get("transferred_bytes"),
        }

    async def _settle_target(self, vm: VM, target: str) -> dict[str, Any] | None:
        """After a broken migration: the VM as ``target`` runs it if the whole guest
        arrived there, None if the target dropped its copy or cannot be asked."""
        try:
            return await settle_incoming(self.crew, vm, target)
        except (CommandFailed, NodeGone):
            return None

    async def _settle_after_failure(
        self, op: Operation, vm: VM, src_link: NodeLink, before: VMState, reason: str
    ) -> None:
        """After a failed migration, record the VM as its source node reports it. If the
        source no longer has it (it may have sent all of it before the target went away),
        it is ``lost`` and stays the target's to claim: ``target_node`` is kept, and the
        target's next report settles it."""
        try:
            info = await src_link.call("info", vm_id=vm.id, timeout=30, observe=True)
        except (CommandFailed, NodeGone):
            await self.crew.set_state(vm, VMState.LOST, f"migration failed: {reason}", op)
            return
        state = VMState(info.get("state", before))
        await self.crew.set_state(vm, state, f"migration failed: {reason}", op, target_node=None)
