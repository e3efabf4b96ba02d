"""A placement index kept across requests, so that placing one VM looks at a few nodes.

:func:`usher.plugins.scheduler_place.place` builds a slot for every node of the snapshot on
every request: ~6 µs a node. The index keeps those slots between requests, sorted by an exact
integer key per capacity class (nodes with the same vcpu and memory limits), and updates only
the nodes the caller says changed. A one-VM request then walks each class from its best key
and stops at the first node that passes the filters and has room.

How the caller says what changed: it passes a :class:`Changes` (one long-lived object, such as
a :class:`ChangeLog`) with a snapshot that is complete (every node, nothing excluded) and
``reserved`` exactly as the records hold it. The index remembers the generation it last read
and asks ``since(generation)`` for the names whose node record or reservation may differ;
anything it cannot trust (another ``Changes`` object, a generation the log no longer holds, a
snapshot whose nodes do not match) makes it rebuild from the whole snapshot or step aside.

Why the order is exact. In a class with limits ``cv`` and ``cm`` (at least 1 each, as the
scorer uses them), a node's usage shares after taking a VM of ``vc`` vcpus and ``mm`` MB are
``v = (uv + vc) / cv`` and ``m = (um + mm) / cm``, so ``(v + m) * cv * cm = X + const`` with
``X = uv * cm + um * cv`` and ``(v - m) * cv * cm = D + const`` with ``D = uv * cm - um * cv``:
``spread`` prefers the lowest ``X``, ``pack`` the highest, ``balanced`` the ``D`` nearest
``T = mm * cv - vc * cm``. Distinct integer keys differ by at least ``1 / (cv * cm)`` in the
shares, far more than floating-point rounding, so the scorer orders them the same way; nodes
with equal keys but other usage are all scored, and nodes with the same usage score the same,
so the first by name stands for them. The chosen node is the one :func:`place` would choose.

Served by the index: one VM, a scheduler config with exactly one weigher weighted above 0, no
affinity. Everything else, and any request the index finds no node for (the full computation
then says why), goes to :func:`place`.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Collection, Iterator, Mapping
from typing import Any, Protocol

from usher.model import Node, VMSpec
from usher.plugins.scheduler_config import SchedulerConfig
from usher.plugins.scheduler_filters import Constraints, Slot, _state
from usher.plugins.scheduler_place import scorer

Key = tuple[int, int, str]  # (X or D, used vcpus, name): (key, used vcpus) fixes the usage
EMPTY: Mapping[str, Any] = {}


class Changes(Protocol):
    """What the caller tells the scheduler about its snapshot (see the module docstring)."""

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
    changes; keeps the last ``keep`` marks (an index further behind rebuilds)."""

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


class _Entry:
    """A node as the index holds it: its slot, its cluster counts, where it is listed."""

    __slots__ = ("clusters", "key", "limits", "node", "slot")

    def __init__(self, node: Node, reserved: Mapping[str, Any], config: SchedulerConfig) -> None:
        self.node = node
        self.slot = slot = Slot(node, reserved, config)
        self.clusters: Mapping[str, int] = reserved.get("clusters") or EMPTY
        self.limits = (slot.cap_v, slot.cap_m)
        self.key: Key | None = None


def only_weigher(config: SchedulerConfig) -> str | None:
    """The one weigher weighted above 0, or ``None`` if there are several."""
    active = [name for name, weight in config.weights.items() if weight > 0]
    return active[0] if len(active) == 1 else None


