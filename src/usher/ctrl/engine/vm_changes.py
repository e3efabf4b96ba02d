"""Changes to a VM's record that need no operation: its name and its tags."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError
from usher.ctrl.locks import Busy
from usher.model import VM, Principal, VMChange, now

BUSY_WAIT = 5.0
"""Seconds a change waits for a VM's running step to end before it is refused (409)."""


@contextlib.asynccontextmanager
async def _held(lock: asyncio.Lock | None) -> AsyncIterator[None]:
    """Hold ``lock`` (if any) for a change, or :class:`Busy` after :data:`BUSY_WAIT`."""
    if lock is None:
        yield
        return
    try:
        await asyncio.wait_for(lock.acquire(), BUSY_WAIT)
    except TimeoutError:
        raise Busy("names") from None
    try:
        yield
    finally:
        lock.release()


class VMChanges:
    def __init__(self, crew: Crew) -> None:
        self.crew = crew

    async def change(self, principal: Principal, vm_id: str, body: VMChange) -> VM:
        """Rename ``vm_id`` and/or change its tags, under its lock (no step of an operation
        runs on it meanwhile, and none writes an older copy over the change), a new name
        also under the lock creates decide names with (two VMs never get one name); each
        waited for :data:`BUSY_WAIT` at most. Emits ``vm_change``."""
        crew = self.crew
        names_lock = crew.create_lock if body.name is not None else None
        try:
            async with crew.locks.hold(vm_id, timeout=BUSY_WAIT), _held(names_lock):
                vm = await crew.store.get_vm(vm_id)
                if vm is None:
                    raise RequestError(404, f"unknown VM {vm_id!r}")
                old_name, old_tags = vm.name, list(vm.tags)
                if body.name is not None and body.name != vm.name:
                    if await crew.store.names_taken([body.name]):
                        raise RequestError(
                            409, f"VM name {body.name!r} is taken; nothing was changed"
                        )
                    vm.name = body.name
                try:
                    vm.tags = body.tags_of(vm)
                except ValueError as exc:
                    raise RequestError(422, f"{exc}; nothing was changed") from exc
                if (vm.name, vm.tags) == (old_name, old_tags):
                    return vm
                vm.updated_at = now()
                await crew.store.update_vm(vm)
        except Busy:
            raise RequestError(
                409,
                f"VM {vm_id} is busy with an operation's step (or VMs are being created) for "
                f"more than {BUSY_WAIT:g} s; try again once it ends (ush ops --vm)",
            ) from None
        await crew.bus.emit(
            "vm_change",
            vm_id=vm.id,
            node=vm.node,
            principal=principal.name,
            data={
                "name": vm.name,
                "old_name": old_name if old_name != vm.name else None,
                "tags": vm.tags,
            },
        )
        return vm
