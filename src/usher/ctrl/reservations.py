"""What the VM records reserve on each node, kept in memory, and a log of what changed.

The scheduler needs, for every placement, what each node's VM records already hold. Summing
that in the database (a GROUP BY over every VM) costs milliseconds per request on a large
cluster; instead the store applies every VM record it commits to :class:`Reservations`, which
also marks each node whose reservation changes in a :class:`ChangeLog`. The node registry
marks node records that change in the same log. The scheduler's placement index reads the
log to update only those nodes between two requests (``usher.plugins.scheduler_index``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

from usher.model import VMState

STOPPED = VMState.STOPPED.value
MOVING = frozenset({VMState.MIGRATING.value, VMState.LOST.value})
"""States in which a VM's ``target_node`` holds room there: migrating, or lost by a
migration whose target may have it (a stale ``target_node`` holds nothing)."""


class Changes(Protocol):
    """What the controller tells the scheduler about its snapshot between two requests."""

    @property
    def generation(self) -> int:
        """Grows whenever a node record or a node's reservation changes."""
        ...

    def since(self, generation: int) -> Collection[str] | None:
        """Names of the nodes whose record (added or replaced) or ``reserved`` entry may have
        changed after ``generation``; ``None`` if that is no longer known."""
        ...


class ChangeLog:
    """A :class:`Changes`: :meth:`mark` a node's name whenever its record or reservation
    changes; keeps the last ``keep`` marks (a reader further behind starts over)."""

    def __init__(self, keep: int = 65536) -> None:
        self._names: list[str] = []
        self._base = 0  # generation of self._names[0]
        self._keep = keep

    @property
    def generation(self) -> int:
        return self._base + len(self._names)

    def mark(self, *names: str) -> None:
        self._names.extend(names)
        if len(self._names) > 2 * self._keep:
            drop = len(self._names) - self._keep
            del self._names[:drop]
            self._base += drop

    def since(self, generation: int) -> Collection[str] | None:
        if not self._base <= generation <= self.generation:
            return None
        return set(self._names[generation - self._base :])


# what one VM record reserves: (node, cluster, vcpus, memory_mb); None if nothing
_Hold = tuple[str, str | None, int, int]


class Reservations:
    """Per node, what its VM records hold (every VM with a node that is not stopped counts):
    ``{"vms": n, "vcpus": n, "memory_mb": n, "clusters": {cluster: vm count}}``.

    A VM on its way to another node holds there too: from the moment a migration is placed
    (:meth:`promise`, until :meth:`release`) and while its record names that node as its
    ``target_node``. So a node promised to one request is not promised to the next."""

    def __init__(self, changes: ChangeLog) -> None:
        self.changes = changes
        self._by_node: dict[str, dict[str, Any]] = {}
        self._holds: dict[str, _Hold] = {}
        self._promised: dict[str, _Hold] = {}  # vm id: hold on the node it is moving to
        self._targets: dict[str, _Hold] = {}  # vm id: hold on its record's target_node

    @property
    def by_node(self) -> Mapping[str, Mapping[str, Any]]:
        """The live table: read it, do not change it (:meth:`copy` for a copy to change)."""
        return self._by_node

    def copy(self) -> dict[str, dict[str, Any]]:
        return {
            node: {**used, "clusters": dict(used["clusters"])}
            for node, used in self._by_node.items()
        }

    def apply(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """VM records as committed (``vms`` table rows: ``id``, ``node``, ``state``,
        ``cluster`` and ``spec``)."""
        for row in rows:
            hold: _Hold | None = None
            target: _Hold | None = None
            if row["node"] is not None and row["state"] != STOPPED:
                spec = row["spec"]
                hold = (row["node"], row["cluster"], spec["vcpus"], spec["memory_mb"])
                if row.get("target_node") is not None and row["state"] in MOVING:
                    target = (row["target_node"], *hold[1:])
            vm_id = row["id"]
            self._set(vm_id, hold)
            if target is None:
                was_moving = self._targets.pop(vm_id, None) is not None
            else:
                self._targets[vm_id] = target
                was_moving = True
            if was_moving or vm_id in self._promised:  # (most rows: no move, no work)
                self._set_moving(vm_id)

    def forget(self, vm_id: str) -> None:
        """A VM record deleted."""
        self._set(vm_id, None)
        self._targets.pop(vm_id, None)
        self._set_moving(vm_id)

    def promise(
        self, vm_id: str, node: str, cluster: str | None, vcpus: int, memory_mb: int
    ) -> None:
        """Hold room on ``node`` for VM ``vm_id``, which a migration placed there."""
        self._promised[vm_id] = (node, cluster, vcpus, memory_mb)
        self._set_moving(vm_id)

    def is_promised(self, vm_id: str) -> bool:
        """Whether a placement holds room for ``vm_id`` somewhere it is moving to."""
        return vm_id in self._promised

    def release(self, vm_id: str) -> None:
        """The migration :meth:`promise` held room for is over (its record says where the
        VM is now)."""
        if self._promised.pop(vm_id, None) is not None:
            self._set_moving(vm_id)

    def _set_moving(self, vm_id: str) -> None:
        """The hold of ``vm_id`` on the node it moves to: its record's target, else what a
        placement promised (one hold, not both: they are the same move)."""
        hold = self._targets.get(vm_id) or self._promised.get(vm_id)
        here = self._holds.get(vm_id)
        if hold is not None and here is not None and hold[0] == here[0]:
            hold = None  # it has arrived: its record holds the room now
        self._set(f"{vm_id}>", hold)

    def _set(self, vm_id: str, hold: _Hold | None) -> None:
        old = self._holds.pop(vm_id, None)
        if old == hold:
            if hold is not None:
                self._holds[vm_id] = hold
            return
        if old is not None:
            self._add(old, -1)
            self.changes.mark(old[0])
        if hold is not None:
            self._holds[vm_id] = hold
            self._add(hold, 1)
            self.changes.mark(hold[0])

    def _add(self, hold: _Hold, sign: int) -> None:
        node, cluster, vcpus, memory_mb = hold
        used = self._by_node.setdefault(
            node, {"vms": 0, "vcpus": 0, "memory_mb": 0, "clusters": {}}
        )
        used["vms"] += sign
        used["vcpus"] += sign * vcpus
        used["memory_mb"] += sign * memory_mb
        if cluster is not None:
            clusters = used["clusters"]
            clusters[cluster] = clusters.get(cluster, 0) + sign
            if not clusters[cluster]:
                del clusters[cluster]
        if not used["vms"]:
            del self._by_node[node]
