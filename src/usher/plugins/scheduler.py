"""Built-in scheduler: filters that reject nodes, weighers that rank the rest.

Placement is a pure function of (cluster snapshot, request): :func:`place` can run offline and
says, for every node it did not use, which filter rejected it and why (``"<filter>: <reason>"``,
what ``--dry-run`` prints). ``start -n N`` is placed as a gang: all N VMs fit or none starts.

Config, all keys optional::

    [plugins.scheduler]
    weigher = "fit"               # the default; shortcut for weighers = {fit = 1.0}
    weighers = {spread = 1.0, balanced = 0.5}   # instead of weigher: summed, weighted scores
    vcpu_ratio = 4.0              # overcommit: capacity * ratio can be reserved (default 1.0)
    memory_ratio = 1.0
    max_vms_per_node = 20         # default: unlimited
    memory_per_vcpu = 1.5         # GiB per vCPU the fit weigher expects of VMs (default 1.5)

Weighers: ``fit`` (the node where the VM strands the least memory or vCPUs, then the fullest,
then the one with the fewest VMs: large holes stay open for large VMs; see
:func:`~usher.plugins.scheduler_place.fit`), ``spread`` (the emptiest node), ``pack`` (the
fullest node that fits), ``balanced`` (the node whose vcpu and memory usage shares stay
closest to each other). Unknown keys, unknown weighers and ratios that are not numbers above
0 stop the controller at start.

Filters, in order: ``request`` (the node asked for with ``--node``), ``state`` (up, connected,
not drained), ``labels``, ``affinity`` / ``anti-affinity``, ``max-vms``, ``capacity``. A
request (or, for a migration, the VM's own start request) chooses with its kwargs:

* ``labels = {"k": "v"}``: only nodes carrying all these labels;
* ``anti_affinity = true``: the request's VMs on distinct nodes, none on a node that already
  runs VMs of the request's virtual cluster;
* ``affinity = true``: all on one node, the one already running VMs of the cluster if any.

A caller that passes ``changes`` (a :class:`~usher.plugin.Changes`: what
changed since an earlier call) gets one-VM requests answered from a
:class:`~usher.plugins.scheduler_index.PlacementIndex` kept across requests, which looks at a
few nodes rather than all; the answer is the one :func:`place` gives, without the
``rejected`` explanations (a dry run, or a request nothing fits, is answered by :func:`place`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from usher.model import Node, OpRequest, Placement, VMSpec
from usher.plugin import Changes, hookimpl
from usher.plugins.scheduler_config import WEIGHERS, SchedulerConfig
from usher.plugins.scheduler_filters import Constraints
from usher.plugins.scheduler_index import PlacementIndex
from usher.plugins.scheduler_place import place

__all__ = [
    "WEIGHERS",
    "Constraints",
    "PlacementIndex",
    "Scheduler",
    "SchedulerConfig",
    "place",
]


class Scheduler:
    """The plugin: checks its config once, then answers ``schedule`` from its placement
    index where it can and with :func:`place` otherwise."""

    def __init__(self) -> None:
        self.config = SchedulerConfig()
        self.index = PlacementIndex(self.config)

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        self.config = SchedulerConfig.parse(config)
        self.index = PlacementIndex(self.config)

    @hookimpl
    def schedule(
        self,
        nodes: list[Node],
        specs: list[VMSpec],
        request: OpRequest,
        reserved: Mapping[str, Mapping[str, Any]],
        changes: Changes | None,
    ) -> Placement:
        """``changes``: see the module docstring."""
        try:
            want = Constraints.of(request, specs)
        except ValueError as exc:
            return Placement(error=f"scheduler: {exc}")
        if changes is not None and len(specs) == 1 and not request.dry_run:
            name = self.index.place_one(nodes, specs[0], reserved, want, changes)
            if name is not None:
                return Placement(nodes=[name])
        # a real request needs the nodes, a dry run the reasons for every other node too
        return place(nodes, specs, reserved, self.config, want, explain=request.dry_run)
