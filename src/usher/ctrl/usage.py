"""Usage history behind the dashboard's charts: node and VM samples over the last hour.

A sampler task reads what the LNMs last reported in their heartbeats (``NodeRegistry``) every
``usage_interval`` seconds and writes one row per connected node and per running VM; rows
older than ``usage_retention`` seconds are pruned at each round, so the table stays bounded:
``(nodes + VMs) * retention / interval`` rows at most. A VM's CPU use is derived from the
growth of its CPU time between two heartbeats (a sample taken before the next heartbeat
repeats the last rate).

Config, ``[plugins.metrics]``: ``usage_interval`` (default 30 s), ``usage_retention``
(default 3600 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Float, Index, String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from usher.ctrl.nodes import NodeRegistry
from usher.ctrl.store import Store
from usher.ctrl.tables import Base, SeqType
from usher.model import Node, now

log = logging.getLogger("usher.usage")
DEFAULT_INTERVAL = 30.0
DEFAULT_RETENTION = 3600.0


class UsageSampleRow(Base):
    """One sample of a node (``kind`` node, ``key`` its name) or of a VM (``kind`` vm, ``key``
    its id, ``node`` where it ran)."""

    __tablename__ = "usage_samples"
    __table_args__ = (
        Index("ix_usage_series", "kind", "key", "time"),
        Index("ix_usage_time", "time"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(200))
    time: Mapped[float] = mapped_column(Float)
    node: Mapped[str | None] = mapped_column(String(200))
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_used_mb: Mapped[float] = mapped_column(Float)
    vcpus: Mapped[int | None]
    memory_mb: Mapped[int | None]
    vms: Mapped[int | None]


_SAMPLES = UsageSampleRow.__table__
CHUNK = 1000
"""Samples written or pruned per transaction (the event loop's other tasks run between)."""


class UsagePoint(BaseModel):
    """A sample (or the mean of the samples of one time slot, when downsampled).
    ``vcpus``, ``memory_mb`` and ``vms`` (what the node's VMs reserve) are for nodes only."""

    time: float
    cpu_percent: float | None = Field(None, description="100 = one CPU busy")
    memory_used_mb: float
    vcpus: float | None = None
    memory_mb: float | None = None
    vms: float | None = None


class UsageSeries(BaseModel):
    """``GET /v1/usage``: the samples of one node or VM since ``since``, oldest first."""

    kind: str = Field(description="node or vm")
    key: str = Field(description="the node's name or the VM's id")
    since: float
    interval: float = Field(description="seconds between samples as taken")
    points: list[UsagePoint]


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def downsample(points: list[UsagePoint], most: int) -> list[UsagePoint]:
    """At most ``most`` points: consecutive samples averaged in equal time slots."""
    if len(points) <= most:
        return points
    first, last = points[0].time, points[-1].time
    width = (last - first) / most or 1.0
    slots: dict[int, list[UsagePoint]] = {}
    for p in points:
        slots.setdefault(min(int((p.time - first) / width), most - 1), []).append(p)
    merged = []
    for group in slots.values():
        fields = {
            name: _mean([getattr(p, name) for p in group])
            for name in ("time", "cpu_percent", "memory_used_mb", "vcpus", "memory_mb", "vms")
        }
        merged.append(UsagePoint.model_validate(fields))
    return merged


class UsageHistory:
    """Samples node and VM usage into the store and answers the charts' queries."""

    def __init__(self, store: Store, nodes: NodeRegistry, config: dict[str, Any]) -> None:
        self.store = store
        self.nodes = nodes
        self.interval = float(config.get("usage_interval", DEFAULT_INTERVAL))
        self.retention = float(config.get("usage_retention", DEFAULT_RETENTION))
        if self.interval <= 0 or self.retention <= 0:
            raise ValueError("[plugins.metrics] usage_interval and usage_retention must be > 0")
        # vm id -> (heartbeat time, CPU seconds then, CPU % since the heartbeat before)
        self._cpu_seen: dict[str, tuple[float, float, float | None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a database hiccup must not end the history for good
                log.exception("usage sampling failed")
            await asyncio.sleep(self.interval)

    async def sample(self) -> None:
        """Write one sample per connected node and per VM it runs; prune old samples."""
        t = now()
        rows: list[dict[str, Any]] = []
        live: set[str] = set()
        for node in list(self.nodes.nodes.values()):
            if node.connected:
                rows.append(self._node_row(node, t))
                rows.extend(self._vm_rows(node, t, live))
        for vm_id in set(self._cpu_seen) - live:
            del self._cpu_seen[vm_id]
        # Core executemanys (the ORM's bulk insert took most of an idle controller's CPU at
        # 1,000 nodes and 10,000 VMs), a part at a time: SQLite runs on the event loop's
        # thread, and one statement for 10,000 VMs held the loop about 0.25 s.
        for start in range(0, len(rows), CHUNK):
            async with self.store.sessions() as s, s.begin():
                await s.execute(_SAMPLES.insert(), rows[start : start + CHUNK])
            await asyncio.sleep(0)
        old = select(_SAMPLES.c.seq).where(_SAMPLES.c.time < t - self.retention).limit(CHUNK)
        while True:
            async with self.store.sessions() as s, s.begin():
                gone = (await s.execute(delete(_SAMPLES).where(_SAMPLES.c.seq.in_(old)))).rowcount
            if gone < CHUNK:
                return
            await asyncio.sleep(0)

    @staticmethod
    def _node_row(node: Node, t: float) -> dict[str, Any]:
        u = node.usage
        return {
            "kind": "node",
            "key": node.name,
            "time": t,
            "node": node.name,
            "cpu_percent": u.cpu_percent,
            "memory_used_mb": float(u.memory_used_mb),
            "vcpus": u.vcpus,
            "memory_mb": u.memory_mb,
            "vms": u.vms,
        }

    def _vm_rows(self, node: Node, t: float, live: set[str]) -> list[dict[str, Any]]:
        beat = node.last_heartbeat or t
        rows = []
        for vm_id, use in node.usage.per_vm.items():
            live.add(vm_id)
            cpu_seconds = float(use.get("cpu_seconds", 0.0))
            seen = self._cpu_seen.get(vm_id)
            if seen is None:
                self._cpu_seen[vm_id] = (beat, cpu_seconds, None)
            elif beat > seen[0]:  # a newer heartbeat: the rate since the one before
                rate = max(0.0, (cpu_seconds - seen[1]) / (beat - seen[0]) * 100)
                self._cpu_seen[vm_id] = (beat, cpu_seconds, rate)
            rows.append(
                {
                    "kind": "vm",
                    "key": vm_id,
                    "time": t,
                    "node": node.name,
                    "cpu_percent": self._cpu_seen[vm_id][2],
                    "memory_used_mb": float(use.get("memory_used_mb", 0.0)),
                    "vcpus": None,
                    "memory_mb": None,
                    "vms": None,
                }
            )
        return rows

    async def series(self, kind: str, key: str, since: float, most: int) -> UsageSeries:
        """The samples of one node or VM since ``since`` (no older than the retention),
        downsampled to at most ``most`` points."""
        since = max(since, now() - self.retention)
        stmt = (
            select(UsageSampleRow)
            .where(
                UsageSampleRow.kind == kind,
                UsageSampleRow.key == key,
                UsageSampleRow.time >= since,
            )
            .order_by(UsageSampleRow.time)
        )
        async with self.store.sessions() as s:
            rows = (await s.execute(stmt)).scalars().all()
        points = [UsagePoint.model_validate(r, from_attributes=True) for r in rows]
        return UsageSeries(
            kind=kind,
            key=key,
            since=since,
            interval=self.interval,
            points=downsample(points, most),
        )
