"""Which operation may start from which VM state, what it shows while it runs and after,
and which driver capability it needs: the one table every phase consults."""

from __future__ import annotations

from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.model import (
    TRANSITIONAL_STATES,
    VM,
    Capability,
    Operation,
    OpKind,
    VMState,
)

S = VMState
TRANSITIONAL = TRANSITIONAL_STATES
"""States an operation (or a node that has not reported yet) is expected to move a VM out of."""

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

NEEDS_CAPABILITY: dict[OpKind, Capability] = {
    OpKind.PAUSE: Capability.PAUSE,
    OpKind.RESUME: Capability.PAUSE,
    OpKind.REBOOT: Capability.REBOOT,
    OpKind.MIGRATE: Capability.LIVE_MIGRATE,
}


def check_admissible(kind: OpKind, vms: list[VM]) -> None:
    """Refuse (409, naming up to ten) if any of ``vms`` is in a state ``kind`` cannot start
    from."""
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


def check_still_admissible(op: Operation, vm: VM) -> None:
    """At the start of a step: the VM may have changed since the request was admitted."""
    if vm.state not in TRANSITIONS[op.kind][0]:
        raise StepFailed(f"cannot {op.kind.value} {vm.name}: it is {vm.state.value} now")
