"""A placement index kept across requests, so that placing one VM looks at a few nodes.

:func:`usher.plugins.scheduler_place.place` builds a slot for every node of the snapshot on
every request: ~6 µs a node. The index keeps those slots between requests and updates only
the nodes the caller says changed. For each VM size and set of required labels asked for
lately it keeps a *view*: the nodes that are up, carry the labels and have room for one VM of
that size, sorted by ``(-score, name)`` — the very key :func:`place` ranks them by, so the
view's first node that passes the remaining filter (anti-affinity) is the node :func:`place`
would choose, for any weighers and capacities. A view too is brought up to date lazily, from
the change log, when its size is asked for again.

How the caller says what changed: it passes a :class:`Changes` (one long-lived object, such as
a :class:`ChangeLog`) with a snapshot that is complete (every node, nothing excluded) and
``reserved`` exactly as the records hold it. The index remembers the generation it last read
and asks ``since(generation)`` for the names whose node record or reservation may differ;
anything it cannot trust (another ``Changes`` object, a generation the log no longer holds, a
snapshot whose nodes do not match) makes it rebuild from the whole snapshot or step aside.

Served by the index: one VM without affinity. Everything else, and any request the index
finds no node for (the full computation then says why), goes to :func:`place`.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from usher.model import Node, VMSpec
from usher.plugin import Changes
from usher.plugins.scheduler_config import SchedulerConfig
from usher.plugins.scheduler_filters import Constraints, Slot, unusable_state
from usher.plugins.scheduler_place import scorer

EMPTY: Mapping[str, Any] = {}
VIEWS = 16  # (size, labels) views kept; each holds a key per node that can take the VM


class _Entry:
    """A node as the index holds it: its slot and its cluster counts."""

    __slots__ = ("clusters", "node", "slot")

    def __init__(self, node: Node, reserved: Mapping[str, Any], config: SchedulerConfig) -> None:
        self.node = node
        self.slot = Slot(node, reserved, config)
        self.clusters: Mapping[str, int] = reserved.get("clusters") or EMPTY


class _View:
    """The nodes that can take one VM of a size and carry some labels, best first."""

    __slots__ = ("generation", "keys", "order")

    def __init__(self) -> None:
        self.generation: int | None = None  # None: to be built
        self.keys: dict[str, tuple[float, str]] = {}
        self.order: list[tuple[float, str]] = []


class PlacementIndex:
    """Slots kept across requests, and views of them per VM size and labels; see the module."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.score = scorer(config)
        self._source: Changes | None = None
        self._generation = 0
        self._entries: dict[str, _Entry] = {}
        self._position: dict[str, int] = {}  # index of each name in the last snapshot
        self._views: OrderedDict[tuple[int, int, frozenset[tuple[str, str]]], _View] = OrderedDict()

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
        if want.affinity or not self._sync(nodes, reserved, changes):
            return None
        if want.only is not None:
            entry = self._entries.get(want.only)
            ok = entry is not None and self._key(entry, spec, want.labels) is not None
            return want.only if ok and not self._apart(entry, want) else None
        for _, name in self._view(spec, want.labels, changes).order:
            if not self._apart(self._entries[name], want):
                return name
        return None

    # --- keeping the index ---------------------------------------------------------------

    def _sync(
        self, nodes: list[Node], reserved: Mapping[str, Mapping[str, Any]], changes: Changes
    ) -> bool:
        """Bring the slots to ``changes.generation``; ``False`` (and forget everything) if
        the snapshot is not one the index can trust."""
        generation = changes.generation
        names = changes.since(self._generation) if changes is self._source else None
        if names is None:
            self._forget()
            self._position = {node.name: i for i, node in enumerate(nodes)}
            for node in nodes:
                self._entries[node.name] = _Entry(node, reserved.get(node.name, EMPTY), self.config)
        else:
            for name in names:
                position = self._position.get(name)
                if position is None or position >= len(nodes) or nodes[position].name != name:
                    self._position = {node.name: i for i, node in enumerate(nodes)}
                    position = self._position.get(name)
                if position is None:  # a node left the snapshot (excluded by the caller?)
                    self._forget()
                    return False
                node = nodes[position]
                self._entries[name] = _Entry(node, reserved.get(name, EMPTY), self.config)
        if len(self._entries) != len(nodes):  # a node missing that the log did not name
            self._forget()
            return False
        self._source, self._generation = changes, generation
        return True

    def _forget(self) -> None:
        self._source = None
        self._entries.clear()
        self._position.clear()
        self._views.clear()

    def _view(self, spec: VMSpec, labels: Mapping[str, str], changes: Changes) -> _View:
        """The view for ``spec``'s size and ``labels``, brought up to the slots' generation."""
        wanted = (spec.vcpus, spec.memory_mb, frozenset(labels.items()))
        view = self._views.get(wanted)
        if view is None:
            view = self._views[wanted] = _View()
            if len(self._views) > VIEWS:
                self._views.popitem(last=False)
        self._views.move_to_end(wanted)
        names = None if view.generation is None else changes.since(view.generation)
        if names is None:
            view.keys = {
                name: key
                for name, entry in self._entries.items()
                if (key := self._key(entry, spec, labels)) is not None
            }
            view.order = sorted(view.keys.values())
        else:
            for name in names:
                old = view.keys.pop(name, None)
                if old is not None:
                    del view.order[bisect_left(view.order, old)]
                key = self._key(self._entries[name], spec, labels)
                if key is not None:
                    view.keys[name] = key
                    insort(view.order, key)
        view.generation = self._generation
        return view

    # --- answering -----------------------------------------------------------------------

    def _key(
        self, entry: _Entry, spec: VMSpec, labels: Mapping[str, str]
    ) -> tuple[float, str] | None:
        """``(-score, name)`` if the node is up, carries ``labels`` and has room for one VM
        of ``spec``'s size (so it belongs to that view), else ``None``."""
        slot, node = entry.slot, entry.node
        if (
            not slot.fits(spec.vcpus, spec.memory_mb)
            or unusable_state(node) is not None
            or any(node.labels.get(k) != v for k, v in labels.items())
        ):
            return None
        return (-self.score(slot, spec.vcpus, spec.memory_mb), slot.name)

    @staticmethod
    def _apart(entry: _Entry, want: Constraints) -> bool:
        """Does anti-affinity keep the request off this node (it runs the cluster's VMs)?"""
        return bool(
            want.anti_affinity and want.cluster is not None and entry.clusters.get(want.cluster)
        )
