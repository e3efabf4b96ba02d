"""Fencing: have a node kill a copy of a VM it should not run and forget it, leaving the
VM's shared disks and its record alone."""

from __future__ import annotations

import logging

from usher.ctrl.engine.crew import SYSTEM, Crew
from usher.ctrl.nodes import CommandFailed, NodeGone

log = logging.getLogger("usher.engine")


class Fencer:
    def __init__(self, crew: Crew) -> None:
        self.crew = crew

    async def fence(self, node: str, vm_id: str, reason: str) -> None:
        """Have ``node`` kill its copy of ``vm_id`` and forget it, leaving the VM's shared
        disks alone (they are the VM's, wherever it runs); the VM record is not touched.
        Raises NodeGone or CommandFailed if the node cannot be told or refuses."""
        crew = self.crew
        await crew.nodes.link(node).call(
            "fence", vm_id=vm_id, timeout=crew.settings.command_timeout
        )
        await crew.bus.emit(
            "fenced", vm_id=vm_id, node=node, principal=SYSTEM.name, data={"reason": reason}
        )

    async def fence_copy(
        self, vm_id: str, node: str, reason: str, recorded_node: str | None
    ) -> None:
        """:meth:`fence`, and if that fails, say so (``fence_failure``) rather than raise."""
        try:
            await self.fence(node, vm_id, reason)
        except (CommandFailed, NodeGone) as exc:
            log.error("cannot fence the copy of %s on %s: %s", vm_id, node, exc)
            await self.crew.bus.emit(
                "fence_failure",
                vm_id=vm_id,
                node=node,
                principal=SYSTEM.name,
                data={"error": str(exc), "recorded_node": recorded_node},
            )
