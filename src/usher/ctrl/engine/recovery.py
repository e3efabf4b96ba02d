"""After a controller restart: operations that were running failed, and VMs left in a
transition no operation finishes are settled once their nodes had time to report."""

from __future__ import annotations

import asyncio

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.runner import Runner
from usher.ctrl.engine.transitions import TRANSITIONAL
from usher.model import OpStatus, VMState


class Recovery:
    def __init__(self, crew: Crew, runner: Runner) -> None:
        self.crew = crew
        self.runner = runner

    async def recover(self) -> None:
        """Operations that were running when the controller died failed."""
        for op in await self.crew.store.unfinished_ops():
            await self.crew.end_unrun(
                op,
                OpStatus.FAILED,
                "the controller restarted while this operation ran; VM states are re-read "
                "from their nodes",
                new=False,
            )
        self.crew.spawn(self._settle_after_restart(), "settle-after-restart")

    async def _settle_after_restart(self) -> None:
        """``node_timeout`` after a restart, VMs still in a transition that no operation is
        working on are settled: ``lost`` if their node has not come back, ``error`` if it has
        but did not report them settled. Nothing stays transitional forever."""
        grace = self.crew.settings.node_timeout
        await asyncio.sleep(grace)
        for vm in await self.crew.store.vms_where():
            if vm.state in TRANSITIONAL:
                self.crew.spawn(self._settle_stranded(vm.id, grace), f"stranded-{vm.id}")

    async def _settle_stranded(self, vm_id: str, grace: float) -> None:
        if any(vm_id in op.targets for op in self.runner.live.values()):
            return
        crew = self.crew
        async with crew.locks.hold(vm_id):
            vm = await crew.store.get_vm(vm_id)
            if vm is None or vm.state not in TRANSITIONAL:
                return
            was = vm.state.value
            if vm.node in crew.nodes.links:
                state = VMState.ERROR
                reason = f"left {was} by a controller restart; node {vm.node} did not settle it"
            else:
                state = VMState.LOST
                reason = (
                    f"left {was} by a controller restart; node {vm.node} did not come back "
                    f"within {grace:g} s"
                )
            await crew.set_state(vm, state, reason)
