"""A live migration, as one VM's step: prepare the target, migrate from the source, finish
on the target; on failure the VM is recorded as its source reports it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import StepCancelled, StepFailed
from usher.ctrl.engine.images import ImageCache
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
            with contextlib.suppress(CommandFailed, NodeGone):
                await dst_link.call("abort_incoming", vm_id=vm.id, timeout=timeout)
            if isinstance(exc, asyncio.CancelledError):  # timed out: the runner settles it
                raise
            cancelled = self.runner.is_cancelled(op, vm.id)
            why = "cancelled" if cancelled else str(exc)
            await self._settle_after_failure(op, vm, src_link, before, why)
            if cancelled:
                raise StepCancelled(f"{vm.name}: migration to {target} cancelled") from exc
            raise StepFailed(f"{vm.name}: migration to {target} failed: {exc}") from exc
        details = {
            "from": source,
            "to": target,
            "uri": prepared["uri"],
            "total_ms": round((now() - started) * 1000, 1),  # all of it, as the user waits
            "migration_ms": result.get("total_ms"),  # the hypervisor's transfer alone
            "downtime_ms": result.get("downtime_ms"),
            "transferred_bytes": result.get("transferred_bytes"),
        }
        await crew.set_state(
            vm, VMState(info.get("state", before)), op=op, node=target, target_node=None
        )
        return details

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
