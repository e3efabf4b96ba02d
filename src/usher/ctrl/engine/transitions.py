"""Which operation may start from which VM state, what it shows while it runs and after,
and which driver capability it needs: the one table every phase consults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

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
    # a resize leaves the state as it is; vCPUs and memory change only while stopped
    OpKind.RESIZE: (frozenset({S.RUNNING, S.PAUSED, S.STOPPED}), None, None),
    # snapshots and copies leave the VM's state as it is; a revert needs it stopped
    OpKind.SNAPSHOT: (frozenset({S.RUNNING, S.PAUSED, S.STOPPED}), None, None),
    OpKind.SNAPSHOT_REVERT: (frozenset({S.STOPPED}), None, None),
    OpKind.SNAPSHOT_DELETE: (frozenset({S.RUNNING, S.PAUSED, S.STOPPED}), None, None),
    OpKind.IMAGE_FROM_VM: (frozenset({S.RUNNING, S.PAUSED, S.STOPPED}), None, None),
    # a clone's step works on the new VM (its source: see COPY_SOURCE)
    OpKind.CLONE: (frozenset({S.PENDING}), S.STARTING, S.RUNNING),
}

ALREADY: dict[OpKind, VMState] = {
    OpKind.START: S.RUNNING,
    OpKind.STOP: S.STOPPED,
    OpKind.PAUSE: S.PAUSED,
    OpKind.RESUME: S.RUNNING,
}
"""The state an action means to reach, for the actions a VM already in it can skip."""

ON_ITS_WAY: dict[OpKind, VMState] = {OpKind.START: S.STARTING, OpKind.STOP: S.STOPPING}
"""The state of a VM that another operation is taking where an action leads: the action
goes ahead, and its step (which waits for the other one's) skips the VM once it is there."""

DESIRED: dict[OpKind, VMState] = {
    **ALREADY,
    OpKind.REBOOT: S.RUNNING,
    OpKind.CYCLE: S.RUNNING,
    OpKind.CLONE: S.RUNNING,
}
"""The state a VM's user wants it in after asking for each action (``desired_state``)."""

ALL_OR_NOTHING = frozenset({OpKind.MIGRATE})
"""Actions refused as a whole if any VM cannot take them (a migration's VMs are placed in
one decision); the others skip VMs already there and go on without those that cannot."""

NEEDS_CAPABILITY: dict[OpKind, Capability] = {
    OpKind.PAUSE: Capability.PAUSE,
    OpKind.RESUME: Capability.PAUSE,
    OpKind.REBOOT: Capability.REBOOT,
    OpKind.MIGRATE: Capability.LIVE_MIGRATE,
    OpKind.SNAPSHOT: Capability.SNAPSHOT,
    OpKind.SNAPSHOT_REVERT: Capability.SNAPSHOT,
    OpKind.SNAPSHOT_DELETE: Capability.SNAPSHOT,
    OpKind.IMAGE_FROM_VM: Capability.SNAPSHOT,
    OpKind.CLONE: Capability.SNAPSHOT,
}

OWN_ROUTES = frozenset(
    {
        OpKind.SNAPSHOT,
        OpKind.SNAPSHOT_REVERT,
        OpKind.SNAPSHOT_DELETE,
        OpKind.CLONE,
        OpKind.IMAGE_FROM_VM,
        OpKind.RESIZE,
    }
)
"""Operations asked for through routes of their own (they name a snapshot, a new VM or an
image), never as an action on many VMs."""

COPY_SOURCE = frozenset({S.STOPPED})
"""The states a VM whose disks are copied as they are (a clone's source, an image's) may be
in; a copy of one of its snapshots may be made in any state :data:`TRANSITIONS` lets a
snapshot be taken in."""


@dataclass
class Triage:
    """The VMs of an action sorted by their state: those it runs on, those already where
    it leads (with why they are skipped), those it cannot run on (with why not)."""

    go: list[VM] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def triage(
    kind: OpKind, vms: list[VM], strict: bool, under_way: Callable[[VM], bool] = lambda _: False
) -> Triage:
    """Sort ``vms`` for ``kind``. Strict (or an all-or-nothing action): refuse (409) if any
    VM is not in a state ``kind`` starts from, as :func:`check_admissible`. Otherwise skip
    VMs already in the state ``kind`` leads to, let through VMs :data:`ON_ITS_WAY` there
    for which ``under_way`` says another operation is taking them, and refuse the action as
    a whole only if no VM is left to act on and some cannot take it."""
    if strict or kind in ALL_OR_NOTHING:
        check_admissible(kind, vms)
        return Triage(go=list(vms))
    allowed, already = TRANSITIONS[kind][0], ALREADY.get(kind)
    sorted_ = Triage()
    for vm in vms:
        if vm.state is already:
            sorted_.skipped[vm.id] = already_there(vm)
        elif vm.state in allowed or (vm.state is ON_ITS_WAY.get(kind) and under_way(vm)):
            sorted_.go.append(vm)
        else:
            sorted_.refused[vm.id] = _cannot(kind, vm)
    if sorted_.refused and not sorted_.go:
        check_admissible(kind, vms)
    return sorted_


def already_there(vm: VM) -> str:
    """Why an action skips ``vm``."""
    return f"{vm.name} is {vm.state.value} already"


def _cannot(kind: OpKind, vm: VM) -> str:
    wanted = ", ".join(sorted(s.value for s in TRANSITIONS[kind][0]))
    return f"cannot {kind.value} {vm.name}: it is {vm.state.value} ({kind.value} needs {wanted})"


def check_admissible(kind: OpKind, vms: list[VM]) -> None:
    """Refuse (409, naming up to ten) if any of ``vms`` is in a state ``kind`` cannot start
    from."""
    allowed = TRANSITIONS[kind][0]
    already = ALREADY.get(kind)
    bad = [
        f"{vm.name} is {vm.state.value}{' already' if vm.state is already else ''}"
        for vm in vms
        if vm.state not in allowed
    ]
    if bad:
        wanted = ", ".join(sorted(s.value for s in allowed))
        raise RequestError(
            409,
            f"cannot {kind.value}: {'; '.join(bad[:10])}"
            + (f" (and {len(bad) - 10} more)" if len(bad) > 10 else "")
            + f" — {kind.value} needs a VM that is {wanted}; nothing was changed",
        )


def copy_source_problem(kind: OpKind, vm: VM, snapshot: str | None) -> str | None:
    """Why ``vm``'s disks (or its ``snapshot``'s) cannot be copied by ``kind`` (a clone, an
    image) now, or None."""
    if snapshot is not None:
        if vm.state not in TRANSITIONS[OpKind.SNAPSHOT][0]:
            return f"cannot copy {vm.name}: it is {vm.state.value}"
        if all(snap.name != snapshot for snap in vm.snapshots):
            return f"{vm.name} has no snapshot {snapshot!r}"
        return None
    if vm.state not in COPY_SOURCE:
        return (
            f"cannot {kind.value.replace('_', ' ')} {vm.name} as it is: it is "
            f"{vm.state.value}; stop it first, or name one of its snapshots"
        )
    return None


def check_still_admissible(op: Operation, vm: VM) -> None:
    """At the start of a step: the VM may have changed since the request was admitted."""
    if vm.state not in TRANSITIONS[op.kind][0]:
        raise StepFailed(f"cannot {op.kind.value} {vm.name}: it is {vm.state.value} now")
