"""Admission, the phases every request passes before it becomes an operation: check the
request, resolve its targets, authorize, check states and capabilities, run the request
hooks (which may change only :data:`usher.model.REQUEST_HOOKS_MAY_CHANGE`, checked again
afterwards). A request refused here fires ``request_refused``; one a plugin vetoes is
recorded as a vetoed operation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from usher.bounds import BoundsError, is_name
from usher.ctrl.authz import Forbidden, authorize
from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.transitions import ALL_OR_NOTHING, NEEDS_CAPABILITY, Triage, triage
from usher.ctrl.kwargs import check_core_kwargs, nic_network
from usher.ctrl.plugins import PluginError, Vetoed
from usher.model import (
    VM,
    CreateVMs,
    Operation,
    OpKind,
    OpRequest,
    OpStatus,
    Principal,
    Scope,
    VMAction,
    VMSpec,
    new_id,
)


def in_scope(scope: Scope | None, vm: VM) -> bool:
    """Whether a principal whose listings are limited to ``scope`` (None: no limit) sees
    ``vm``: a VM it may not see is, to it, a VM that does not exist."""
    return scope is None or vm.owner in scope.owners or vm.cluster in scope.clusters


def new_op(req: OpRequest) -> Operation:
    return Operation(
        id=new_id("op"), kind=req.kind, principal=req.principal.name, targets=list(req.vm_ids)
    )


def _note_triage(op: Operation, sorted_: Triage) -> None:
    if sorted_.skipped:
        op.result["skipped"] = sorted_.skipped
    if sorted_.refused:
        op.result["errors"] = sorted_.refused


def _check_kwargs(kwargs: dict[str, Any]) -> None:
    if not isinstance(kwargs, dict):  # a request hook replaced them
        raise RequestError(422, "kwargs must be an object; nothing was changed")
    try:
        check_core_kwargs(kwargs)
    except BoundsError as exc:
        raise RequestError(422, f"{exc}; nothing was changed") from exc


class Admission:
    def __init__(self, crew: Crew, images: ImageCache) -> None:
        self.crew = crew
        self.images = images

    async def scope(self, principal: Principal) -> Scope | None:
        """What ``principal`` may see (the ``scope`` hook; None: everything)."""
        try:
            return await self.crew.plugins.decide("scope", principal=principal)
        except (PluginError, Vetoed) as exc:
            raise RequestError(403, f"cannot tell what you may see: {exc}") from exc

    @contextlib.asynccontextmanager
    async def refusals(
        self, kind: OpKind, principal: Principal, client: str | None, body: CreateVMs | VMAction
    ) -> AsyncIterator[None]:
        """A request refused before it became an operation (not allowed, unknown VM, wrong
        state, no capacity, …) fires ``request_refused``, so audit plugins see it too."""
        try:
            yield
        except (RequestError, Forbidden) as exc:
            if not getattr(exc, "recorded", False):
                await self.crew.bus.emit(
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

    # --- starts of new VMs ---------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        body: CreateVMs,
        client: str | None,
        dry_run: bool,
        kind: OpKind = OpKind.START,
    ) -> tuple[OpRequest, Operation]:
        """Check, authorize and run the request hooks of a start of new VMs (``kind``
        ``clone``: of a clone, whose request hook is ``clone_request``): the request as the
        hooks left it (``spec`` set) and its operation (not yet recorded)."""
        _check_kwargs(body.kwargs)
        spec = VMSpec(
            vcpus=body.vcpus,
            memory_mb=body.memory_mb,
            image=body.image,
            disk_gb=body.disk_gb,
            disks=body.disks,
            kwargs=body.kwargs,
        )
        if body.names is not None and body.count not in (1, len(body.names)):
            raise RequestError(422, f"count is {body.count} but {len(body.names)} names given")
        req = OpRequest(
            kind=kind,
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
        self._check_node(req.node)
        await self.images.root_gb(spec)  # (the image exists, and is no larger than asked)
        await authorize(
            self.crew.plugins,
            principal,
            "vm.start",
            {"count": req.count, "cluster": body.cluster, "spec": spec.model_dump()},
        )
        op = new_op(req)
        asked = spec.model_dump()
        await self.request_hooks(op, req)
        if req.spec is None or req.spec.model_dump() != asked:  # a hook changed the spec
            try:
                req.spec = VMSpec.model_validate((req.spec or spec).model_dump())
            except ValueError as exc:
                raise RequestError(422, f"a request hook made the spec invalid: {exc}") from exc
            await self.images.root_gb(req.spec)
        if not self.crew.plugins.has_impl("allocate_address"):  # the core makes the NICs
            try:
                nic_network(req.kwargs, self.crew.settings.networks)
            except BoundsError as exc:
                raise RequestError(422, f"{exc}; nothing was changed") from exc
        return req, op

    async def new_names(self, req: OpRequest, body: CreateVMs) -> list[str]:
        """The names of the VMs ``req`` creates: those asked for, or the next free ones
        after the prefix; 409 if any is taken."""
        names = req.names or await self._auto_names(
            req.kwargs.get("name_prefix") or body.name_prefix or req.cluster or "vm", req.count
        )
        taken = await self.crew.store.names_taken(names)
        if taken:
            raise RequestError(409, f"VM name(s) already taken: {', '.join(sorted(taken))}")
        return names

    async def _auto_names(self, prefix: str, count: int) -> list[str]:
        if len(prefix) > 50 or not is_name(prefix):
            raise RequestError(422, f"invalid name prefix {prefix!r}")
        taken = await self.crew.store.names_with_prefix(f"{prefix}-")
        names: list[str] = []
        n = 1
        while len(names) < count:
            name = f"{prefix}-{n}"
            if name not in taken:
                names.append(name)
            n += 1
        return names

    # --- actions on existing VMs ---------------------------------------------------------

    async def action(
        self,
        principal: Principal,
        kind: OpKind,
        body: VMAction,
        client: str | None,
        dry_run: bool,
        spec: VMSpec | None = None,
    ) -> tuple[list[VM], OpRequest, Operation]:
        """Resolve, authorize, check and run the request hooks of an action on VMs
        (authorization first: a refusal never names what the caller may not see; VMs
        outside its scope are unknown to it). The VMs returned are those the action runs
        on; the operation's result names the ones skipped (``skipped``: already where the
        action leads) and refused (``errors``: in a state it cannot start from). ``spec``:
        what the action makes of its VM's spec (a resize), for the request hooks."""
        _check_kwargs(body.kwargs)
        vms = await self._resolve_targets(body, await self.scope(principal))
        await authorize(
            self.crew.plugins,
            principal,
            f"vm.{kind.value}",
            {"vms": [vm.model_dump(mode="json") for vm in vms], "cluster": body.cluster},
        )
        hard = body.kwargs.get("hard") is True  # a hard stop does not wait for a soft one

        def under_way(vm: VM) -> bool:
            return not hard and self.crew.locks.held(vm.id)

        sorted_ = triage(kind, vms, body.strict, under_way)
        self._check_capabilities(kind, sorted_, body.strict or kind in ALL_OR_NOTHING)
        vms = sorted_.go
        req = OpRequest(
            kind=kind,
            principal=principal,
            client_address=client,
            vm_ids=[vm.id for vm in vms],
            skipped=list(sorted_.skipped),
            refused=list(sorted_.refused),
            cluster=body.cluster,
            target_node=body.target_node,
            spec=spec,
            kwargs=dict(body.kwargs),
            dry_run=dry_run,
        )
        self.check_target_node(req, vms)
        op = new_op(req)
        _note_triage(op, sorted_)
        await self.request_hooks(op, req)
        self.check_target_node(req, vms)
        return vms, req, op

    async def system_request(self, req: OpRequest) -> Operation:
        """The operation of a request the controller makes itself (an evacuation), after
        its request hooks."""
        op = new_op(req)
        await self.request_hooks(op, req)
        return op

    async def _resolve_targets(self, body: VMAction, scope: Scope | None) -> list[VM]:
        store = self.crew.store
        found, _missing = await store.resolve_vms(body.vms)
        vms = [vm for vm in found if in_scope(scope, vm)]
        known = {ref for vm in vms for ref in (vm.id, vm.name)}
        missing = [ref for ref in dict.fromkeys(body.vms) if ref not in known]
        if missing:
            raise RequestError(404, f"unknown VM(s): {', '.join(missing[:20])}")
        if body.cluster is not None:
            members = await store.vms_where(cluster=body.cluster)
            members = [vm for vm in members if in_scope(scope, vm)]
            if not members and not body.vms:
                raise RequestError(404, f"virtual cluster {body.cluster!r} has no VMs")
            seen = {vm.id for vm in vms}
            vms += [vm for vm in members if vm.id not in seen]
        if not vms:
            raise RequestError(422, "name the VMs to act on (ids or names) or a --cluster")
        return vms

    def _check_capabilities(self, kind: OpKind, sorted_: Triage, strict: bool) -> None:
        """VMs whose node's driver cannot do ``kind`` are refused: each alone (moved from
        ``go`` to ``refused``), or the whole request (409) when it is ``strict`` or no VM
        is left to act on."""
        needed = NEEDS_CAPABILITY.get(kind)
        if needed is None:
            return
        for vm in list(sorted_.go):
            node = self.crew.nodes.get(vm.node or "")
            if node is not None and node.capabilities and needed not in node.capabilities:
                why = (
                    f"cannot {kind.value} {vm.name}: the {node.driver} "
                    f"driver of node {node.name} cannot {needed.value}"
                )
                if strict:
                    raise RequestError(409, f"{why}; nothing was changed")
                sorted_.go.remove(vm)
                sorted_.refused[vm.id] = why
        if sorted_.refused and not sorted_.go:
            reasons = list(sorted_.refused.values())
            raise RequestError(
                409,
                "; ".join(reasons[:10])
                + (f" (and {len(reasons) - 10} more)" if len(reasons) > 10 else "")
                + "; nothing was changed",
            )

    def _check_node(self, name: str | None) -> None:
        if name is not None and self.crew.nodes.get(name) is None:
            raise RequestError(404, f"unknown node {name!r}")

    def check_target_node(self, req: OpRequest, vms: list[VM]) -> None:
        target = req.target_node
        if req.kind not in (OpKind.MIGRATE, OpKind.START) or target is None:
            return
        self._check_node(target)
        here = [vm.name for vm in vms if vm.node == target]
        if here:
            raise RequestError(409, f"{', '.join(here)} already on node {target}")

    # --- plugins' say --------------------------------------------------------------------

    async def request_hooks(self, op: Operation, req: OpRequest) -> None:
        """Run the request hooks, check again what they may have changed, and (unless a
        dry run) fire ``request`` and ``<op>_request``."""
        try:
            await self.crew.plugins.run_request_hooks(req)
        except (Vetoed, PluginError) as exc:
            raise await self.plugin_refused(op, exc, record=not req.dry_run) from exc
        _check_kwargs(req.kwargs)
        self._check_node(req.node)
        self._check_node(req.target_node)
        if req.dry_run:
            return
        data = req.model_dump(mode="json", exclude={"principal"})
        for name in ("request", f"{req.kind.value}_request"):
            await self.crew.bus.emit(name, operation_id=op.id, principal=op.principal, data=data)

    async def plugin_refused(
        self, op: Operation, exc: Vetoed | PluginError, *, record: bool
    ) -> RequestError:
        """A plugin vetoed ``op``, or failed (a broken policy plugin refuses too: 403): the
        error for the caller, after recording the operation as vetoed or failed."""
        if record:
            status = OpStatus.VETOED if isinstance(exc, Vetoed) else OpStatus.FAILED
            await self.crew.end_unrun(op, status, str(exc), new=True)
        return RequestError(
            403,
            f"{exc}; nothing was changed",
            {"operation": op.model_dump(mode="json")},
            recorded=record,
        )
