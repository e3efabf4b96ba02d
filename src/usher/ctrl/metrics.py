"""Prometheus metrics of one controller, in a registry of its own (tests run many).

Counted as things happen, from the event bus:

* operations by kind and outcome, and their latency: a step event (``<kind>``,
  ``<kind>_failure`` with a VM) makes the collector wait for the operation's end
  (``Engine.wait``) and record its status and ``finished_at - created_at``; an operation that
  ends without running (vetoed, a plugin failing) fires ``<kind>_failure`` without a VM; a
  request refused before it became an operation fires ``request_refused`` (outcome
  ``refused``);
* every event by name, and LNM links lost (``node_lost``).

Plugin hook latency and failures come from the plugin host, which times every call it makes
(``PluginHost.hook_observers``): an exception other than a veto, or a timeout, is a
failure. Gauges (VMs by state, nodes, stream clients) are read at scrape
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select

from usher.ctrl.tables import VMRow
from usher.model import Event, NodeState, OpKind, VMState

if TYPE_CHECKING:
    from usher.ctrl.controller import Controller

log = logging.getLogger("usher.metrics")
MB = 1024 * 1024
GB = 1024 * MB
OP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
HOOK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
KINDS = frozenset(k.value for k in OpKind)
FAILURE_SUFFIX = "_failure"
WAIT_FOREVER = 7 * 86400.0


def _operation_kind(name: str) -> tuple[str, bool] | None:
    """``(kind, failed)`` if ``name`` is an operation's step or failure event."""
    if name in KINDS:
        return name, False
    base = name.removesuffix(FAILURE_SUFFIX)
    return (base, True) if base != name and base in KINDS else None


