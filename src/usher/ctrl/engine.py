"""The operation engine: every VM operation passes through the same phases.

resolve targets → check prerequisites (states, capabilities) → authorize → ``request`` and
``<op>_request`` hooks (may modify or veto) → schedule (start, migrate) → persist the operation
→ dispatch one step per VM to the LNMs → record each outcome → ``<op>`` or ``<op>_failure``.

Steps on the same VM never overlap (a lock per VM); steps on different VMs run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from usher.bounds import BoundsError, is_name
from usher.ctrl.authz import Forbidden, authorize
from usher.ctrl.config import Settings
from usher.ctrl.events import EventBus
from usher.ctrl.kwargs import check_core_kwargs, nic_network
from usher.ctrl.locks import KeyedLocks
from usher.ctrl.nodes import CommandFailed, NodeGone, NodeLink, NodeRegistry
from usher.ctrl.plugins import PluginError, PluginHost, Vetoed
from usher.ctrl.reservations import Changes
from usher.ctrl.store import Store
from usher.images import catalog
from usher.model import (
    VM,
    ConsoleChunk,
    CreateVMs,
    Image,
    Operation,
    OpKind,
    OpRequest,
    OpStatus,
    Placement,
    Plan,
    PlannedVM,
    Principal,
    Scope,
    VMAction,
    VMSpec,
    VMState,
    new_id,
    now,
)

log = logging.getLogger("usher.engine")
IMAGE_CACHE_SECONDS = 5.0
SYSTEM = Principal(name="system", roles=["admin"])
"""Who plugins act as through :meth:`usher.ctrl.context.PluginContext.submit`."""

S = VMState
# From which states each action may start, the state shown while it runs, the state after.
TRANSITIONS: dict[OpKind, tuple[frozenset[VMState], VMState | None, VMState | None]] = {
    OpKind.START: (frozenset({S.PENDING, S.STOPPED, S.ERROR, S.LOST}), S.STARTING, S.RUNNING),
    OpKind.STOP: (frozenset({S.RUNNING, S.PAUSED, S.ERROR}), S.STOPPING, S.STOPPED),
    OpKind.PAUSE: (frozenset({S.RUNNING}), None, S.PAUSED),
    OpKind.RESUME: (frozenset({S.PAUSED}), None, S.RUNNING),
    OpKind.REBOOT: (frozenset({S.RUNNING}), None, S.RUNNING),
    OpKind.CYCLE: (
        frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.ERROR, S.LOST}),
        S.STARTING,
        S.RUNNING,
    ),
    OpKind.MIGRATE: (frozenset({S.RUNNING, S.PAUSED}), S.MIGRATING, None),
    OpKind.DESTROY: (frozenset(VMState), None, None),
}
TRANSITIONAL = frozenset({S.PENDING, S.STARTING, S.STOPPING, S.MIGRATING})
NEEDS_CAPABILITY = {
    OpKind.PAUSE: "pause",
    OpKind.RESUME: "pause",
    OpKind.REBOOT: "reboot",
    OpKind.MIGRATE: "live_migrate",
}


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + secrets.token_bytes(3).hex(":")


def with_nics(spec: VMSpec, network: str) -> VMSpec:
    """``spec`` with one NIC (a MAC Usher chose, on ``network``) unless it names its own."""
    if spec.nics:
        return spec
    return spec.model_copy(update={"nics": [{"mac": random_mac(), "network": network}]})


def in_scope(scope: Scope | None, vm: VM) -> bool:
    """Whether a principal whose listings are limited to ``scope`` (None: no limit) sees
    ``vm``: a VM it may not see is, to it, a VM that does not exist."""
    return scope is None or vm.owner in scope.owners or vm.cluster in scope.clusters


def _for_vm(req: OpRequest, vm: VM) -> OpRequest:
    """``req`` as the scheduler should see it for moving ``vm``: in its virtual cluster."""
    return req.model_copy(update={"cluster": vm.cluster})


def _driver_args(kind: OpKind, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request kwargs a driver action understands: ``stop`` takes ``hard`` (no ACPI
    power-down first) and ``timeout`` (seconds to wait for the guest before a hard stop),
    both checked on admission (:func:`usher.ctrl.kwargs.check_core_kwargs`)."""
    if kind != OpKind.STOP:
        return {}
    args: dict[str, Any] = {"hard": kwargs.get("hard") is True}
    if kwargs.get("timeout") is not None:
        args["timeout"] = float(kwargs["timeout"])
    return args


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    try:
        check_core_kwargs(kwargs)
    except BoundsError as exc:
        raise RequestError(422, f"{exc}; nothing was changed") from exc


