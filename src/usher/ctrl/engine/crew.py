"""What every phase of the engine works with: the controller's parts, the per-VM locks, the
background tasks, and the one way a VM's recorded state changes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from usher.ctrl.config import Settings
from usher.ctrl.events import EventBus
from usher.ctrl.locks import KeyedLocks
from usher.ctrl.nodes import NodeRegistry
from usher.ctrl.plugins import PluginHost
from usher.ctrl.store import Store
from usher.model import VM, Operation, OpStatus, Principal, VMState, now

SYSTEM = Principal(name="system", roles=["admin"])
"""Who plugins act as through :meth:`usher.ctrl.context.PluginContext.submit`."""


class Crew:
    """The controller's parts as the engine's phases share them.

    Steps on the same VM never overlap: everything that changes a VM record holds
    ``locks.hold(vm_id)``; ``placement_lock`` makes choosing nodes and promising them one
    decision; ``create_lock`` admits creates one at a time (see ``Engine.create``)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: EventBus,
        plugins: PluginHost,
        nodes: NodeRegistry,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.plugins = plugins
        self.nodes = nodes
        self.observations = nodes.observations
        self.locks = KeyedLocks()
        self.placement_lock = asyncio.Lock()
        self.create_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Future[Any]:
        """Run ``coro`` in the background until it ends or :meth:`close` cancels it."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def set_state(
        self,
        vm: VM,
        state: VMState,
        reason: str | None = None,
        op: Operation | None = None,
        **changes: Any,
    ) -> None:
        """Record ``vm`` in ``state`` (with other fields ``changes``) and fire
        ``state_change`` if anything changed."""
        old = vm.state
        vm.state = state
        vm.state_reason = reason
        vm.updated_at = now()
        for key, value in changes.items():
            setattr(vm, key, value)
        await self.store.update_vm(vm)
        if old != state or changes:
            await self.bus.emit(
                "state_change",
                vm_id=vm.id,
                node=vm.node,
                operation_id=op.id if op else None,
                data={"from": old.value, "to": state.value, "reason": reason, **changes},
            )

    async def remove_vm(
        self, vm: VM, op: Operation | None = None, reason: str | None = None
    ) -> None:
        """Delete the record of ``vm`` (destroyed) and fire ``unregister``, on which plugins
        release what it held (addresses, names)."""
        await self.store.delete_vm(vm)
        self.observations.forget(vm.id)
        data: dict[str, Any] = {"name": vm.name, "cluster": vm.cluster}
        if reason is not None:
            data["reason"] = reason
        await self.bus.emit(
            "unregister", vm_id=vm.id, node=vm.node, operation_id=op.id if op else None, data=data
        )

    async def end_unrun(self, op: Operation, status: OpStatus, error: str, new: bool) -> None:
        """Record an operation that ends without running (refused, or cut short by a
        restart) and fire its ``<op>_failure`` event."""
        op.status, op.error, op.finished_at = status, error, now()
        await (self.store.add_op(op) if new else self.store.update_op(op))
        await self.bus.emit(
            f"{op.kind.value}_failure",
            operation_id=op.id,
            principal=op.principal,
            data={"error": error, "vetoed": status == OpStatus.VETOED},
        )
