"""High availability: protected VMs are restarted on other nodes when their node is lost.

A VM is protected when it was started with the kwarg ``ha = true`` (``ush start --kwarg
ha=true``) or belongs to a protected virtual cluster: one named in the config, or protected
at run time (``PUT``/``DELETE /v1/ha/clusters/{name}``, ``ush ha protect|unprotect
--cluster NAME``; actions ``ha.protect``, ``ha.unprotect``).

When a node is declared down (``node_lost``), every protected VM recorded there that becomes
``lost`` is started again, ``restart_delay`` seconds later, as a ``start`` with no target
node: the scheduler places it among the nodes that are up, with all its filters. If that
fails (nothing fits, the start fails), it is retried with exponential backoff (1 s doubling
up to 30 s), at most ``max_attempts`` times, then ``ha_failure`` fires. A start that fails
because the VM's disk lease is still held (its old node's copy may still run: an LNM that
died leaves its guests running, and a dead host's lease takes a while to expire) is tried
again every few seconds for up to ``lease_wait`` seconds without counting as an attempt: HA
never starts a second copy, it waits for the first to be gone. Each restart fires
``ha_restart`` (``data``: ``from``, ``to``, ``seconds`` from ``node_lost`` to running again,
``attempts``). If the node comes back first, nothing is restarted, and neither is a VM its
users last asked to stop or pause (its ``desired_state`` is not ``running``): HA brings
back what should run, not what someone was stopping when its node died.

Which nodes are down is kept in the plugin's data, so a controller restart does not forget
it: at start, lost protected VMs of nodes still down are considered again (and nodes that
were up but do not dial the restarted controller in time are declared lost by the core).

Never two running copies: a node that comes back still running a VM now recorded (and
running) on another node has its stale copy fenced by the engine itself (the record wins,
``fenced`` fires), for every VM, protected or not.

``GET /v1/ha`` (action ``ha.status``; ``ush ha status``) lists the protected clusters and
VMs: cluster, node, state, last restart.

Config (``[plugins.ha]``)::

    clusters = ["web"]   # virtual clusters protected from the start
    restart_delay = 0    # seconds after node_lost before restarting
    max_attempts = 5     # restart attempts per VM before giving up
    lease_wait = 300     # seconds to keep trying while the VM's disk lease is held
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from usher.model import (
    LEASE_HELD,
    NAME_PATTERN,
    VM,
    Event,
    Operation,
    OpKind,
    OpStatus,
    Principal,
    VMState,
    now,
)
from usher.plugin import ContextDep, PluginContext, PrincipalDep, RequestError, allow, hookimpl

PLUGIN = "ha"
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
LEASE_RETRY = 2.0
POLL = 0.1
ClusterName = Annotated[str, Path(pattern=NAME_PATTERN)]


class HAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clusters: list[str] = Field(default_factory=list)
    restart_delay: float = Field(0.0, ge=0)
    max_attempts: int = Field(5, ge=1)
    lease_wait: float = Field(300.0, ge=0)


class ProtectedVM(BaseModel):
    vm_id: str
    name: str
    cluster: str | None
    policy: Literal["vm", "cluster"]
    node: str | None
    state: VMState
    last_restart: dict[str, Any] | None = None


class HAStatus(BaseModel):
    clusters: list[str]
    vms: list[ProtectedVM]


class HA:
    ctx: PluginContext
    config: HAConfig
    log: logging.Logger

    def __init__(self) -> None:
        self.retry_first = RETRY_FIRST
        self.down: dict[str, float] = {}  # node -> time of its node_lost
        self.restarting: set[str] = set()  # ids of VMs whose restart is under way
        self.tasks: set[asyncio.Task[None]] = set()

    @hookimpl
    async def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.config = HAConfig.model_validate(config)
        self.log = ctx.logger(PLUGIN)
        self.down = dict(await ctx.get(PLUGIN, "down", {}))

    async def _node_down(self, node: str, at: float | None) -> None:
        """Remember (``at``: when it was lost) or forget that ``node`` is down, durably."""
        if at is None:
            if self.down.pop(node, None) is None:
                return
        else:
            self.down[node] = at
        await self.ctx.put(PLUGIN, "down", dict(self.down))

    @hookimpl
    async def usher_shutdown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    # --- what is protected -----------------------------------------------------------------

    async def clusters(self) -> list[str]:
        """Protected virtual clusters: the config's, changed by run-time protect/unprotect."""
        changed: dict[str, bool] = await self.ctx.get(PLUGIN, "clusters", {})
        names = {c for c in self.config.clusters if changed.get(c, True)}
        return sorted(names | {c for c, on in changed.items() if on})

    async def set_protected(self, cluster: str, on: bool) -> None:
        changed: dict[str, bool] = await self.ctx.get(PLUGIN, "clusters", {})
        changed[cluster] = on
        await self.ctx.put(PLUGIN, "clusters", changed)

    @staticmethod
    def policy(vm: VM, clusters: list[str]) -> Literal["vm", "cluster"] | None:
        """Why ``vm`` is protected (``vm`` or ``cluster``), or None if it is not."""
        if vm.spec.kwargs.get("ha") is True:
            return "vm"
        return "cluster" if vm.cluster in clusters else None

    async def protected(self, vm: VM) -> bool:
        return self.policy(vm, await self.clusters()) is not None

    # --- events ----------------------------------------------------------------------------

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        if event.name == "node_lost" and event.node:
            await self._node_down(event.node, event.time)
            for vm in await self.ctx.records.vms_where(node=event.node):
                await self._consider(vm, event.node)
        elif event.name == "node_join" and event.node:
            await self._node_down(event.node, None)
        elif event.name == "ctrl_start":  # restarts cut short by the controller's restart
            for node in list(self.down):
                for vm in await self.ctx.records.vms_where(node=node):
                    await self._consider(vm, node)
        elif event.name == "state_change" and event.data.get("to") == VMState.LOST:
            vm = await self.ctx.records.get_vm(event.vm_id or "")
            if vm is not None and vm.node in self.down:
                await self._consider(vm, vm.node)

    async def _consider(self, vm: VM, node: str) -> None:
        """Restart ``vm``, lost with ``node``, if it is protected and not being restarted."""
        if (
            vm.state != VMState.LOST
            or vm.desired_state != VMState.RUNNING
            or vm.id in self.restarting
            or not await self.protected(vm)
        ):
            return
        self.restarting.add(vm.id)
        self._spawn(self.restart(vm.id, node, self.down[node]))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("ha task failed", exc_info=task.exception())

    # --- restarting ------------------------------------------------------------------------

    async def _still_lost(self, vm_id: str, node: str, lost_at: float) -> VM | None:
        """``vm_id`` if it still waits for a restart: its node still down since ``lost_at``,
        the VM lost (or in error after a failed attempt) and protected."""
        vm = await self.ctx.records.get_vm(vm_id)
        if (
            vm is None
            or self.down.get(node) != lost_at
            or vm.state not in (VMState.LOST, VMState.ERROR)
            or vm.desired_state != VMState.RUNNING
            or not await self.protected(vm)
        ):
            return None
        return vm

    async def _finished(self, op: Operation) -> Operation:
        while not op.done:
            await asyncio.sleep(POLL)
            op = await self.ctx.records.get_op(op.id) or op
        return op

    async def restart(self, vm_id: str, node: str, lost_at: float) -> None:
        """Start ``vm_id`` elsewhere after ``node`` was lost at ``lost_at``, with retries."""
        try:
            await self._restart(vm_id, node, lost_at)
        finally:
            self.restarting.discard(vm_id)

    async def _restart(self, vm_id: str, node: str, lost_at: float) -> None:
        await asyncio.sleep(max(0.0, lost_at + self.config.restart_delay - now()))
        wait = self.retry_first
        error = ""
        attempt = 0
        leased_until = now() + self.config.lease_wait
        while attempt < self.config.max_attempts:
            vm = await self._still_lost(vm_id, node, lost_at)
            if vm is None:
                return
            try:
                op = await self._finished(await self.ctx.submit(OpKind.START, [vm_id]))
            except RequestError as exc:
                error = exc.message
            else:
                if op.status == OpStatus.SUCCEEDED:
                    if vm_id not in op.result.get("skipped", {}):  # (else it came back
                        await self._restarted(vm, node, lost_at, op, attempt + 1)  # itself)
                    return
                error = op.error or f"operation {op.id} {op.status.value}"
            if LEASE_HELD in error and now() < leased_until:
                self.log.info("%s: its disk lease is still held; trying again", vm.name)
                await asyncio.sleep(LEASE_RETRY)
                continue
            attempt += 1
            self.log.warning("restart %d of %s failed: %s", attempt, vm.name, error)
            if attempt < self.config.max_attempts:
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX)
        await self.ctx.emit(
            "ha_failure",
            vm_id=vm_id,
            node=node,
            data={"error": error, "attempts": self.config.max_attempts},
        )

    async def _restarted(
        self, vm: VM, node: str, lost_at: float, op: Operation, attempts: int
    ) -> None:
        moved = await self.ctx.records.get_vm(vm.id)
        running_at = op.finished_at or lost_at
        record = {
            "from": node,
            "to": moved.node if moved else None,
            "at": running_at,
            "seconds": round(running_at - lost_at, 3),
            "attempts": attempts,
        }
        await self.ctx.put(PLUGIN, f"restart:{vm.id}", record)
        self.log.info("restarted %s on %s after %.2f s", vm.name, record["to"], record["seconds"])
        await self.ctx.emit(
            "ha_restart",
            vm_id=vm.id,
            node=record["to"],
            operation_id=op.id,
            data={"name": vm.name, **record},
        )

    # --- routes ----------------------------------------------------------------------------

    async def status(self) -> HAStatus:
        clusters = await self.clusters()
        found: list[ProtectedVM] = []
        cursor = None
        while True:
            page = await self.ctx.records.list_vms(limit=1000, cursor=cursor)
            for vm in page.items:
                policy = self.policy(vm, clusters)
                if policy is not None:
                    found.append(
                        ProtectedVM(
                            vm_id=vm.id,
                            name=vm.name,
                            cluster=vm.cluster,
                            policy=policy,
                            node=vm.node,
                            state=vm.state,
                            last_restart=await self.ctx.get(PLUGIN, f"restart:{vm.id}"),
                        )
                    )
            if not (cursor := page.next):
                break
        return HAStatus(clusters=clusters, vms=found)

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/ha", tags=["ha"])

        @router.get("", response_model=HAStatus)
        async def show(ctx: ContextDep, principal: PrincipalDep) -> HAStatus:
            await allow(ctx, principal, "ha.status")
            return await self.status()

        async def change(ctx: PluginContext, principal: Principal, name: str, on: bool) -> HAStatus:
            await allow(ctx, principal, "ha.protect" if on else "ha.unprotect", cluster=name)
            await self.set_protected(name, on)
            await self.ctx.emit(
                "ha_protect" if on else "ha_unprotect",
                principal=principal.name,
                data={"cluster": name},
            )
            return await self.status()

        @router.put("/clusters/{name}", response_model=HAStatus)
        async def protect(name: ClusterName, ctx: ContextDep, principal: PrincipalDep) -> HAStatus:
            return await change(ctx, principal, name, True)

        @router.delete("/clusters/{name}", response_model=HAStatus)
        async def unprotect(
            name: ClusterName, ctx: ContextDep, principal: PrincipalDep
        ) -> HAStatus:
            return await change(ctx, principal, name, False)

        return [router]
