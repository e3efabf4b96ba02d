"""Running operations: launch one step per VM, run them (one at a time per VM, at most
``max_parallel`` at once), record each outcome, cancel, time out, and wait for the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError, StepCancelled, StepFailed, StepLost
from usher.ctrl.engine.transitions import ALREADY, DESIRED, TRANSITIONAL, already_there
from usher.ctrl.nodes import CommandFailed, NodeGone, NodeLink
from usher.model import VM, Operation, OpKind, OpStatus, VMState, new_id, now

log = logging.getLogger("usher.engine")

Step = Callable[[Operation, VM], Awaitable[dict[str, Any] | None]]
"""One VM's part of an operation: its details for the operation's result, or None."""


@dataclass
class _Run:
    """What the runner tracks of a live operation, for cancel and timeouts."""

    timeout: float
    cancelled: set[str] = field(default_factory=set)  # VMs whose step is being cancelled
    waiting: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # steps not begun
    running: set[str] = field(default_factory=set)
    inflight: dict[str, tuple[NodeLink, str, str]] = field(default_factory=dict)  # link, id, action


FINISHED_KEPT = 10_000
"""Operations that ended here kept in memory for readers (an operation's waiter asks for it
as it ends), newest last; older ones are read from the store."""

HARD_STOP_MARGIN = 30.0
"""Seconds a stop step has beyond the guest's grace, for the hard stop after it."""


