"""Reconciliation: what the nodes report (a hello's inventory, a VM that changed on its
own, a command's late outcome) against the records.

Only the node the record names, or the target of its migration, is believed about a VM: a
copy anywhere else is fenced there and the record stays. A report older than what is known
of the VM on that node (a command's reply came later) is dropped.

After a restore, for ``rejoin_grace`` seconds (:mod:`usher.ctrl.restore_window`), nodes are
also believed about what the restored records cannot know: an unrecorded VM that carries
Usher's meta (:mod:`.adoption`) is adopted, and a recorded VM its node does not have and
whose disks are gone from the shared storage was destroyed (its record is removed)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from usher.ctrl.engine.adoption import NotAdoptable, adopted_vm
from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.fencing import Fencer
from usher.ctrl.engine.incoming import settle_incoming
from usher.ctrl.nodes import CommandFailed, NodeGone
from usher.ctrl.restore_window import RestoreWindow
from usher.images import catalog
from usher.model import VM, VMState

log = logging.getLogger("usher.engine")
S = VMState


class Reconciler:
    def __init__(self, crew: Crew, fencer: Fencer) -> None:
        self.crew = crew
        self.fencer = fencer
        self._started = time.monotonic()
        self._dialled: set[str] = set()  # nodes that said hello since the controller started
        settings = crew.settings
        self.after_restore = RestoreWindow(settings.state_dir, settings.rejoin_grace)

    async def node_joined(
        self, name: str, domains: list[dict[str, Any]], number: int
    ) -> list[asyncio.Future[Any]]:
        """Reconcile records with what a (re)connected node really runs, as its hello (the
        message numbered ``number``) says; returns the reconciliations under way."""
        crew = self.crew
        self._dialled.add(name)
        reported = {d["id"]: d for d in domains}
        tasks = []
        recorded = await crew.store.vms_on(name)
        for vm in recorded:
            if vm.node != name:
                continue
            dom = reported.pop(vm.id, None)
            tasks.append(crew.spawn(self.reconcile(vm.id, name, dom, number), f"reconcile-{vm.id}"))
        for vm in recorded:
            if vm.node != name and vm.id not in reported:  # a migration's target without it
                tasks.append(
                    crew.spawn(self.reconcile(vm.id, name, None, number), f"target-{vm.id}")
                )
        for vm_id, dom in reported.items():
            tasks.append(crew.spawn(self.reconcile(vm_id, name, dom, number), f"adopt-{vm_id}"))
        return tasks

    async def node_lost(self, name: str, reason: str) -> None:
        for vm in await self.crew.store.vms_where(node=name):
            if vm.state not in (S.STOPPED, S.PENDING, S.LOST):
                self.crew.spawn(self._mark_lost(vm.id, name, reason), f"lost-{vm.id}")

    async def _mark_lost(self, vm_id: str, node: str, reason: str) -> None:
        async with self.crew.locks.hold(vm_id):
            vm = await self.crew.store.get_vm(vm_id)
            if vm is not None and vm.node == node and vm.state not in (S.STOPPED, S.LOST):
                await self.crew.set_state(vm, S.LOST, f"node {node} lost: {reason}")

    async def reconcile(
        self, vm_id: str, node: str, dom: dict[str, Any] | None, number: int
    ) -> None:
        """What ``node`` reports of ``vm_id`` (``dom``, None if nothing) in its message
        numbered ``number``, against the record.

        Under the VM's lock, so after any operation step on it. An incoming migration
        that no operation will finish is settled on its target first (run there if it
        arrived whole, dropped if not); then a copy on the target is adopted unless the
        recorded node still has the VM (then the copy is fenced).
        """
        crew = self.crew
        async with crew.locks.hold(vm_id):
            if crew.observations.is_stale(vm_id, node, number):
                log.info("dropped a stale report of %s from node %s", vm_id, node)
                return
            crew.observations.saw(vm_id, node, number)
            vm = await crew.store.get_vm(vm_id)
            if vm is None:
                if dom is not None:
                    await self._unrecorded(vm_id, node, dom)
                return
            if vm.node == node:
                await self._match_report(vm, node, dom)
            elif node == vm.target_node:
                await self._from_target(vm, node, dom)
            elif dom is not None:
                await self._claimed(vm, node, dom)

    async def _match_report(self, vm: VM, node: str, dom: dict[str, Any] | None) -> None:
        """The record places ``vm`` on ``node``: take the state the node reports. After a
        restore, a VM its node does not have whose disks are gone was destroyed since the
        backup: its record is removed."""
        if dom is not None:
            state, reason = VMState(dom["state"]), dom.get("reason")
        elif vm.state is not S.PENDING and await self._destroyed_since_backup(vm):
            await self._remove_destroyed(vm, node)
            return
        elif vm.state in (S.STOPPED, S.PENDING):
            return
        else:
            state, reason = S.LOST, f"node {node} does not report this VM"
        if state != vm.state:
            await self.crew.set_state(vm, state, reason)

    async def _from_target(self, vm: VM, node: str, dom: dict[str, Any] | None) -> None:
        """The target of ``vm``'s migration reports on it after the migration's operation
        ended without hearing how it went (a restart cut it short)."""
        set_state = self.crew.set_state
        if dom is not None and VMState(dom["state"]) is S.MIGRATING:
            dom = await self._settle_incoming(vm, node)
        if dom is None:  # the target has nothing of it: the VM stayed where it was
            await set_state(vm, vm.state, vm.state_reason, target_node=None)
        elif await self._recorded_node_has(vm):
            reason = f"stale copy: {vm.name} is recorded on node {vm.node}, which has it"
            await self.fencer.fence_copy(vm.id, node, reason, recorded_node=vm.node)
            await set_state(vm, vm.state, vm.state_reason, target_node=None)
        else:
            state = VMState(dom["state"])
            await set_state(vm, state, f"found on node {node}", node=node, target_node=None)

    async def _claimed(self, vm: VM, node: str, dom: dict[str, Any]) -> None:
        """``node`` reports a copy of ``vm``, which is recorded on another node and is not
        migrating to it. If the recorded node is connected and has no copy, this copy is
        the VM: it moved while the controller did not hear of it (a migration after the
        backup a restored controller runs on), and the record follows it; this is believed
        only in the window after a restore (a claim at any other time is a stale copy, or a
        node's word against the record's, and asking the recorded node would hold the VM's
        lock meanwhile). Otherwise,
        whatever the copy is (left from before the VM was lost and moved, or claimed by a
        confused or hostile node), it is fenced there and the record stays where it is
        (the recorded node is never fenced on another node's word)."""
        if self.after_restore.open() and await self._recorded_node_lacks(vm):
            reason = f"found on node {node}; its recorded node {vm.node} has no copy"
            log.warning("%s: %s", vm.name, reason)
            await self.crew.set_state(vm, VMState(dom["state"]), reason, node=node)
            return
        reason = (
            f"copy of {vm.name} on node {node}, which the record does not name "
            f"(it is recorded on {vm.node})"
        )
        await self.fencer.fence_copy(vm.id, node, reason, recorded_node=vm.node)

    async def _recorded_node_lacks(self, vm: VM) -> bool:
        """Whether the node the record places ``vm`` on is connected and says it has no
        copy. A recorded node that has not dialled since the controller started is waited
        for while it may still come back (``rejoin_grace``): after a restore all nodes dial
        at once, and the one a VM moved to may be heard before the one it left."""
        nodes = self.crew.nodes
        until = self._started + self.crew.settings.rejoin_grace
        while (
            vm.node is not None
            and vm.node not in self._dialled
            and vm.node not in nodes.links
            and time.monotonic() < until
        ):
            await asyncio.sleep(0.5)
        if vm.node is None or vm.node not in nodes.links:
            return False
        try:
            await nodes.link(vm.node).call(
                "info", vm_id=vm.id, timeout=self.crew.settings.command_timeout
            )
        except CommandFailed:
            return True
        except NodeGone:
            return False
        return False

    async def _unrecorded(self, vm_id: str, node: str, dom: dict[str, Any]) -> None:
        """``node`` has a VM without a record: a copy of a VM destroyed while the node was
        away (lost with it and moved, or its migration's outcome never heard) is fenced; one
        made after the backup a restored controller runs on is adopted (only within the
        window after the restore); any other is left alone (``unknown_vm``)."""
        if await self.crew.store.was_destroyed(vm_id):
            name = dom.get("name") or vm_id
            reason = f"stale copy: {name} was destroyed while node {node} was away"
            await self.fencer.fence_copy(vm_id, node, reason, recorded_node=None)
            return
        why_not = None
        if self.after_restore.open():
            why_not = await self._adopt(vm_id, node)
            if why_not is None:
                return
        data = {**dom, "not_adopted": why_not} if why_not else dom
        await self.crew.bus.emit("unknown_vm", vm_id=vm_id, node=node, data=data)

    async def _adopt(self, vm_id: str, node: str) -> str | None:
        """Record the VM ``node`` runs as ``vm_id`` from its node's full report (its spec and
        the meta the controller gave it) and fire ``vm_adopted``; None if it was adopted,
        otherwise why not."""
        crew = self.crew
        try:
            info = await crew.nodes.link(node).call(
                "info", vm_id=vm_id, timeout=crew.settings.command_timeout
            )
            vm = adopted_vm(info, node)
        except (CommandFailed, NodeGone, NotAdoptable) as exc:
            return f"not adopted: {exc}"
        if vm.id != vm_id:
            return f"not adopted: node {node} answered for {vm.id}"
        holder = await crew.store.get_vm(vm.name)
        if holder is not None:
            return f"not adopted: its name {vm.name} is taken by {holder.id}"
        await crew.store.add_vms([vm])
        log.warning(
            "adopted %s (%s) of %s from node %s after a restore", vm.name, vm.id, vm.owner, node
        )
        await crew.bus.emit(
            "vm_adopted",
            vm_id=vm.id,
            node=node,
            data={
                "name": vm.name,
                "owner": vm.owner,
                "cluster": vm.cluster,
                "state": vm.state.value,
                "addresses": vm.addresses,
            },
        )
        return None

    async def _destroyed_since_backup(self, vm: VM) -> bool:
        """Whether ``vm``, which its node (connected) has no copy of, was destroyed after the
        backup a restored controller runs on: only within the window after the restore, and
        only when the shared storage is there (``<storage>/vms``) but the VM's disks are not."""
        if not self.after_restore.open():
            return False
        storage = self.crew.settings.storage_dir
        vms, disks = storage / "vms", catalog.vm_dir(storage, vm.id)
        return await asyncio.to_thread(lambda: vms.is_dir() and not disks.exists())

    async def _remove_destroyed(self, vm: VM, node: str) -> None:
        """Remove the record of ``vm``, destroyed after the backup, as a destroy would."""
        reason = (
            f"destroyed after the backup: node {node} has no copy and its disks are gone from "
            "the shared storage"
        )
        log.warning("%s (%s): %s; its record is removed", vm.name, vm.id, reason)
        await self.crew.remove_vm(vm, reason=reason)

    async def _settle_incoming(self, vm: VM, node: str) -> dict[str, Any] | None:
        """Have ``node`` settle an incoming copy of ``vm`` an interrupted migration left:
        the VM it now runs, or None if it dropped the copy (or cannot be asked)."""
        crew = self.crew
        try:
            return await settle_incoming(crew, vm, node)
        except (CommandFailed, NodeGone) as exc:
            # no incoming copy to settle there any more (a late report): what is there now
            log.warning("cannot settle the incoming copy of %s on %s: %s", vm.name, node, exc)
            try:
                return await crew.nodes.link(node).call(
                    "info", vm_id=vm.id, timeout=crew.settings.command_timeout
                )
            except (CommandFailed, NodeGone):
                return None

    async def _recorded_node_has(self, vm: VM) -> bool:
        """Whether the node the record places ``vm`` on is up and has it."""
        nodes = self.crew.nodes
        if vm.node is None or vm.node not in nodes.links:
            return False
        try:
            await nodes.link(vm.node).call(
                "info", vm_id=vm.id, timeout=self.crew.settings.command_timeout
            )
        except (CommandFailed, NodeGone):
            return False
        return True

    async def vm_reported(
        self, node: str, vm_id: str, state: VMState, reason: str | None, number: int
    ) -> None:
        """An LNM saw a VM change state on its own (a guest powered off, a process died), or
        tells the outcome of a command that outlived its link (message ``number``):
        reconciled as a hello's report of that VM would be."""
        dom = {"id": vm_id, "state": state.value, "reason": reason}
        await self.reconcile(vm_id, node, dom, number)

    async def vm_gone(self, node: str, vm_id: str, number: int) -> None:
        """An LNM no longer has a VM whose command outlived its link (a destroy that ended
        after its controller went away, and after the node's hello had still listed it):
        reconciled as if that hello had left it out."""
        await self.reconcile(vm_id, node, None, number)
