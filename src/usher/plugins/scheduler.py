"""Built-in scheduler: filters that reject nodes, weighers that rank the rest.

Placement is a pure function of (cluster snapshot, request): :func:`place` can run offline and
says, for every node it did not use, which filter rejected it and why (``"<filter>: <reason>"``,
what ``--dry-run`` prints). ``start -n N`` is placed as a gang: all N VMs fit or none starts.

Config, all keys optional::

    [plugins.scheduler]
    weigher = "spread"            # shortcut for weighers = {spread = 1.0}
    weighers = {spread = 1.0, balanced = 0.5}   # instead of weigher: summed, weighted scores
    vcpu_ratio = 4.0              # overcommit: capacity * ratio can be reserved (default 1.0)
    memory_ratio = 1.0
    max_vms_per_node = 20         # default: unlimited

Weighers: ``spread`` (the emptiest node), ``pack`` (the fullest node that fits), ``balanced``
(the node whose vcpu and memory usage shares stay closest to each other). Unknown keys,
unknown weighers and ratios that are not numbers above 0 stop the controller at start.

Filters, in order: ``request`` (the node asked for with ``--node``), ``state`` (up, connected,
not drained), ``labels``, ``affinity`` / ``anti-affinity``, ``max-vms``, ``capacity``. A
request (or, for a migration, the VM's own start request) chooses with its kwargs:

* ``labels = {"k": "v"}``: only nodes carrying all these labels;
* ``anti_affinity = true``: the request's VMs on distinct nodes, none on a node that already
  runs VMs of the request's virtual cluster;
* ``affinity = true``: all on one node, the one already running VMs of the cluster if any.
"""

from __future__ import annotations

from typing import Any

from usher.hookspecs import hookimpl
from usher.model import Node, OpRequest, Placement, VMSpec
from usher.plugins.scheduler_config import WEIGHERS, SchedulerConfig
from usher.plugins.scheduler_filters import Constraints
from usher.plugins.scheduler_place import place

__all__ = ["WEIGHERS", "Constraints", "Scheduler", "SchedulerConfig", "place"]


class Scheduler:
    """The plugin: checks its config once, then answers ``schedule`` with :func:`place`."""

    config: SchedulerConfig = SchedulerConfig()

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        self.config = SchedulerConfig.parse(config)

    @hookimpl
    def schedule(
        self,
        nodes: list[Node],
        specs: list[VMSpec],
        request: OpRequest,
        reserved: dict[str, Any],
    ) -> Placement:
        try:
            want = Constraints.of(request, specs)
        except ValueError as exc:
            return Placement(error=f"scheduler: {exc}")
        # a real request needs the nodes, a dry run the reasons for every other node too
        return place(nodes, specs, reserved, self.config, want, explain=request.dry_run)