class Runner:
    def __init__(self, crew: Crew) -> None:
        self.crew = crew
        self.parallel = asyncio.Semaphore(crew.settings.max_parallel)
        self.live: dict[str, Operation] = {}
        self.finished: OrderedDict[str, Operation] = OrderedDict()  # committed, final
        self._done: dict[str, asyncio.Event] = {}
        self._runs: dict[str, _Run] = {}

    # --- reading and waiting -----------------------------------------------------------

    async def get_op(self, op_id: str) -> Operation:
        op = self.live.get(op_id) or self.finished.get(op_id) or await self.crew.store.get_op(op_id)
        if op is None:
            raise RequestError(404, f"unknown operation {op_id!r}")
        return op.model_copy(deep=True)

    async def wait(self, op_id: str, timeout: float) -> Operation:
        done = self._done.get(op_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout)
        return await self.get_op(op_id)

    def is_cancelled(self, op: Operation, vm_id: str) -> bool:
        """Whether ``vm_id``'s step of ``op`` is being cancelled on request."""
        run = self._runs.get(op.id)
        return run is not None and vm_id in run.cancelled

    # --- launching and running ---------------------------------------------------------

    def step_timeout(self, kind: OpKind, kwargs: dict[str, Any]) -> float:
        """The configured limit of a step of ``kind``; a request's ``timeout`` kwarg may
        shorten it. For ``stop`` that kwarg is the guest's grace before a hard stop: the
        step may then take that long and :data:`HARD_STOP_MARGIN` more."""
        limit = self.crew.settings.op_timeout(kind.value)
        asked = kwargs.get("timeout")
        if not isinstance(asked, int | float) or isinstance(asked, bool) or asked <= 0:
            return limit
        if kind == OpKind.STOP:
            return max(limit, float(asked) + HARD_STOP_MARGIN)
        return min(limit, float(asked))

    def launch(
        self,
        op: Operation,
        step: Step,
        timeout: float,
        after: Callable[[str], None] | None = None,
    ) -> None:
        """Run ``step`` on each of ``op.targets`` in the background; ``after(vm_id)`` is
        called when that VM's part is over, however it ended (even if it never began)."""
        refused = dict(op.result.get("errors", {}))  # VMs refused on admission
        skipped = len(op.result.get("skipped", {}))
        op.result = {
            **op.result,
            "progress": {
                "done": 0,
                "failed": len(refused),
                "cancelled": 0,
                "skipped": skipped,
                "total": len(op.targets) + len(refused) + skipped,
            },
            "errors": refused,
            "timeout": timeout,
        }
        self.live[op.id] = op
        self._done[op.id] = asyncio.Event()
        self._runs[op.id] = _Run(timeout=timeout)
        self.crew.spawn(self._run(op, list(op.targets), step, after), f"op-{op.id}")

    async def _run(
        self, op: Operation, vm_ids: list[str], step: Step, after: Callable[[str], None] | None
    ) -> None:
        progress = op.result["progress"]
        run = self._runs[op.id]
        last_step_end = 0.0
        await self._announce_triage(op)

        async def one(vm_id: str) -> None:
            nonlocal last_step_end
            async with self.parallel, self.crew.locks.hold(vm_id):
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
            finally:
                if after is not None:
                    after(vm_id)

        for vm_id in vm_ids:
            run.waiting[vm_id] = asyncio.ensure_future(guarded(vm_id))
        try:
            await asyncio.gather(*run.waiting.values())
        finally:
            if after is not None:  # (a step cancelled before it began never ran its own)
                for vm_id in vm_ids:
                    after(vm_id)
            self._conclude(op, last_step_end)
            await self.crew.store.update_op(op)
            self._runs.pop(op.id, None)
            self.finished[op.id] = op
            if len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)
            self._done.pop(op.id).set()
            self.live.pop(op.id, None)

    @staticmethod
    def _conclude(op: Operation, last_step_end: float) -> None:
        progress = op.result["progress"]
        failed, cancelled = progress["failed"], progress["cancelled"]
        op.status = (
            OpStatus.FAILED if failed else OpStatus.CANCELLED if cancelled else OpStatus.SUCCEEDED
        )
        if failed:
            first = next(iter(op.result["errors"].values()))
            op.error = f"{failed} of {progress['total']} VMs failed; first: {first}"
        elif cancelled:
            op.error = f"cancelled: {cancelled} of {progress['total']} VMs did not run"
        op.finished_at = last_step_end or now()
        op.started_at = op.started_at or op.finished_at

    async def _run_step(
        self, op: Operation, vm_id: str, step: Step, progress: dict[str, int]
    ) -> None:
        """One VM's part of an operation (under its lock, within the operation's step
        timeout), recorded in the operation."""
        vm = await self.crew.store.get_vm(vm_id)
        timeout = self._runs[op.id].timeout
        if vm is not None:
            await self.want(vm, op.kind)
            if vm.state is ALREADY.get(op.kind):  # another operation got it there meanwhile
                await self._skip(op, vm, progress)
                return
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
            await self._step_failed(op, vm_id, vm, exc, progress)
            return
        progress["done"] += 1
        if details:
            op.result.setdefault("details", {})[vm_id] = details
        await self.crew.bus.emit(
            op.kind.value,
            vm_id=vm_id,
            node=vm.node,
            operation_id=op.id,
            principal=op.principal,
            data=details or {},
        )

    async def _skip(self, op: Operation, vm: VM, progress: dict[str, int]) -> None:
        why = already_there(vm)
        progress["skipped"] += 1
        op.result.setdefault("skipped", {})[vm.id] = why
        await self.crew.bus.emit(
            op.kind.value,
            vm_id=vm.id,
            node=vm.node,
            operation_id=op.id,
            principal=op.principal,
            data={"skipped": why},
        )

    async def _announce_triage(self, op: Operation) -> None:
        """The VMs admission left alone are part of the operation's story too: one already
        there is a ``<op>`` event with ``skipped``, one that could not take it ``<op>_failure``
        (so that the audit, metrics and webhooks see every VM that was named)."""
        for vm_id, why in op.result.get("skipped", {}).items():
            await self.crew.bus.emit(
                op.kind.value,
                vm_id=vm_id,
                operation_id=op.id,
                principal=op.principal,
                data={"skipped": why},
            )
        for vm_id, why in op.result.get("errors", {}).items():
            await self.crew.bus.emit(
                f"{op.kind.value}_failure",
                vm_id=vm_id,
                operation_id=op.id,
                principal=op.principal,
                data={"error": why},
            )

    async def want(self, vm: VM, kind: OpKind) -> None:
        """Record the state ``vm``'s user wants after asking for ``kind`` (under its lock),
        whether or not the action gets it there."""
        desired = DESIRED.get(kind)
        if desired is not None and vm.desired_state != desired:
            vm.desired_state = desired
            await self.crew.store.update_vm(vm)

    async def _step_failed(
        self, op: Operation, vm_id: str, vm: VM | None, exc: Exception, progress: dict[str, int]
    ) -> None:
        if not isinstance(exc, StepFailed):  # a bug must fail the step, not hang the op
            log.exception("operation %s failed on %s", op.id, vm_id, exc_info=exc)
            try:  # nor leave the VM in a transition no one will finish
                await self._settle_unfinished(op, vm_id, f"failed: internal error: {exc!r}")
            except Exception:
                log.exception("cannot settle %s after that failure", vm_id)
        error = str(exc) if isinstance(exc, StepFailed) else f"internal error: {exc!r}"
        progress["failed"] += 1
        op.result["errors"][vm_id] = error
        await self.crew.bus.emit(
            f"{op.kind.value}_failure",
            vm_id=vm_id,
            node=vm.node if vm else None,
            operation_id=op.id,
            principal=op.principal,
            data={"error": error},
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
        vm = await self.crew.store.get_vm(vm_id)
        if vm is None:
            return
        reason = f"{op.kind.value} {why}"
        try:
            info = await self.crew.nodes.link(vm.node).call(
                "info", vm_id=vm.id, timeout=30, observe=True
            )
            state = VMState(info.get("state", VMState.ERROR))
        except CommandFailed:  # the node does not have it
            state = VMState.STOPPED
        except NodeGone:
            state = VMState.LOST
        if state in TRANSITIONAL:
            state, reason = VMState.ERROR, f"{reason}; its node still reports it {state.value}"
        await self.crew.set_state(vm, state, reason, op)

    # --- what steps send to nodes ------------------------------------------------------

    async def command(
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

    async def call(
        self, op: Operation, vm: VM, action: str, *, undo_state: VMState, **kwargs: Any
    ) -> dict[str, Any]:
        """Send ``action`` for ``vm`` to its node; on failure record the VM's honest state:
        as before (the driver refused, or the node was not there to ask) or ``lost`` (the link
        dropped while the node worked on it)."""
        crew = self.crew
        try:
            link = crew.nodes.link(vm.node)
        except NodeGone as exc:
            await crew.set_state(vm, undo_state, str(exc), op)
            raise StepFailed(f"{vm.name}: {exc}") from exc
        try:
            return await self.command(
                op, vm, link, action, timeout=crew.settings.command_timeout, **kwargs
            )
        except CommandFailed as exc:
            await crew.set_state(vm, undo_state, str(exc), op)
            raise StepFailed(f"{vm.name}: {exc}") from exc
        except NodeGone as exc:
            await crew.set_state(vm, VMState.LOST, str(exc), op)
            raise StepLost(f"{vm.name}: {exc}") from exc

    # --- cancelling --------------------------------------------------------------------

    async def cancel(self, op_id: str) -> Operation:
        """Cancel what can be: steps not begun never run; a running migration is cancelled
        on its source node (the VM stays there); other running steps go on. The answer's
        ``result.cancel`` names the VMs whose steps were cancelled (``cancelled``) and, VM by
        VM, why the others go on (``refused``)."""
        run, op = self._runs.get(op_id), self.live.get(op_id)
        if run is None or op is None:
            found = await self.get_op(op_id)
            raise RequestError(409, f"operation {op_id} is {found.status.value}: nothing to cancel")
        cancelled = list(run.waiting)
        for vm_id, task in list(run.waiting.items()):
            run.cancelled.add(vm_id)
            task.cancel()
        refused: dict[str, str] = {}
        for vm_id in list(run.running):
            why = await self._cancel_running(op, run, vm_id)
            if why is None:
                cancelled.append(vm_id)
            else:
                vm = await self.crew.store.get_vm(vm_id)
                refused[vm_id] = f"{vm.name if vm else vm_id}: {why}"
        op.result["cancel"] = {"cancelled": cancelled, "refused": refused}
        await self.crew.bus.emit(
            "cancel",
            operation_id=op.id,
            principal=op.principal,
            data={"cancelled": cancelled, "refused": refused},
        )
        return op.model_copy(deep=True)

    async def _cancel_running(self, op: Operation, run: _Run, vm_id: str) -> str | None:
        """Cancel ``vm_id``'s running step if it is a migration under way: None if done,
        else why not."""
        inflight = run.inflight.get(vm_id)
        if inflight is None or inflight[2] != "migrate":
            return (
                f"a running {op.kind.value} step cannot be cancelled"
                + (" before its migration has begun" if op.kind == OpKind.MIGRATE else "")
                + "; it goes on"
            )
        link, cmd_id, _action = inflight
        run.cancelled.add(vm_id)
        try:
            answer = await link.call("cancel", args={"command": cmd_id}, timeout=10)
        except (CommandFailed, NodeGone) as exc:
            answer = {"cancelled": False, "error": str(exc)}
        if answer.get("cancelled"):
            return None
        run.cancelled.discard(vm_id)
        return f"node {link.name} could not cancel the migration; it goes on"
