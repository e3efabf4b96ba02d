"""The engine: every VM operation passes through the same phases.

admission (resolve targets → authorize → check states and capabilities → ``request`` and
``<op>_request`` hooks, which may veto or change what they may) → placement (start,
migrate: every VM of the request placed in one decision, all or none) → record the
operation → the runner dispatches one step per VM to the LNMs → record each outcome →
``<op>`` or ``<op>_failure``. Reconciliation keeps the records honest with what the nodes
report between operations.

Steps on the same VM never overlap (a lock per VM); steps on different VMs run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from usher.ctrl.config import Settings
from usher.ctrl.engine.addresses import Addresses
from usher.ctrl.engine.admission import Admission
from usher.ctrl.engine.copies import Copies, Origin, clone_body
from usher.ctrl.engine.crew import SYSTEM, Crew
from usher.ctrl.engine.errors import RequestError
from usher.ctrl.engine.fencing import Fencer
from usher.ctrl.engine.guest_seeds import GuestSeeds
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.placement import Moves, Placer
from usher.ctrl.engine.reconcile import Reconciler
from usher.ctrl.engine.recovery import Recovery
from usher.ctrl.engine.resize import Resizes
from usher.ctrl.engine.runner import Runner, Step
from usher.ctrl.engine.snapshots import Snapshots
from usher.ctrl.engine.steps import Steps
from usher.ctrl.engine.transitions import OWN_ROUTES
from usher.ctrl.engine.vm_changes import VMChanges
from usher.ctrl.events import EventBus
from usher.ctrl.nodes import CommandFailed, NodeGone, NodeRegistry
from usher.ctrl.plugins import PluginHost
from usher.ctrl.store import Store
from usher.guest_config import account_name
from usher.model import (
    VM,
    CloneVM,
    ConsoleChunk,
    CreateVMs,
    Image,
    ImageFromVM,
    Operation,
    OpKind,
    OpRequest,
    Plan,
    PlannedVM,
    Principal,
    ResizeVM,
    Scope,
    SSHAccess,
    VMAction,
    VMChange,
    VMState,
    new_id,
)


class Engine:
    """Coordinates the phases; each lives in its own module of this package."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: EventBus,
        plugins: PluginHost,
        nodes: NodeRegistry,
    ) -> None:
        self.crew = crew = Crew(settings, store, bus, plugins, nodes)
        self.images = ImageCache(settings.storage_dir, GuestSeeds(plugins))
        self.admission = Admission(crew, self.images)
        self.addresses = Addresses(self.admission)
        self.placer = Placer(crew)
        self.runner = Runner(crew)
        self.steps = Steps(crew, self.runner, self.images, self.placer)
        self.resizes = Resizes(crew, self.runner, self.images, self.placer)
        self.snapshots = Snapshots(crew, self.runner)
        self.copies = Copies(crew, self.runner, self.images, self.steps)
        self.changing: set[str] = set()
        """VMs with a snapshot or a resize admitted and not over: one at a time each, so what
        the snapshot cap and the quotas checked on admission still holds when it runs."""
        self.fencer = Fencer(crew)
        self.reconciler = Reconciler(crew, self.fencer)
        self.recovery = Recovery(crew, self.runner)
        self.vm_changes = VMChanges(crew)
        self.live = self.runner.live
        plugins.ctx.attach(self, plugins)

    # --- the controller's life ------------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: operations that were running when the controller died failed."""
        await self.recovery.recover()

    async def close(self) -> None:
        await self.crew.close()

    # --- reading ------------------------------------------------------------------------

    async def get_op(self, op_id: str) -> Operation:
        return await self.runner.get_op(op_id)

    async def wait(self, op_id: str, timeout: float) -> Operation:
        return await self.runner.wait(op_id, timeout)

    async def cancel(self, op_id: str) -> Operation:
        return await self.runner.cancel(op_id)

    async def scope(self, principal: Principal) -> Scope | None:
        return await self.admission.scope(principal)

    async def image(self, name: str) -> Image:
        """The catalogue entry of image ``name`` (cached briefly); 404 if there is none."""
        return await self.images.image(name)

    async def console(self, vm: VM, offset: int) -> ConsoleChunk:
        """Serial console output of ``vm`` from byte ``offset``, read by its node's driver."""
        try:
            answer = await self.crew.nodes.link(vm.node).call(
                "console", vm_id=vm.id, args={"offset": offset}, timeout=30
            )
        except (CommandFailed, NodeGone) as exc:
            raise RequestError(409, f"no console for {vm.name}: {exc}") from exc
        return ConsoleChunk(
            vm_id=vm.id,
            offset=offset,
            next=int(answer.get("next", offset)),
            data=str(answer.get("data", "")),
        )

    async def ssh_access(self, vm: VM, principal: Principal) -> SSHAccess:
        """Where ``principal`` logs into ``vm`` with SSH: its first address (from IP
        management), or the port its node forwards to the guest's port 22."""
        user = account_name(principal.name)
        if vm.addresses:
            return SSHAccess(vm_id=vm.id, user=user, host=vm.addresses[0], port=22, via="address")
        if vm.state != VMState.RUNNING:
            raise RequestError(409, f"{vm.name} is {vm.state.value}: start it to log in")
        try:
            info = await self.crew.nodes.link(vm.node).call("info", vm_id=vm.id, timeout=30)
        except (CommandFailed, NodeGone) as exc:
            raise RequestError(409, f"cannot reach {vm.name}: {exc}") from exc
        endpoint = str((info.get("endpoints") or {}).get("ssh") or "")
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise RequestError(
                409,
                f"{vm.name} has no address and its node forwards no SSH port to it "
                "(its image may not run cloud-init)",
            )
        host = host.strip("[]")
        return SSHAccess(vm_id=vm.id, user=user, host=host, port=int(port), via="forward")

    async def change_vm(self, principal: Principal, vm_id: str, body: VMChange) -> VM:
        """Rename a VM and/or change its tags (no operation: see :mod:`.vm_changes`)."""
        return await self.vm_changes.change(principal, vm_id, body)

    # --- asking for operations ----------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        body: CreateVMs,
        client: str | None,
        origin: Origin | None = None,
    ) -> Operation:
        """Start new VMs (the ``start`` operation with no existing targets), or with an
        ``origin``, the clone of a VM (the ``clone`` operation, see :mod:`.copies`).

        Creates are admitted one at a time, from their request hooks to their VMs' records:
        what a hook checks against the records (a quota, a cluster's owner) still holds
        when the VMs are recorded, so two creates at once get what one after the other
        would (the operations then run concurrently)."""
        crew = self.crew
        kind = OpKind.START if origin is None else OpKind.CLONE
        async with self.admission.refusals(kind, principal, client, body):
            if origin is not None:
                await self.copies.admit_clone(principal, origin)
            async with crew.create_lock:
                req, op = await self.admission.create(principal, body, client, False, kind)
                async with crew.placement_lock:
                    vms = await self._new_vms(req, body, op)
            op.targets = [vm.id for vm in vms]
            await crew.store.add_op(op)
        for vm in vms:
            await crew.bus.emit(
                "register",
                vm_id=vm.id,
                node=vm.node,
                operation_id=op.id,
                principal=principal.name,
                data={"name": vm.name, "cluster": vm.cluster, "addresses": vm.addresses},
            )
        timeout = self.runner.step_timeout(kind, req.kwargs)
        step = self.steps.start(req) if origin is None else self.copies.clone_step(req, origin)
        if origin is not None:
            op.result = {"source": origin.source.id, "snapshot": origin.snapshot}
        self.runner.launch(op, step, timeout)
        return op.model_copy(deep=True)

    async def _new_vms(self, req: OpRequest, body: CreateVMs, op: Operation) -> list[VM]:
        """Name, place, address and record the new VMs of ``req`` (under the placement
        lock: the nodes chosen are taken before anyone else chooses)."""
        assert req.spec is not None
        names = await self.admission.new_names(req, body)
        nodes = await self.placer.new_vms(req, [req.spec] * len(names))
        vms = [
            VM(
                id=new_id("vm"),
                name=name,
                owner=req.principal.name,
                cluster=req.cluster,
                spec=req.spec,
                node=node,
                state=VMState.PENDING,
                tags=body.tags,
            )
            for name, node in zip(names, nodes, strict=True)
        ]
        await self.addresses.assign(op, req, vms)
        await self.crew.store.add_vms(vms)
        return vms

    async def plan_start(self, principal: Principal, body: CreateVMs, client: str | None) -> Plan:
        """Where new VMs would go, and why other nodes would not do: nothing is changed."""
        req, _op = await self.admission.create(principal, body, client, True)
        assert req.spec is not None
        async with self.crew.placement_lock:
            names = await self.admission.new_names(req, body)
            placement = await self.placer.ask(req, [req.spec] * len(names))
        nodes: list[str | None] = list(placement.nodes) if not placement.error else []
        nodes += [None] * (len(names) - len(nodes))
        return Plan(
            vms=[PlannedVM(name=n, node=node) for n, node in zip(names, nodes, strict=True)],
            rejected=placement.rejected,
            error=placement.error,
        )

    async def plan_migrate(self, principal: Principal, body: VMAction, client: str | None) -> Plan:
        """Where VMs would migrate to, as the same request would place them: nothing is
        changed."""
        vms, req, _op = await self.admission.action(principal, OpKind.MIGRATE, body, client, True)
        async with self.crew.placement_lock:
            moves = await self.placer.moves(req, vms, req.target_node)
        return moves.plan(vms)

    async def act(
        self, principal: Principal, kind: OpKind, body: VMAction, client: str | None
    ) -> Operation:
        """Run ``kind`` on existing VMs named in ``body`` (ids, names and/or a cluster)."""
        if kind in OWN_ROUTES:
            raise RequestError(
                422, f"{kind.value} is not an action on many VMs: see /v1/vms/{{vm}}/…"
            )
        async with self.admission.refusals(kind, principal, client, body):
            vms, req, op = await self.admission.action(principal, kind, body, client, False)
            moves = await self._place_moves(req, vms) if kind == OpKind.MIGRATE else None
        op.targets = list(req.vm_ids)
        started = await self._start(op, req, self.steps.for_request(req, moves), moves)
        for vm_id in op.result.get("skipped", {}):
            self.crew.spawn(self._want(vm_id, kind), f"want-{vm_id}")
        return started

    # --- snapshots and copies (see .snapshots and .copies) -------------------------------

    async def snapshot(
        self,
        principal: Principal,
        vm: VM,
        kind: OpKind,
        name: str,
        kwargs: dict[str, Any],
        client: str | None,
    ) -> Operation:
        """Take (``snapshot``), revert to (``snapshot_revert``) or delete
        (``snapshot_delete``) snapshot ``name`` of ``vm``."""
        body = VMAction(vms=[vm.id], kwargs=dict(kwargs), strict=True)
        claim = kind is OpKind.SNAPSHOT
        async with self.admission.refusals(kind, principal, client, body), self._change(vm, claim):
            body.kwargs.update(await self.snapshots.prepare(kind, vm, name))
            _vms, req, op = await self.admission.action(principal, kind, body, client, False)
        op.targets = list(req.vm_ids)
        after = self.changing.discard if claim else None
        return await self._start(op, req, self.snapshots.step(req), None, after)

    @contextlib.asynccontextmanager
    async def _change(self, vm: VM, claim: bool) -> AsyncIterator[None]:
        """Admit a snapshot or resize of ``vm`` (``claim``) under the create lock, one per VM
        at a time (409 while another runs): the VM stays claimed until its operation is over
        (``changing``), or is let go at once if it is refused."""
        if not claim:
            yield
            return
        async with self.crew.create_lock:
            if vm.id in self.changing:
                raise RequestError(
                    409, f"{vm.name} has a snapshot or resize under way; ask again when it ends"
                )
            self.changing.add(vm.id)
            try:
                yield
            except BaseException:
                self.changing.discard(vm.id)
                raise

    async def clone(
        self, principal: Principal, source: VM, body: CloneVM, client: str | None
    ) -> Operation:
        """A new VM whose disks are a copy of ``source``'s (stopped) or of its snapshot."""
        origin = Origin(source, body.snapshot)
        create = clone_body(origin, body.name, body.node, body.kwargs)
        return await self.create(principal, create, client, origin)

    async def image_from_vm(
        self, principal: Principal, vm: VM, body: ImageFromVM, client: str | None
    ) -> Operation:
        """Publish ``vm``'s root disk (stopped) or its snapshot's as catalogue image."""
        kwargs = {**body.kwargs, "image_name": body.name, "snapshot": body.snapshot}
        action = VMAction(vms=[vm.id], kwargs=kwargs, strict=True)
        kind = OpKind.IMAGE_FROM_VM
        async with self.admission.refusals(kind, principal, client, action):
            await self.copies.admit_image(principal, vm, body.name, body.snapshot)
            _vms, req, op = await self.admission.action(principal, kind, action, client, False)
        op.targets = list(req.vm_ids)
        return await self._start(op, req, self.copies.image_step(req, body.description), None)

    async def _want(self, vm_id: str, kind: OpKind) -> None:
        """A VM skipped by ``kind`` (already there) is wanted there from now on."""
        async with self.crew.locks.hold(vm_id):
            vm = await self.crew.store.get_vm(vm_id)
            if vm is not None:
                await self.runner.want(vm, kind)

    async def evacuate(self, principal: Principal, node: str) -> Operation:
        """Move every VM off ``node``: running and paused ones live, stopped ones cold (their
        record moves; the disks are on shared storage), each where the scheduler puts it,
        all placed before the answer. The answer is a ``migrate`` operation over those VMs;
        ``result.evacuate`` names the node."""
        if self.crew.nodes.get(node) is None:
            raise RequestError(404, f"unknown node {node!r}")
        vms = await self.crew.store.vms_where(node=node)
        req = OpRequest(
            kind=OpKind.MIGRATE,
            principal=principal,
            vm_ids=[vm.id for vm in vms],
            kwargs={"evacuate": node},
        )
        op = await self.admission.system_request(req)
        self.admission.check_target_node(req, vms)
        movable = (VMState.RUNNING, VMState.PAUSED, VMState.STOPPED)  # others fail their step
        moves = await self._place_moves(req, [vm for vm in vms if vm.state in movable])
        op.targets = list(req.vm_ids)
        op.result = {"evacuate": node}
        return await self._start(op, req, self.steps.evacuate(req, node, moves), moves)

    async def _place_moves(self, req: OpRequest, vms: list[VM]) -> Moves:
        """Place every VM of a migration in one decision and promise the nodes; 409 (and
        nothing changed) if any VM has nowhere to go."""
        async with self.crew.placement_lock:
            moving = [vm.name for vm in vms if self.placer.is_promised(vm.id)]
            if moving:
                raise RequestError(
                    409,
                    f"{', '.join(moving[:10])} already being moved by another operation; "
                    "nothing was changed",
                )
            moves = await self.placer.moves(req, vms, req.target_node)
            if moves.error:
                raise RequestError(
                    409, f"{moves.error}; nothing was changed", {"rejected": moves.rejected}
                )
            self.placer.promise(vms, moves)
        return moves

    async def _start(
        self,
        op: Operation,
        req: OpRequest,
        step: Step,
        moves: Moves | None,
        after: Callable[[str], None] | None = None,
    ) -> Operation:
        """Record ``op`` and launch its steps (a moved VM's promise ends with its step;
        ``after(vm_id)`` is called when a VM's part is over, or at once if ``op`` cannot be
        recorded)."""
        if moves is not None:
            after = self.placer.release
        try:
            await self.crew.store.add_op(op)
        except BaseException:
            for vm_id in op.targets if after is not None else ():
                after(vm_id)
            raise
        timeout = self.runner.step_timeout(req.kind, req.kwargs)
        self.runner.launch(op, step, timeout, after)
        return op.model_copy(deep=True)

    async def resize(
        self, principal: Principal, vm: VM, body: ResizeVM, client: str | None
    ) -> Operation:
        """Change ``vm``'s vCPUs and memory (stopped) and grow its disks (see
        :mod:`.resize`); the request hooks see the spec as it would become."""
        kind = OpKind.RESIZE
        asked = body.model_dump(mode="json", exclude={"kwargs"}, exclude_none=True)
        action = VMAction(vms=[vm.id], kwargs={**body.kwargs, "resize": asked}, strict=True)
        async with self.admission.refusals(kind, principal, client, action), self._change(vm, True):
            spec = await self.resizes.check(vm, body)
            _vms, req, op = await self.admission.action(
                principal, kind, action, client, False, spec
            )
            plan = await self.resizes.plan(vm, req)
            await self.resizes.check_room(req, vm)
        op.targets = list(req.vm_ids)
        return await self._start(op, req, self.resizes.step(plan), None, self.changing.discard)

    # --- for plugins (through PluginContext) -------------------------------------------

    async def submit(
        self,
        kind: OpKind,
        vms: list[str],
        *,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
        strict: bool = False,
    ) -> Operation:
        """Ask for ``kind`` on ``vms`` as the ``system`` principal, through every phase."""
        body = VMAction(vms=vms, target_node=target_node, kwargs=kwargs or {}, strict=strict)
        return await self.act(SYSTEM, kind, body, None)

    async def fence(self, node: str, vm_id: str, reason: str) -> None:
        await self.fencer.fence(node, vm_id, reason)

    # --- what LNMs report --------------------------------------------------------------

    async def node_joined(
        self, name: str, domains: list[dict[str, Any]], number: int
    ) -> list[asyncio.Future[Any]]:
        """Reconcile a node that said hello; the reconciliations under way."""
        return await self.reconciler.node_joined(name, domains, number)

    async def node_lost(self, name: str, reason: str) -> None:
        await self.reconciler.node_lost(name, reason)

    async def vm_reported(
        self, node: str, vm_id: str, state: VMState, reason: str | None, number: int
    ) -> None:
        await self.reconciler.vm_reported(node, vm_id, state, reason, number)

    async def vm_gone(self, node: str, vm_id: str, number: int) -> None:
        await self.reconciler.vm_gone(node, vm_id, number)

    def report_later(self, coro: Awaitable[None], name: str) -> None:
        """Run an LNM report off the link's read loop (it may wait for a VM lock)."""
        self.crew.spawn(coro, name)
