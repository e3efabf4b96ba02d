"""Settling a migration's incoming copy whose outcome is not known: the target runs it if the
whole guest arrived (its source let go of it), and drops it if not."""

from __future__ import annotations

from typing import Any

from usher.ctrl.engine.crew import SYSTEM, Crew
from usher.model import VM


async def settle_incoming(crew: Crew, vm: VM, node: str) -> dict[str, Any] | None:
    """Have ``node`` settle its incoming copy of ``vm``: the VM it now runs, or None if it
    dropped the copy. Raises ``CommandFailed`` if it has no incoming copy to settle and
    ``NodeGone`` if it cannot be asked."""
    answer = await crew.nodes.link(node).call(
        "settle_incoming", vm_id=vm.id, timeout=crew.settings.command_timeout
    )
    settled = answer.get("settled")
    await crew.bus.emit(
        "incoming_settled",
        vm_id=vm.id,
        node=node,
        principal=SYSTEM.name,
        data={"outcome": settled, "recorded_node": vm.node},
    )
    return answer.get("vm") if settled == "running" else None