class RequestError(Exception):
    """A request the controller refuses; ``status`` is the HTTP status the API answers."""

    def __init__(
        self, status: int, message: str, detail: Any = None, *, recorded: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.recorded = recorded  # already an operation (vetoed) with its failure event


class StepFailed(Exception):
    """One VM's part of an operation failed; the message goes into the operation's errors."""


class StepLost(StepFailed):
    """The node's link dropped while it worked on the step: the VM is ``lost`` where it was
    sent (it may have done what was asked there)."""


class StepCancelled(Exception):
    """One VM's part of an operation was cancelled on request; the VM is as before."""


@dataclass
class _Run:
    """What the engine tracks of a live operation, for cancel and timeouts."""

    timeout: float
    cancelled: set[str] = field(default_factory=set)  # VMs whose step is being cancelled
    waiting: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # steps not begun
    running: set[str] = field(default_factory=set)
    inflight: dict[str, tuple[NodeLink, str, str]] = field(default_factory=dict)  # link, id, action


Step = Callable[[Operation, VM], Awaitable[dict[str, Any] | None]]


class Engine:
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
        self.locks = KeyedLocks()
        self.placement_lock = asyncio.Lock()
        self.create_lock = asyncio.Lock()
        self.parallel = asyncio.Semaphore(settings.max_parallel)
        self.observations = nodes.observations
        self.live: dict[str, Operation] = {}
        self._images: dict[str, tuple[float, Image, dict[str, Any]]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runs: dict[str, _Run] = {}
        plugins.ctx.attach(self)

    # --- start-up and shut-down ---------------------------------------------------------

    async def recover(self) -> None:
        """After a restart: operations that were running when the controller died failed."""
        for op in await self.store.unfinished_ops():
            await self._end_unrun(
                op,
                OpStatus.FAILED,
                "the controller restarted while this operation ran; VM states are re-read "
                "from their nodes",
                new=False,
            )
        self._spawn(self._settle_after_restart(), "settle-after-restart")

    async def _settle_after_restart(self) -> None:
        """``node_timeout`` after a restart, VMs still in a transition that no operation is
        working on are settled: ``lost`` if their node has not come back, ``error`` if it has
        but did not report them settled. Nothing stays transitional forever."""
        grace = self.settings.node_timeout
        await asyncio.sleep(grace)
        for vm in await self.store.vms_where():
            if vm.state in TRANSITIONAL:
                self._spawn(self._settle_stranded(vm.id, grace), f"stranded-{vm.id}")

    async def _settle_stranded(self, vm_id: str, grace: float) -> None:
        if any(vm_id in op.targets for op in self.live.values()):
            return
        async with self.locks.hold(vm_id):
            vm = await self.store.get_vm(vm_id)
            if vm is None or vm.state not in TRANSITIONAL:
                return
            was = vm.state.value
            if vm.node in self.nodes.links:
                state = S.ERROR
                reason = f"left {was} by a controller restart; node {vm.node} did not settle it"
            else:
                state = S.LOST
                reason = (
                    f"left {was} by a controller restart; node {vm.node} did not come back "
                    f"within {grace:g} s"
                )
            await self._set_state(vm, state, reason)

    async def _end_unrun(self, op: Operation, status: OpStatus, error: str, new: bool) -> None:
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

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- operations: reading -----------------------------------------------------------

    async def get_op(self, op_id: str) -> Operation:
        op = self.live.get(op_id) or await self.store.get_op(op_id)
        if op is None:
            raise RequestError(404, f"unknown operation {op_id!r}")
        return op.model_copy(deep=True)

    async def wait(self, op_id: str, timeout: float) -> Operation:
        done = self._done.get(op_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        return await self.get_op(op_id)

    # --- operations: cancelling ------------------------------------------------------

    async def cancel(self, op_id: str) -> Operation:
        """Cancel what can be: steps not begun never run; a running migration is cancelled
        on its source node (the VM stays there); other running steps go on, and the answer's
        ``result.cancel.refused`` says why, VM by VM."""
        run, op = self._runs.get(op_id), self.live.get(op_id)
        if run is None or op is None:
            found = await self.get_op(op_id)
            raise RequestError(409, f"operation {op_id} is {found.status.value}: nothing to cancel")
        for vm_id, task in list(run.waiting.items()):
            run.cancelled.add(vm_id)
            task.cancel()
        refused: dict[str, str] = {}
        for vm_id in list(run.running):
            inflight = run.inflight.get(vm_id)
            if inflight is None or inflight[2] != "migrate":
                refused[vm_id] = (
                    f"a running {op.kind.value} step cannot be cancelled"
                    + (" before its migration has begun" if op.kind == OpKind.MIGRATE else "")
                    + "; it goes on"
                )
                continue
            link, cmd_id, _action = inflight
            run.cancelled.add(vm_id)
            try:
                answer = await link.call("cancel", args={"command": cmd_id}, timeout=10)
            except (CommandFailed, NodeGone) as exc:
                answer = {"cancelled": False, "error": str(exc)}
            if not answer.get("cancelled"):
                run.cancelled.discard(vm_id)
                refused[vm_id] = f"node {link.name} could not cancel the migration; it goes on"
        op.result["cancel"] = {"refused": refused}
        await self.bus.emit(
            "cancel", operation_id=op.id, principal=op.principal, data={"refused": refused}
        )
        return op.model_copy(deep=True)

    # --- images and consoles ------------------------------------------------------------

    async def image(self, name: str) -> Image:
        """The catalogue entry of image ``name`` (cached briefly); 404 if there is none."""
        return (await self._cached_image(name))[1]

    async def _cached_image(self, name: str) -> tuple[float, Image, dict[str, Any]]:
        """When image ``name`` was read, its entry, and that entry as a node is sent it."""
        cached = self._images.get(name)
        if cached is not None and now() - cached[0] < IMAGE_CACHE_SECONDS:
            return cached
        storage = self.settings.storage_dir
        try:
            found = await asyncio.to_thread(catalog.read_manifest, storage, name)
        except catalog.ImageError as exc:
            raise RequestError(422, str(exc)) from exc
        if found is None:
            known = [i.name for i in await asyncio.to_thread(catalog.list_images, storage)]
            raise RequestError(
                404,
                f"unknown image {name!r} (known: {', '.join(known) or 'none'}); "
                "build one with `usher image build tiny` or import one with `ush image import`",
            )
        self._images[name] = cached = (now(), found, found.model_dump(mode="json"))
        return cached

    async def console(self, vm: VM, offset: int) -> ConsoleChunk:
        """Serial console output of ``vm`` from byte ``offset``, read by its node's driver."""
        try:
            answer = await self.nodes.link(vm.node).call(
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

    # --- operations: asking ------------------------------------------------------------

    async def _admit_create(
        self, principal: Principal, body: CreateVMs, client: str | None, dry_run: bool
    ) -> tuple[OpRequest, Operation, VMSpec, int]:
        """Check, authorize and run the request hooks of a start of new VMs."""
        _check_kwargs(body.kwargs)
        spec = VMSpec(
            vcpus=body.vcpus, memory_mb=body.memory_mb, image=body.image, kwargs=body.kwargs
        )
        if body.names is not None and body.count not in (1, len(body.names)):
            raise RequestError(422, f"count is {body.count} but {len(body.names)} names given")
        req = OpRequest(
            kind=OpKind.START,
            principal=principal,
            client_address=client,
            count=len(body.names) if body.names else body.count,
            names=list(body.names or []),
            cluster=body.cluster,
            spec=spec,
            node=body.node,
            kwargs=dict(body.kwargs),
            dry_run=dry_run,
        )
        count = req.count
        if body.node is not None and self.nodes.get(body.node) is None:
            raise RequestError(404, f"unknown node {body.node!r}")
        await self.image(spec.image)
        await authorize(
            self.plugins,
            principal,
            "vm.start",
            {"count": count, "cluster": body.cluster, "spec": spec.model_dump()},
        )
        op = self._new_op(req)
        await self._request_hooks(op, req)
        spec = req.spec or spec
        if spec.image != body.image:  # a request hook chose another image
            await self.image(spec.image)
        if not self.plugins.has_impl("allocate_address"):  # the core makes the NICs
            try:
                nic_network(req.kwargs, self.settings.networks)
            except BoundsError as exc:
                raise RequestError(422, f"{exc}; nothing was changed") from exc
        return req, op, spec, count

    async def _new_names(self, req: OpRequest, body: CreateVMs, count: int) -> list[str]:
        names = req.names or await self._auto_names(
            req.kwargs.get("name_prefix") or body.name_prefix or req.cluster or "vm", count
        )
        taken = await self.store.names_taken(names)
        if taken:
            raise RequestError(409, f"VM name(s) already taken: {', '.join(sorted(taken))}")
        return names

    async def create(self, principal: Principal, body: CreateVMs, client: str | None) -> Operation:
        """Start new VMs (the ``start`` operation with no existing targets).

        Creates are admitted one at a time, from their request hooks to their VMs' records:
        what a hook checks against the records (a quota, a cluster's owner) still holds
        when the VMs are recorded, so two creates at once get what one after the other
        would (the operations then run concurrently)."""
        async with self._refusals(OpKind.START, principal, client, body), self.create_lock:
            return await self._create(principal, body, client)

    async def _create(self, principal: Principal, body: CreateVMs, client: str | None) -> Operation:
        req, op, spec, count = await self._admit_create(principal, body, client, False)
        async with self.placement_lock:
            names = await self._new_names(req, body, count)
            placement = await self._schedule(req, [spec] * len(names))
            vms = [
                VM(
                    id=new_id("vm"),
                    name=name,
                    owner=principal.name,
                    cluster=req.cluster,
                    spec=spec,
                    node=node,
                    state=S.PENDING,
                )
                for name, node in zip(names, placement, strict=True)
            ]
            await self._allocate_addresses(op, req, vms)
            await self._core_nics(req, vms)
            await self.store.add_vms(vms)
        op.targets = [vm.id for vm in vms]
        await self.store.add_op(op)
        for vm in vms:
            await self.bus.emit(
                "register",
                vm_id=vm.id,
                node=vm.node,
                operation_id=op.id,
                principal=principal.name,
                data={"name": vm.name, "cluster": vm.cluster, "addresses": vm.addresses},
            )
        timeout = self._step_timeout(OpKind.START, req.kwargs)
        self._launch(op, [vm.id for vm in vms], self._step_start(req), timeout)
        return op.model_copy(deep=True)

    async def plan_start(self, principal: Principal, body: CreateVMs, client: str | None) -> Plan:
        """Where new VMs would go, and why other nodes would not do: nothing is changed."""
        req, _op, spec, count = await self._admit_create(principal, body, client, True)
        async with self.placement_lock:
            names = await self._new_names(req, body, count)
            placement = await self._placement(req, [spec] * len(names))
        nodes: list[str | None] = list(placement.nodes) if not placement.error else []
        nodes += [None] * (len(names) - len(nodes))
        return Plan(
            vms=[PlannedVM(name=n, node=node) for n, node in zip(names, nodes, strict=True)],
            rejected=placement.rejected,
            error=placement.error,
        )

    async def plan_migrate(self, principal: Principal, body: VMAction, client: str | None) -> Plan:
        """Where VMs would migrate to: nothing is changed."""
        vms, req = await self._admit_action(principal, OpKind.MIGRATE, body, client, True)
        await self._request_hooks(self._new_op(req), req)
        plan = Plan()
        extra: dict[str, dict[str, Any]] = {}
        async with self.placement_lock:
            for vm in vms:
                if body.target_node is not None:
                    placement = Placement(nodes=[body.target_node])
                else:
                    placement = await self._placement(_for_vm(req, vm), [vm.spec], vm.node, extra)
                node = placement.nodes[0] if placement.nodes else None
                plan.vms.append(PlannedVM(name=vm.name, vm_id=vm.id, node=node))
                plan.rejected.update(placement.rejected)
                if placement.error:
                    plan.error = f"{vm.name}: {placement.error}"
                    break
                used = extra.setdefault(
                    node, {"vcpus": 0, "memory_mb": 0, "vms": 0, "clusters": {}}
                )
                used["vcpus"] += vm.spec.vcpus
                used["memory_mb"] += vm.spec.memory_mb
                used["vms"] += 1
                if vm.cluster:
                    used["clusters"][vm.cluster] = used["clusters"].get(vm.cluster, 0) + 1
        return plan

    async def _core_nics(self, req: OpRequest, vms: list[VM]) -> None:
        """A NIC on the site network the request names for each VM no IP management plugin
        gave NICs; an unknown network refuses the request (addresses handed out go back)."""
        if all(vm.spec.nics for vm in vms):
            return
        try:
            network = nic_network(req.kwargs, self.settings.networks)
        except BoundsError as exc:
            for vm in vms:
                await self.plugins.call_all("release_address", vm=vm)
            raise RequestError(422, f"{exc}; nothing was changed") from exc
        for vm in vms:
            vm.spec = with_nics(vm.spec, network)

    async def _allocate_addresses(self, op: Operation, req: OpRequest, vms: list[VM]) -> None:
        """Ask the IP management plugins for each new VM's addresses (all, or none)."""
        done: list[VM] = []
        try:
            for vm in vms:
                nics = await self.plugins.decide("allocate_address", vm=vm, request=req)
                if nics:
                    vm.spec = vm.spec.model_copy(update={"nics": list(nics)})
                    vm.addresses = [n["address"] for n in nics if n.get("address")]
                done.append(vm)
        except (Vetoed, PluginError) as exc:
            for vm in done:
                await self.plugins.call_all("release_address", vm=vm)
            raise await self._plugin_refused(op, exc, record=True) from exc

    async def _admit_action(
        self,
        principal: Principal,
        kind: OpKind,
        body: VMAction,
        client: str | None,
        dry_run: bool,
    ) -> tuple[list[VM], OpRequest]:
        """Resolve, authorize, then check an action on VMs (authorization first: a refusal
        never names what the caller may not see; VMs outside its scope are unknown to it)."""
        _check_kwargs(body.kwargs)
        vms = await self._resolve_targets(body, await self.scope(principal))
        await authorize(
            self.plugins,
            principal,
            f"vm.{kind.value}",
            {"vms": [vm.model_dump(mode="json") for vm in vms], "cluster": body.cluster},
        )
        self._check_transitions(kind, vms)
        self._check_capabilities(kind, vms)
        if kind in (OpKind.MIGRATE, OpKind.START) and body.target_node is not None:
            self._check_target_node(body.target_node, vms)
        return vms, OpRequest(
            kind=kind,
            principal=principal,
            client_address=client,
            vm_ids=[vm.id for vm in vms],
            cluster=body.cluster,
            target_node=body.target_node,
            kwargs=dict(body.kwargs),
            dry_run=dry_run,
        )

    async def scope(self, principal: Principal) -> Scope | None:
        """What ``principal`` may see (the ``scope`` hook; None: everything)."""
        try:
            return await self.plugins.decide("scope", principal=principal)
        except (PluginError, Vetoed) as exc:
            raise RequestError(403, f"cannot tell what you may see: {exc}") from exc

    async def act(
        self, principal: Principal, kind: OpKind, body: VMAction, client: str | None
    ) -> Operation:
        """Run ``kind`` on existing VMs named in ``body`` (ids, names and/or a cluster)."""
        async with self._refusals(kind, principal, client, body):
            return await self._act(principal, kind, body, client)

    async def _act(
        self, principal: Principal, kind: OpKind, body: VMAction, client: str | None
    ) -> Operation:
        _vms, req = await self._admit_action(principal, kind, body, client, False)
        op = self._new_op(req)
        await self._request_hooks(op, req)
        op.targets = list(req.vm_ids)
        await self.store.add_op(op)
        step = {
            OpKind.START: self._step_start(req),
            OpKind.DESTROY: self._step_destroy,
            OpKind.MIGRATE: self._step_migrate(req),
            OpKind.CYCLE: self._step_cycle(req),
        }.get(kind) or self._step_simple(kind, _driver_args(kind, req.kwargs))
        self._launch(op, op.targets, step, self._step_timeout(kind, req.kwargs))
        return op.model_copy(deep=True)

    async def evacuate(self, principal: Principal, node: str) -> Operation:
        """Move every VM off ``node``: running and paused ones live, stopped ones cold (their
        record moves; the disks are on shared storage), each where the scheduler puts it. The
        answer is a ``migrate`` operation over those VMs; ``result.evacuate`` names the node."""
        if self.nodes.get(node) is None:
            raise RequestError(404, f"unknown node {node!r}")
        vms = await self.store.vms_where(node=node)
        req = OpRequest(
            kind=OpKind.MIGRATE,
            principal=principal,
            vm_ids=[vm.id for vm in vms],
            kwargs={"evacuate": node},
        )
        op = self._new_op(req)
        await self._request_hooks(op, req)
        op.targets = list(req.vm_ids)
        op.result = {"evacuate": node}
        await self.store.add_op(op)
        timeout = self._step_timeout(OpKind.MIGRATE, {})
        self._launch(op, op.targets, self._step_evacuate(req, node), timeout)
        return op.model_copy(deep=True)

    def _step_evacuate(self, req: OpRequest, node: str) -> Step:
        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            if vm.node != node:
                return {"skipped": f"no longer on node {node}"}
            if vm.state in (S.RUNNING, S.PAUSED):
                return await self._migrate(op, vm, await self._pick_target(req, vm))
            if vm.state != S.STOPPED:
                raise StepFailed(f"cannot evacuate {vm.name}: it is {vm.state.value}")
            target = await self._pick_target(req, vm)
            await self._set_state(vm, S.STOPPED, f"moved cold off node {node}", op, node=target)
            return {"from": node, "to": target, "cold": True}

        return step

    # --- for plugins (through PluginContext) -------------------------------------------

    async def submit(
        self,
        kind: OpKind,
        vms: list[str],
        *,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Operation:
        """Ask for ``kind`` on ``vms`` as the ``system`` principal, through every phase."""
        body = VMAction(vms=vms, target_node=target_node, kwargs=kwargs or {})
        return await self.act(SYSTEM, kind, body, None)

    async def fence(self, node: str, vm_id: str, reason: str) -> None:
        """Have ``node`` kill its copy of ``vm_id`` and forget it, leaving the VM's shared
        disks alone (they are the VM's, wherever it runs); the VM record is not touched.
        Raises NodeGone or CommandFailed if the node cannot be told or refuses."""
        await self.nodes.link(node).call(
            "fence", vm_id=vm_id, timeout=self.settings.command_timeout
        )
        await self.bus.emit(
            "fenced", vm_id=vm_id, node=node, principal=SYSTEM.name, data={"reason": reason}
        )

    # --- phases ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _refusals(
        self, kind: OpKind, principal: Principal, client: str | None, body: CreateVMs | VMAction
    ) -> AsyncIterator[None]:
        """A request refused before it became an operation (not allowed, unknown VM, wrong
        state, no capacity, …) fires ``request_refused``, so audit plugins see it too."""
        try:
            yield
        except (RequestError, Forbidden) as exc:
            if not getattr(exc, "recorded", False):
                await self.bus.emit(
                    "request_refused",
                    principal=principal.name,
                    data={
                        "kind": kind.value,
                        "client_address": client,
                        "request": body.model_dump(mode="json"),
                        "status": exc.status if isinstance(exc, RequestError) else 403,
                        "error": exc.message if isinstance(exc, RequestError) else str(exc),
                    },
                )
            raise

    async def _plugin_refused(
        self, op: Operation, exc: Vetoed | PluginError, *, record: bool
    ) -> RequestError:
        """A plugin vetoed ``op``, or failed (a broken policy plugin refuses too: 403): the
        error for the caller, after recording the operation as vetoed or failed."""
        if record:
            status = OpStatus.VETOED if isinstance(exc, Vetoed) else OpStatus.FAILED
            await self._end_unrun(op, status, str(exc), new=True)
        return RequestError(
            403,
            f"{exc}; nothing was changed",
            {"operation": op.model_dump(mode="json")},
            recorded=record,
        )

    def _new_op(self, req: OpRequest) -> Operation:
        return Operation(
            id=new_id("op"), kind=req.kind, principal=req.principal.name, targets=list(req.vm_ids)
        )

    async def _request_hooks(self, op: Operation, req: OpRequest) -> None:
        try:
            await self.plugins.run_request_hooks(req)
        except (Vetoed, PluginError) as exc:
            raise await self._plugin_refused(op, exc, record=not req.dry_run) from exc
        if req.dry_run:
            return
        data = req.model_dump(mode="json", exclude={"principal"})
        for name in ("request", f"{req.kind.value}_request"):
            await self.bus.emit(name, operation_id=op.id, principal=op.principal, data=data)

    async def _resolve_targets(self, body: VMAction, scope: Scope | None) -> list[VM]:
        found, _missing = await self.store.resolve_vms(body.vms)
        vms = [vm for vm in found if in_scope(scope, vm)]
        known = {ref for vm in vms for ref in (vm.id, vm.name)}
        missing = [ref for ref in dict.fromkeys(body.vms) if ref not in known]
        if missing:
            raise RequestError(404, f"unknown VM(s): {', '.join(missing[:20])}")
        if body.cluster is not None:
            members = await self.store.vms_where(cluster=body.cluster)
            members = [vm for vm in members if in_scope(scope, vm)]
            if not members and not body.vms:
                raise RequestError(404, f"virtual cluster {body.cluster!r} has no VMs")
            seen = {vm.id for vm in vms}
            vms += [vm for vm in members if vm.id not in seen]
        if not vms:
            raise RequestError(422, "name the VMs to act on (ids or names) or a --cluster")
        return vms

    @staticmethod
    def _check_transitions(kind: OpKind, vms: list[VM]) -> None:
        allowed = TRANSITIONS[kind][0]
        bad = [f"{vm.name} is {vm.state.value}" for vm in vms if vm.state not in allowed]
        if bad:
            wanted = ", ".join(sorted(s.value for s in allowed))
            raise RequestError(
                409,
                f"cannot {kind.value}: {'; '.join(bad[:10])}"
                + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
                + f" — {kind.value} needs a VM that is {wanted}; nothing was changed",
            )

    def _check_capabilities(self, kind: OpKind, vms: list[VM]) -> None:
        needed = NEEDS_CAPABILITY.get(kind)
        if needed is None:
            return
        for vm in vms:
            node = self.nodes.get(vm.node or "")
            if node is not None and node.capabilities and needed not in node.capabilities:
                raise RequestError(
                    409,
                    f"cannot {kind.value} {vm.name}: the {node.driver} "
                    f"driver of node {node.name} cannot {needed}",
                )

    def _check_target_node(self, target: str, vms: list[VM]) -> None:
        if self.nodes.get(target) is None:
            raise RequestError(404, f"unknown node {target!r}")
        here = [vm.name for vm in vms if vm.node == target]
        if here:
            raise RequestError(409, f"{', '.join(here)} already on node {target}")

    async def _auto_names(self, prefix: str, count: int) -> list[str]:
        if len(prefix) > 50 or not is_name(prefix):
            raise RequestError(422, f"invalid name prefix {prefix!r}")
        taken = await self.store.names_with_prefix(f"{prefix}-")
        names: list[str] = []
        n = 1
        while len(names) < count:
            name = f"{prefix}-{n}"
            if name not in taken:
                names.append(name)
            n += 1
        return names

    async def _placement(
        self,
        req: OpRequest,
        specs: list[VMSpec],
        exclude: str | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> Placement:
        """Ask the scheduler plugins; ``extra`` is capacity promised beyond the records.

        A placement over the whole cluster as recorded passes the live reservations and the
        log of what changed since the last one (the scheduler's index reads only those
        nodes); one that leaves a node out or adds ``extra`` passes copies, and no log."""
        nodes = self.nodes.snapshot()
        reserved: Mapping[str, Mapping[str, Any]] = self.store.reservations.by_node
        changes: Changes | None = self.store.changes
        if exclude is not None or extra:
            nodes = [n for n in nodes if n.name != exclude]
            reserved, changes = self._with_extra(extra or {}), None
        try:
            placement = await self.plugins.decide(
                "schedule",
                nodes=nodes,
                specs=specs,
                request=req,
                reserved=reserved,
                changes=changes,
            )
        except (PluginError, Vetoed) as exc:
            raise RequestError(403, f"{exc}; nothing was changed") from exc
        if placement is None:
            raise RequestError(409, "no scheduler plugin is enabled: cannot place VMs")
        known = {n.name for n in nodes}
        if not placement.error and (
            len(placement.nodes) != len(specs) or not set(placement.nodes) <= known
        ):
            raise RequestError(403, "the scheduler plugin returned an invalid placement")
        return placement

    def _with_extra(self, extra: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """A copy of the reservations with ``extra`` added."""
        reserved = self.store.reservations.copy()
        for node, used in extra.items():
            mine = reserved.setdefault(node, {"vcpus": 0, "memory_mb": 0, "vms": 0})
            for key in ("vcpus", "memory_mb", "vms"):
                mine[key] = mine.get(key, 0) + used.get(key, 0)
            clusters = mine.setdefault("clusters", {})
            for cluster, count in used.get("clusters", {}).items():
                clusters[cluster] = clusters.get(cluster, 0) + count
        return reserved

    async def _schedule(
        self, req: OpRequest, specs: list[VMSpec], exclude: str | None = None
    ) -> list[str]:
        placement = await self._placement(req, specs, exclude)
        if placement.error:
            raise RequestError(409, placement.error, {"rejected": placement.rejected})
        return list(placement.nodes)

    # --- running -----------------------------------------------------------------------

    def _step_timeout(self, kind: OpKind, kwargs: dict[str, Any]) -> float:
        """The configured limit of a step of ``kind``; a request's ``timeout`` kwarg may
        shorten it (for ``stop`` that kwarg is the guest's grace, so it does not count)."""
        limit = self.settings.op_timeout(kind.value)
        asked = kwargs.get("timeout")
        if kind != OpKind.STOP and isinstance(asked, int | float) and asked > 0:
            return min(limit, float(asked))
        return limit

    def _launch(self, op: Operation, vm_ids: list[str], step: Step, timeout: float) -> None:
        op.result = {
            **op.result,
            "progress": {"done": 0, "failed": 0, "cancelled": 0, "total": len(vm_ids)},
            "errors": {},
            "timeout": timeout,
        }
        self.live[op.id] = op
        self._done[op.id] = asyncio.Event()
        self._runs[op.id] = _Run(timeout=timeout)
        self._spawn(self._run(op, vm_ids, step), f"op-{op.id}")

    async def _run(self, op: Operation, vm_ids: list[str], step: Step) -> None:
        progress = op.result["progress"]
        run = self._runs[op.id]
        last_step_end = 0.0

        async def one(vm_id: str) -> None:
            nonlocal last_step_end
            async with self.parallel, self.locks.hold(vm_id):
                run.waiting.pop(vm_id, None)
                run.running.add(vm_id)
                if op.status == OpStatus.QUEUED:
                    op.status = OpStatus.RUNNING
                    op.started_at = now()
                try:
                    await self._run_step(op, vm_id, step, progress)
                finally:
                    run.running.discard(vm_id)
                    last_step_end = max(last_step_end, now())

        async def guarded(vm_id: str) -> None:
            try:
                await one(vm_id)
            except asyncio.CancelledError:
                if vm_id not in run.cancelled or vm_id in run.running:
                    raise
                progress["cancelled"] += 1  # cancelled before it began: it never ran

        for vm_id in vm_ids:
            run.waiting[vm_id] = asyncio.ensure_future(guarded(vm_id))
        try:
            await asyncio.gather(*run.waiting.values())
        finally:
            failed, cancelled = progress["failed"], progress["cancelled"]
            op.status = (
                OpStatus.FAILED
                if failed
                else OpStatus.CANCELLED
                if cancelled
                else OpStatus.SUCCEEDED
            )
            if failed:
                first = next(iter(op.result["errors"].values()))
                op.error = f"{failed} of {progress['total']} VMs failed; first: {first}"
            elif cancelled:
                op.error = f"cancelled: {cancelled} of {progress['total']} VMs did not run"
            op.finished_at = last_step_end or now()
            op.started_at = op.started_at or op.finished_at
            await self.store.update_op(op)
            self._runs.pop(op.id, None)
            self._done.pop(op.id).set()
            self.live.pop(op.id, None)

    async def _run_step(
        self, op: Operation, vm_id: str, step: Step, progress: dict[str, int]
    ) -> None:
        """One VM's part of an operation (under its lock, within the operation's step
        timeout), recorded in the operation."""
        vm = await self.store.get_vm(vm_id)
        timeout = self._runs[op.id].timeout
        try:
            if vm is None:
                raise StepFailed(f"VM {vm_id} no longer exists")
            try:
                async with asyncio.timeout(timeout):  # (no task per step, as wait_for)
                    details = await step(op, vm)
            except TimeoutError:
                await self._settle_unfinished(op, vm_id, f"timed out after {timeout:g} s")
                raise StepFailed(f"{vm.name}: timed out after {timeout:g} s") from None
        except StepCancelled as exc:
            progress["cancelled"] += 1
            op.result.setdefault("cancelled", {})[vm_id] = str(exc)
            return
        except Exception as exc:
            if not isinstance(exc, StepFailed):  # a bug must fail the step, not hang the op
                log.exception("operation %s failed on %s", op.id, vm_id)
                try:  # nor leave the VM in a transition no one will finish
                    await self._settle_unfinished(op, vm_id, f"failed: internal error: {exc!r}")
                except Exception:
                    log.exception("cannot settle %s after that failure", vm_id)
            error = str(exc) if isinstance(exc, StepFailed) else f"internal error: {exc!r}"
            progress["failed"] += 1
            op.result["errors"][vm_id] = error
            await self.bus.emit(
                f"{op.kind.value}_failure",
                vm_id=vm_id,
                node=vm.node if vm else None,
                operation_id=op.id,
                principal=op.principal,
                data={"error": error},
            )
            return
        progress["done"] += 1
        if details:
            op.result.setdefault("details", {})[vm_id] = details
        await self.bus.emit(
            op.kind.value,
            vm_id=vm_id,
            node=vm.node,
            operation_id=op.id,
            principal=op.principal,
            data=details or {},
        )

    async def _settle_unfinished(self, op: Operation, vm_id: str, why: str) -> None:
        """A step ended without finishing (it ran out of time, or a bug broke it): cancel its
        command on the node, then record the VM as its node reports it (``lost`` if the node
        cannot say; ``error`` if still in transition)."""
        run = self._runs[op.id]
        inflight = run.inflight.pop(vm_id, None)
        if inflight is not None:
            link, cmd_id, _action = inflight
            with contextlib.suppress(CommandFailed, NodeGone):
                await link.call("cancel", args={"command": cmd_id}, timeout=10)
        vm = await self.store.get_vm(vm_id)
        if vm is None:
            return
        reason = f"{op.kind.value} {why}"
        try:
            info = await self.nodes.link(vm.node).call(
                "info", vm_id=vm.id, timeout=30, observe=True
            )
            state = VMState(info.get("state", S.ERROR))
        except CommandFailed:  # the node does not have it
            state = S.STOPPED
        except NodeGone:
            state = S.LOST
        if state in TRANSITIONAL:
            state, reason = S.ERROR, f"{reason}; its node still reports it {state.value}"
        await self._set_state(vm, state, reason, op)

    async def _command(
        self, op: Operation, vm: VM, link: NodeLink, action: str, **kwargs: Any
    ) -> dict[str, Any]:
        """``link.call`` recorded as the command in flight for ``vm`` (cancel, timeouts)."""
        run = self._runs.get(op.id)
        cmd_id = new_id("cmd")
        if run is not None:
            run.inflight[vm.id] = (link, cmd_id, action)
        # a step that times out leaves it recorded: the node is then told to cancel it
        try:
            answer = await link.call(action, vm_id=vm.id, cmd_id=cmd_id, observe=True, **kwargs)
        except (CommandFailed, NodeGone):
            if run is not None:
                run.inflight.pop(vm.id, None)
            raise
        if run is not None:
            run.inflight.pop(vm.id, None)
        return answer

    async def _set_state(
        self,
        vm: VM,
        state: VMState,
        reason: str | None = None,
        op: Operation | None = None,
        **changes: Any,
    ) -> None:
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
                data={
                    "from": old.value,
                    "to": state.value,
                    "reason": reason,
                    **{k: v for k, v in changes.items()},
                },
            )

    async def _guest(self, vm: VM) -> dict[str, Any]:
        """What a node needs to run ``vm``: its spec and its image's catalogue entry."""
        try:
            _when, _image, image = await self._cached_image(vm.spec.image)
        except RequestError as exc:
            raise StepFailed(f"{vm.name}: {exc.message}") from exc
        return {
            "id": vm.id,
            "name": vm.name,
            "spec": vm.spec.model_dump(mode="json"),
            "image": image,
        }

    def _check_state(self, op: Operation, vm: VM) -> None:
        if vm.state not in TRANSITIONS[op.kind][0]:
            raise StepFailed(f"cannot {op.kind.value} {vm.name}: it is {vm.state.value} now")

    async def _call(
        self, op: Operation, vm: VM, action: str, *, undo_state: VMState, **kwargs: Any
    ) -> dict[str, Any]:
        """Send ``action`` for ``vm`` to its node; on failure record the VM's honest state:
        as before (the driver refused, or the node was not there to ask) or ``lost`` (the link
        dropped while the node worked on it)."""
        try:
            link = self.nodes.link(vm.node)
        except NodeGone as exc:
            await self._set_state(vm, undo_state, str(exc), op)
            raise StepFailed(f"{vm.name}: {exc}") from exc
        try:
            return await self._command(
                op, vm, link, action, timeout=self.settings.command_timeout, **kwargs
            )
        except CommandFailed as exc:
            await self._set_state(vm, undo_state, str(exc), op)
            raise StepFailed(f"{vm.name}: {exc}") from exc
        except NodeGone as exc:
            await self._set_state(vm, S.LOST, str(exc), op)
            raise StepLost(f"{vm.name}: {exc}") from exc

    def _step_start(self, req: OpRequest) -> Step:
        """Boot a VM where it is, or first move it cold (its disks are on shared storage) to
        ``req.target_node`` or, if its node is down, to a node the scheduler picks."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            self._check_state(op, vm)
            before = vm.state if vm.state != S.PENDING else S.ERROR
            moved: dict[str, Any] = {}
            target = req.target_node
            if target is None and vm.node not in self.nodes.links and vm.state != S.PENDING:
                target = await self._pick_target(req, vm)
            if target is not None and target != vm.node:
                moved = {"from": vm.node, "to": target, "cold": True}
            await self._set_state(vm, S.STARTING, op=op, **({"node": target} if moved else {}))
            guest = await self._guest(vm)
            try:
                info = await self._call(op, vm, "start", undo_state=before, guest=guest)
            except StepLost:
                raise  # the target may have booted it: it is lost there
            except StepFailed:
                if moved:  # the target refused it (say, its disk lease is held): it never left
                    await self._set_state(vm, vm.state, vm.state_reason, op, node=moved["from"])
                raise
            await self._set_state(vm, VMState(info.get("state", S.RUNNING)), op=op)
            return moved or None

        return step

    async def _pick_target(self, req: OpRequest, vm: VM) -> str:
        """A node for ``vm`` other than its own, chosen by the scheduler (which passes over
        nodes that are down, drained or in maintenance)."""
        async with self.placement_lock:
            try:
                return (await self._schedule(_for_vm(req, vm), [vm.spec], exclude=vm.node))[0]
            except RequestError as exc:
                raise StepFailed(f"{vm.name}: no node to move it to: {exc}") from exc

    def _step_cycle(self, req: OpRequest) -> Step:
        """Hard stop and boot again where the VM is; one whose node is down (``lost``) boots
        on another node, as a start would."""
        start = self._step_start(req)

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            if vm.node not in self.nodes.links:
                return await start(op, vm)
            self._check_state(op, vm)
            before = vm.state
            await self._set_state(vm, S.STARTING, op=op)
            guest = await self._guest(vm)
            info = await self._call(op, vm, "cycle", undo_state=before, guest=guest)
            await self._set_state(vm, VMState(info.get("state", S.RUNNING)), op=op)
            return None

        return step

    def _step_simple(self, kind: OpKind, args: dict[str, Any]) -> Step:
        _, during, after = TRANSITIONS[kind]
        assert after is not None

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            self._check_state(op, vm)
            before = vm.state
            if during is not None:
                await self._set_state(vm, during, op=op)
            await self._call(op, vm, kind.value, undo_state=before, args=args)
            await self._set_state(vm, after, op=op)
            return None

        return step

    async def _step_destroy(self, op: Operation, vm: VM) -> dict[str, Any] | None:
        if vm.node is not None:
            try:
                await self.nodes.link(vm.node).call(
                    "destroy", vm_id=vm.id, timeout=self.settings.command_timeout
                )
            except (CommandFailed, NodeGone) as exc:
                raise StepFailed(f"{vm.name}: {exc}; the VM record is kept") from exc
        await self.store.delete_vm(vm)
        self.observations.forget(vm.id)
        await self.bus.emit(
            "unregister",
            vm_id=vm.id,
            node=vm.node,
            operation_id=op.id,
            data={"name": vm.name, "cluster": vm.cluster},
        )
        return None

    def _step_migrate(self, req: OpRequest) -> Step:
        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            self._check_state(op, vm)
            source = vm.node
            target = req.target_node or await self._pick_target(req, vm)
            if target == source:
                raise StepFailed(f"{vm.name} is already on node {target}")
            return await self._migrate(op, vm, target)

        return step

    async def _migrate(self, op: Operation, vm: VM, target: str) -> dict[str, Any]:
        before, source = vm.state, vm.node
        try:
            src_link = self.nodes.link(source)
            dst_link = self.nodes.link(target)
        except NodeGone as exc:
            raise StepFailed(f"{vm.name}: {exc}") from exc
        await self._set_state(vm, S.MIGRATING, f"to {target}", op, target_node=target)
        timeout = self.settings.migrate_timeout
        started = now()
        try:
            prepared = await dst_link.call(
                "prepare_incoming", vm_id=vm.id, guest=await self._guest(vm), timeout=timeout
            )
            result = await self._command(
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
            if isinstance(exc, asyncio.CancelledError):  # timed out: _settle_unfinished follows
                raise
            cancelled = vm.id in self._runs[op.id].cancelled
            why = "cancelled" if cancelled else str(exc)
            await self._settle_after_failed_migration(op, vm, src_link, before, why)
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
        await self._set_state(
            vm, VMState(info.get("state", before)), op=op, node=target, target_node=None
        )
        return details

    async def _settle_after_failed_migration(
        self, op: Operation, vm: VM, src_link: NodeLink, before: VMState, reason: str
    ) -> None:
        """After a failed migration, record the VM as its source node reports it. If the
        source no longer has it (it may have sent all of it before the target went away),
        it is ``lost`` and stays the target's to claim: ``target_node`` is kept, and the
        target's next report settles it."""
        try:
            info = await src_link.call("info", vm_id=vm.id, timeout=30, observe=True)
        except (CommandFailed, NodeGone):
            await self._set_state(vm, S.LOST, f"migration failed: {reason}", op)
            return
        state = VMState(info.get("state", before))
        await self._set_state(vm, state, f"migration failed: {reason}", op, target_node=None)

    # --- what LNMs report --------------------------------------------------------------

    async def node_joined(self, name: str, domains: list[dict[str, Any]], number: int) -> None:
        """Reconcile records with what a (re)connected node really runs, as its hello (the
        message numbered ``number``) says."""
        reported = {d["id"]: d for d in domains}
        for vm in await self.store.vms_where(node=name):
            dom = reported.pop(vm.id, None)
            self._spawn(self._reconcile(vm.id, name, dom, number), f"reconcile-{vm.id}")
        for vm in await self.store.vms_where(target_node=name):
            if vm.id not in reported:  # a migration's target that has nothing of it
                self._spawn(self._reconcile(vm.id, name, None, number), f"target-{vm.id}")
        for vm_id, dom in reported.items():
            self._spawn(self._reconcile(vm_id, name, dom, number), f"adopt-{vm_id}")

    async def _reconcile(
        self, vm_id: str, node: str, dom: dict[str, Any] | None, number: int
    ) -> None:
        """What ``node`` reports of ``vm_id`` (``dom``, None if nothing) in its message
        numbered ``number``, against the record.

        Under the VM's lock, so after any operation step on it; a report older than what is
        known of the VM on that node (a command's reply came later) is dropped. Only the
        node the record names, or the target of its migration, is believed about the VM: a
        copy anywhere else is fenced there, and the record stays. An incoming migration
        that no operation will finish is settled on its target first (run there if it
        arrived whole, dropped if not); then a copy on the target is adopted unless the
        recorded node still has the VM (then the copy is fenced).
        """
        async with self.locks.hold(vm_id):
            if self.observations.is_stale(vm_id, node, number):
                log.info("dropped a stale report of %s from node %s", vm_id, node)
                return
            self.observations.saw(vm_id, node, number)
            vm = await self.store.get_vm(vm_id)
            if vm is None:
                if dom is not None:
                    await self._unrecorded(vm_id, node, dom)
                return
            if vm.node == node:
                await self._match_report(vm, node, dom)
            elif node == vm.target_node:
                await self._from_target(vm, node, dom)
            elif dom is not None:
                await self._fence_claim(vm, node)

    async def _from_target(self, vm: VM, node: str, dom: dict[str, Any] | None) -> None:
        """The target of ``vm``'s migration reports on it after the migration's operation
        ended without hearing how it went (a restart cut it short)."""
        if dom is not None and VMState(dom["state"]) is S.MIGRATING:
            dom = await self._settle_incoming(vm, node)
        if dom is None:  # the target has nothing of it: the VM stayed where it was
            await self._set_state(vm, vm.state, vm.state_reason, target_node=None)
        elif await self._recorded_node_has(vm):
            await self._fence_stale(vm, node)
            await self._set_state(vm, vm.state, vm.state_reason, target_node=None)
        else:
            state = VMState(dom["state"])
            await self._set_state(vm, state, f"found on node {node}", node=node, target_node=None)

    async def _fence_claim(self, vm: VM, node: str) -> None:
        """``node`` reports a copy of ``vm``, which is recorded on another node and is not
        migrating to it: whatever that copy is (left from before the VM was lost and moved,
        or claimed by a confused or hostile node), it is fenced there and the record stays
        where it is. (The recorded node is never fenced on another node's word.)"""
        reason = (
            f"copy of {vm.name} on node {node}, which the record does not name "
            f"(it is recorded on {vm.node})"
        )
        await self._fence_copy(vm.id, node, reason, recorded_node=vm.node)

    async def _unrecorded(self, vm_id: str, node: str, dom: dict[str, Any]) -> None:
        """``node`` has a VM without a record: a copy of a VM destroyed while the node was
        away (lost with it and moved, or its migration's outcome never heard) is fenced; one
        Usher never recorded is left alone (``unknown_vm``)."""
        if await self.store.was_destroyed(vm_id):
            name = dom.get("name") or vm_id
            reason = f"stale copy: {name} was destroyed while node {node} was away"
            await self._fence_copy(vm_id, node, reason, recorded_node=None)
        else:
            await self.bus.emit("unknown_vm", vm_id=vm_id, node=node, data=dom)

    async def _match_report(self, vm: VM, node: str, dom: dict[str, Any] | None) -> None:
        """The record places ``vm`` on ``node``: take the state the node reports."""
        if dom is not None:
            state, reason = VMState(dom["state"]), dom.get("reason")
        elif vm.state in (S.STOPPED, S.PENDING):
            return
        else:
            state, reason = S.LOST, f"node {node} does not report this VM"
        if state != vm.state:
            await self._set_state(vm, state, reason)

    async def _settle_incoming(self, vm: VM, node: str) -> dict[str, Any] | None:
        """Have ``node`` settle an incoming copy of ``vm`` an interrupted migration left:
        the VM it now runs, or None if it dropped the copy (or cannot be asked)."""
        try:
            answer = await self.nodes.link(node).call(
                "settle_incoming", vm_id=vm.id, timeout=self.settings.command_timeout
            )
        except (CommandFailed, NodeGone) as exc:
            # no incoming copy to settle there any more (a late report): what is there now
            log.warning("cannot settle the incoming copy of %s on %s: %s", vm.name, node, exc)
            try:
                return await self.nodes.link(node).call(
                    "info", vm_id=vm.id, timeout=self.settings.command_timeout
                )
            except (CommandFailed, NodeGone):
                return None
        settled = answer.get("settled")
        await self.bus.emit(
            "incoming_settled",
            vm_id=vm.id,
            node=node,
            principal=SYSTEM.name,
            data={"outcome": settled, "recorded_node": vm.node},
        )
        return answer.get("vm") if settled == "running" else None

    async def _recorded_node_has(self, vm: VM) -> bool:
        """Whether the node the record places ``vm`` on is up and has it."""
        if vm.node is None or vm.node not in self.nodes.links:
            return False
        try:
            await self.nodes.link(vm.node).call(
                "info", vm_id=vm.id, timeout=self.settings.command_timeout
            )
        except (CommandFailed, NodeGone):
            return False
        return True

    async def _fence_stale(self, vm: VM, node: str) -> None:
        """``node`` has a copy of ``vm``, which runs on its recorded node: destroy the copy
        (the record, and the recorded node's disk lease, stay)."""
        reason = f"stale copy: {vm.name} is recorded on node {vm.node}, which has it"
        await self._fence_copy(vm.id, node, reason, recorded_node=vm.node)

    async def _fence_copy(
        self, vm_id: str, node: str, reason: str, recorded_node: str | None
    ) -> None:
        try:
            await self.fence(node, vm_id, reason)
        except (CommandFailed, NodeGone) as exc:
            log.error("cannot fence the copy of %s on %s: %s", vm_id, node, exc)
            await self.bus.emit(
                "fence_failure",
                vm_id=vm_id,
                node=node,
                principal=SYSTEM.name,
                data={"error": str(exc), "recorded_node": recorded_node},
            )

    async def node_lost(self, name: str, reason: str) -> None:
        for vm in await self.store.vms_where(node=name):
            if vm.state not in (S.STOPPED, S.PENDING, S.LOST):
                self._spawn(self._mark_lost(vm.id, name, reason), f"lost-{vm.id}")

    async def _mark_lost(self, vm_id: str, node: str, reason: str) -> None:
        async with self.locks.hold(vm_id):
            vm = await self.store.get_vm(vm_id)
            if vm is not None and vm.node == node and vm.state not in (S.STOPPED, S.LOST):
                await self._set_state(vm, S.LOST, f"node {node} lost: {reason}")

    async def vm_reported(
        self, node: str, vm_id: str, state: VMState, reason: str | None, number: int
    ) -> None:
        """An LNM saw a VM change state on its own (a guest powered off, a process died), or
        tells the outcome of a command that outlived its link (message ``number``):
        reconciled as a hello's report of that VM would be."""
        dom = {"id": vm_id, "state": state.value, "reason": reason}
        await self._reconcile(vm_id, node, dom, number)

    async def vm_gone(self, node: str, vm_id: str, number: int) -> None:
        """An LNM no longer has a VM whose command outlived its link (a destroy that ended
        after its controller went away, and after the node's hello had still listed it):
        reconciled as if that hello had left it out."""
        await self._reconcile(vm_id, node, None, number)

    def report_later(self, coro: Awaitable[None], name: str) -> None:
        """Run an LNM report off the link's read loop (it may wait for a VM lock)."""
        self._spawn(coro, name)