class Metrics:
    """The controller's metrics; ``expose()`` renders them in the Prometheus text format."""

    def __init__(self, ctrl: Controller, public: bool = False) -> None:
        self.ctrl = ctrl
        self.public = public
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.operations = Counter(
            "usher_operations",
            "Operations ended, by kind and outcome (succeeded, failed, cancelled, vetoed, refused)",
            ["kind", "outcome"],
            registry=r,
        )
        self.op_seconds = Histogram(
            "usher_operation_duration_seconds",
            "Time from an operation's creation to its end",
            ["kind"],
            buckets=OP_BUCKETS,
            registry=r,
        )
        self.events = Counter("usher_events", "Events fired, by name", ["name"], registry=r)
        self.link_losses = Counter(
            "usher_node_link_losses", "LNM links lost (node_lost events)", ["node"], registry=r
        )
        self.hook_seconds = Histogram(
            "usher_plugin_hook_duration_seconds",
            "Time plugins take in hook calls",
            ["plugin", "hook"],
            buckets=HOOK_BUCKETS,
            registry=r,
        )
        self.hook_failures = Counter(
            "usher_plugin_hook_failures",
            "Hook calls that raised (a veto is an answer, not a failure) or timed out",
            ["plugin", "hook"],
            registry=r,
        )
        self.vms = Gauge("usher_vms", "VMs by state", ["state"], registry=r)
        self.stream_clients = Gauge(
            "usher_event_stream_clients", "Clients of the live event stream", registry=r
        )
        self.link_admissions = Gauge(
            "usher_lnm_link_admissions",
            "LNM links since the controller started: admitted, of which waited their turn, "
            "and deferred (told to come back later: 503 with Retry-After)",
            ["outcome"],
            registry=r,
        )
        node = ["node"]
        self.node_up = Gauge(
            "usher_node_link_up", "1 if the node's LNM is connected", node, registry=r
        )
        self.node_state = Gauge(
            "usher_node_state", "1 for the node's current state", ["node", "state"], registry=r
        )
        self.node_heartbeat = Gauge(
            "usher_node_last_heartbeat_timestamp_seconds",
            "When the node's LNM last sent a heartbeat",
            node,
            registry=r,
        )
        self.node_gauges: dict[str, tuple[Gauge, Callable[[Any], float]]] = {
            name: (Gauge(name, doc, node, registry=r), value)
            for name, doc, value in (
                ("usher_node_capacity_cpus", "CPUs of the node", lambda n: n.capacity.vcpus),
                (
                    "usher_node_capacity_memory_bytes",
                    "Memory of the node",
                    lambda n: n.capacity.memory_mb * MB,
                ),
                (
                    "usher_node_capacity_disk_bytes",
                    "Disk of the node",
                    lambda n: n.capacity.disk_gb * GB,
                ),
                ("usher_node_reserved_cpus", "CPUs its VMs reserve", lambda n: n.usage.vcpus),
                (
                    "usher_node_reserved_memory_bytes",
                    "Memory its VMs reserve",
                    lambda n: n.usage.memory_mb * MB,
                ),
                ("usher_node_vms", "VMs running or paused on the node", lambda n: n.usage.vms),
                (
                    "usher_node_cpu_used_cpus",
                    "CPUs its VMs keep busy",
                    lambda n: n.usage.cpu_percent / 100,
                ),
                (
                    "usher_node_memory_used_bytes",
                    "Memory its VMs use",
                    lambda n: n.usage.memory_used_mb * MB,
                ),
            )
        }
        self._following: dict[str, asyncio.Task[None]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._listener: asyncio.Task[None] | None = None
        ctrl.plugins.hook_observers.append(self._hook_called)

    # --- plugin hooks -------------------------------------------------------------------

    def _labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept: the lookup costs more than the count (it runs
        for every plugin call and every event)."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _hook_called(self, plugin: str, hook: str, seconds: float, failed: bool) -> None:
        self._labelled(self.hook_seconds, plugin, hook).observe(seconds)
        if failed:
            self.hook_failures.labels(plugin, hook).inc()

    # --- events -------------------------------------------------------------------------

    async def start(self) -> None:
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="metrics-events")
        await ready.wait()

    async def stop(self) -> None:
        tasks = [t for t in (self._listener, *self._following.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self, ready: asyncio.Event) -> None:
        async with self.ctrl.bus.subscribe(lambda _: True) as queue:
            ready.set()
            while True:
                event = await queue.get()
                try:
                    self.observe(event)
                except Exception:  # a malformed event must not stop the counting
                    log.exception("cannot count event %s", event.name)

    def observe(self, event: Event) -> None:
        self._labelled(self.events, event.name).inc()
        if event.name == "node_lost" and event.node:
            self.link_losses.labels(event.node).inc()
        elif event.name == "request_refused":
            self.operations.labels(str(event.data.get("kind", "?")), "refused").inc()
        found = _operation_kind(event.name)
        if found is None or event.operation_id is None:
            return
        kind, failed = found
        if event.vm_id is None:
            if failed:  # ended without running
                outcome = "vetoed" if event.data.get("vetoed") else "failed"
                self.operations.labels(kind, outcome).inc()
        elif event.operation_id not in self._following:
            op_id = event.operation_id
            self._following[op_id] = asyncio.create_task(self._follow(op_id))

    async def _follow(self, op_id: str) -> None:
        """Wait for an operation that is running to end; count its outcome and latency."""
        try:
            op = await self.ctrl.engine.wait(op_id, WAIT_FOREVER)
            if op.done:
                self.operations.labels(op.kind.value, op.status.value).inc()
                if op.finished_at is not None:
                    self.op_seconds.labels(op.kind.value).observe(
                        max(0.0, op.finished_at - op.created_at)
                    )
        except Exception:
            log.exception("cannot follow operation %s", op_id)
        finally:
            self._following.pop(op_id, None)

    # --- scraping -----------------------------------------------------------------------

    async def expose(self) -> bytes:
        """Read the gauges from the controller's state now and render every metric."""
        async with self.ctrl.store.sessions() as s:
            stmt = select(VMRow.state, func.count()).group_by(VMRow.state)
            counts = dict((await s.execute(stmt)).tuples().all())
        for state in VMState:
            self.vms.labels(state.value).set(counts.get(state.value, 0))
        own = 1 if self._listener is not None and not self._listener.done() else 0
        self.stream_clients.set(max(0, self.ctrl.bus.subscriber_count - own))
        gate = self.ctrl.link_gate.stats
        for outcome in ("admitted", "waited", "deferred"):
            self.link_admissions.labels(outcome).set(getattr(gate, outcome))
        for node in self.ctrl.nodes.snapshot():
            self.node_up.labels(node.name).set(1 if node.connected else 0)
            for state in NodeState:
                self.node_state.labels(node.name, state.value).set(node.state == state)
            self.node_heartbeat.labels(node.name).set(node.last_heartbeat or 0)
            for gauge, value in self.node_gauges.values():
                gauge.labels(node.name).set(value(node))
        return generate_latest(self.registry)