class PlacementIndex:
    """Usable nodes by capacity class, sorted by the one weigher's key; see the module."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.weigher = only_weigher(config)
        self.score = scorer(config.weights)
        self._source: Changes | None = None
        self._generation = 0
        self._entries: dict[str, _Entry] = {}
        self._position: dict[str, int] = {}  # index of each name in the last snapshot
        self._classes: dict[tuple[int, int], list[Key]] = {}

    def place_one(
        self,
        nodes: list[Node],
        spec: VMSpec,
        reserved: Mapping[str, Mapping[str, Any]],
        want: Constraints,
        changes: Changes,
    ) -> str | None:
        """The node :func:`place` would choose for one VM, or ``None``: the index cannot
        serve this request, or found no node (the full computation answers then)."""
        if self.weigher is None or want.affinity or not self._sync(nodes, reserved, changes):
            return None
        if want.only is not None:
            entry = self._entries.get(want.only)
            ok = entry is not None and entry.key is not None and self._passes(entry, spec, want)
            return want.only if ok else None
        best: tuple[float, str] | None = None
        for limits, listed in self._classes.items():
            found = self._best_in_class(limits, listed, spec, want)
            if found is not None and (best is None or found < best):
                best = found
        return best[1] if best is not None else None

    # --- keeping the index ---------------------------------------------------------------

    def _sync(
        self, nodes: list[Node], reserved: Mapping[str, Mapping[str, Any]], changes: Changes
    ) -> bool:
        """Bring the index to ``changes.generation``; ``False`` (and forget everything) if
        the snapshot is not one the index can trust."""
        generation = changes.generation
        names = changes.since(self._generation) if changes is self._source else None
        if names is None:
            self._rebuild(nodes, reserved)
        else:
            for name in names:
                position = self._position.get(name)
                if position is None or position >= len(nodes) or nodes[position].name != name:
                    self._position = {node.name: i for i, node in enumerate(nodes)}
                    position = self._position.get(name)
                if position is None:  # a node left the snapshot (excluded by the caller?)
                    self._forget()
                    return False
                self._put(nodes[position], reserved.get(name, EMPTY))
        if len(self._entries) != len(nodes):  # a node missing that the log did not name
            self._forget()
            return False
        self._source, self._generation = changes, generation
        return True

    def _forget(self) -> None:
        self._source = None
        self._entries.clear()
        self._position.clear()
        self._classes.clear()

    def _rebuild(self, nodes: list[Node], reserved: Mapping[str, Mapping[str, Any]]) -> None:
        self._forget()
        self._position = {node.name: i for i, node in enumerate(nodes)}
        for node in nodes:
            self._put(node, reserved.get(node.name, EMPTY))

    def _put(self, node: Node, reserved: Mapping[str, Any]) -> None:
        """(Re)place ``node`` with what ``reserved`` holds on it."""
        old = self._entries.get(node.name)
        if old is not None and old.key is not None:
            listed = self._classes[old.limits]
            del listed[bisect_left(listed, old.key)]
            if not listed:
                del self._classes[old.limits]
        entry = self._entries[node.name] = _Entry(node, reserved, self.config)
        slot = entry.slot
        # listed only if it may take some VM: up, under the VM limit, a vcpu and 1 MB free
        if _state(node) is None and slot.fits(1, 1):
            cv, cm = max(slot.cap_v, 1), max(slot.cap_m, 1)
            if self.weigher == "balanced":
                value = slot.used_v * cm - slot.used_m * cv
            else:
                value = slot.used_v * cm + slot.used_m * cv
            entry.key = (value, slot.used_v, node.name)
            insort(self._classes.setdefault(entry.limits, []), entry.key)

    # --- answering -----------------------------------------------------------------------

    def _passes(self, entry: _Entry, spec: VMSpec, want: Constraints) -> bool:
        """The request's filters and room, for a listed node (so one that is up)."""
        labels = entry.node.labels
        return (
            entry.slot.fits(spec.vcpus, spec.memory_mb)
            and all(labels.get(k) == v for k, v in want.labels.items())
            and not (
                want.anti_affinity
                and want.cluster is not None
                and entry.clusters.get(want.cluster, 0)
            )
        )

    def _runs(
        self, limits: tuple[int, int], listed: list[Key], spec: VMSpec
    ) -> Iterator[tuple[int, int, int]]:
        """``(distance, start, end)``: runs of ``listed`` with one usage each, from the best
        key for this weigher (distance 0 or least) outwards; equal distance, equal score."""
        cv, cm = max(limits[0], 1), max(limits[1], 1)
        if self.weigher == "balanced":
            target = spec.memory_mb * cv - spec.vcpus * cm
            split = bisect_left(listed, (target,))
            up = ((k - target, s, e) for k, s, e in _ascending(listed, split, len(listed)))
            down = ((target - k, s, e) for k, s, e in _descending(listed, 0, split))
            yield from heapq.merge(up, down)
            return
        # room for the VM needs (cv - uv) * cm + (cm - um) * cv >= vc * cm + mm * cv
        top = bisect_left(listed, (2 * cv * cm - spec.vcpus * cm - spec.memory_mb * cv + 1,))
        if self.weigher == "spread":
            yield from _ascending(listed, 0, top)
        else:
            yield from ((-k, s, e) for k, s, e in _descending(listed, 0, top))

    def _best_in_class(
        self, limits: tuple[int, int], listed: list[Key], spec: VMSpec, want: Constraints
    ) -> tuple[float, str] | None:
        """``(-score, name)`` of the best node of one capacity class, or ``None``."""
        best: tuple[float, str] | None = None
        best_distance = 0
        for distance, start, end in self._runs(limits, listed, spec):
            if best is not None and distance > best_distance:
                break
            for i in range(start, end):
                entry = self._entries[listed[i][2]]
                if self._passes(entry, spec, want):
                    found = (-self.score(entry.slot, spec.vcpus, spec.memory_mb), entry.slot.name)
                    if best is None or found < best:
                        best, best_distance = found, distance
                    break  # the rest of the run scores the same, under later names
        return best


def _ascending(listed: list[Key], lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """``(key, start, end)`` of each run of one (key, used vcpus) in ``listed[lo:hi]``."""
    while lo < hi:
        key, used_v, _ = listed[lo]
        end = bisect_left(listed, (key, used_v + 1), lo, hi)
        yield key, lo, end
        lo = end


def _descending(listed: list[Key], lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
    """As :func:`_ascending`, from the highest key down (each run still ``start < end``)."""
    while hi > lo:
        key, used_v, _ = listed[hi - 1]
        start = bisect_left(listed, (key, used_v), lo, hi)
        yield key, start, hi
        hi = start
