"""What an LNM tells the controller of its VMs on its own: the hello with the inventory of
every VM its driver has, and the usage its heartbeats carry."""

from __future__ import annotations

import time
from typing import Any

from usher.lnm.config import LNMConfig
from usher.model import VMState
from usher.vmm.base import DomainInfo, Driver

INVENTORY_CHUNK = 500
"""VMs per message of the inventory a hello starts (the rest follow in ``inventory``
messages): no message grows with the number of VMs a node runs."""


def summary(dom: DomainInfo) -> dict[str, Any]:
    """What the controller reconciles of a VM a node has (not its spec: a node's messages
    do not grow with what users store in their VMs)."""
    reason = dom.reason[:500] if dom.reason else None
    return {"id": dom.id, "name": dom.name, "state": dom.state.value, "reason": reason}


def hello(config: LNMConfig, driver: Driver, doms: list[DomainInfo]) -> list[dict[str, Any]]:
    """The hello and the inventory that follows it: every VM in ``doms``, in pieces of
    :data:`INVENTORY_CHUNK` (``more`` says whether another follows)."""
    vms = [summary(d) for d in doms]
    chunks = [vms[i : i + INVENTORY_CHUNK] for i in range(0, len(vms), INVENTORY_CHUNK)]
    chunks = chunks or [[]]
    first = {
        "type": "hello",
        "node": config.name,
        "driver": driver.name,
        "capacity": {"vcpus": config.vcpus, "memory_mb": config.memory_mb},
        "labels": config.labels,
        "capabilities": sorted(c.value for c in driver.capabilities),
        "vms": chunks[0],
        "more": len(chunks) > 1,
    }
    rest = [
        {"type": "inventory", "vms": chunk, "more": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks[1:], start=1)
    ]
    return [first, *rest]


class UsageMeter:
    """What a node's VMs reserve and consume; the CPU share since the last reading."""

    def __init__(self) -> None:
        self._cpu_seen: tuple[float, float] | None = None

    def read(self, doms: list[DomainInfo]) -> dict[str, Any]:
        live = [d for d in doms if d.state in (VMState.RUNNING, VMState.PAUSED)]
        cpu_total = sum(d.cpu_seconds for d in doms)
        t = time.monotonic()
        cpu_percent = 0.0
        if self._cpu_seen is not None and t > self._cpu_seen[0]:
            cpu_percent = max(0.0, (cpu_total - self._cpu_seen[1]) / (t - self._cpu_seen[0]) * 100)
        self._cpu_seen = (t, cpu_total)
        return {
            "vcpus": sum(d.spec.vcpus for d in live),
            "memory_mb": sum(d.spec.memory_mb for d in live),
            "vms": len(live),
            "cpu_percent": round(cpu_percent, 2),
            "memory_used_mb": int(sum(d.memory_used_mb for d in live)),
            "per_vm": {
                d.id: {
                    "cpu_seconds": round(d.cpu_seconds, 3),
                    "memory_used_mb": round(d.memory_used_mb, 1),
                }
                for d in live
            },
        }
