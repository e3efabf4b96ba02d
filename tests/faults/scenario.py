"""Helpers shared by the fault scenarios: building clusters, tracking what was created."""

from __future__ import annotations

import time
from typing import Any

from harness import Cluster, wait_for
from usher.model import OpKind, VMState

from .invariants import all_operations, check_invariants

STATS: dict[str, Any] = {"scenarios": 0, "kills": 0, "records": 0, "detect_s": [], "ops": 0}
"""Figures of this run's scenarios, printed at the end (tests/faults/conftest.py): checks of
the invariants, kills survived, VM records found intact (a lost one fails its scenario),
seconds to notice a killed or silent node, operations."""


def ever_created(cluster: Cluster) -> tuple[set[str], set[str]]:
    """(every VM id any operation targeted, the ids some destroy operation targeted)."""
    created: set[str] = set()
    destroyed: set[str] = set()
    for op in all_operations(cluster):
        created.update(op.targets)
        if op.kind == OpKind.DESTROY:
            destroyed.update(op.targets)
    return created, destroyed


def settle_and_check(cluster: Cluster, known: set[str] | None = None, bound: float = 30.0):
    """Check the invariants over every VM ever created (plus ``known``)."""
    created, destroyed = ever_created(cluster)
    vms = check_invariants(cluster, created | (known or set()), destroyed, bound=bound)
    STATS["scenarios"] += 1
    STATS["records"] += len(vms)
    STATS["ops"] += len(all_operations(cluster))
    return vms


def restart_ctrl(cluster: Cluster, nodes: list[str]) -> None:
    cluster.kill_ctrl()
    STATS["kills"] += 1
    cluster.start_ctrl()
    for name in nodes:
        cluster.wait_node(name, connected=True, timeout=30)


def kill_lnm(cluster: Cluster, name: str) -> float:
    """kill -9 an LNM and return how long the controller took to notice (node not connected
    and its state down)."""
    cluster.kill_lnm(name)
    STATS["kills"] += 1
    killed = time.monotonic()
    client = cluster.client()
    wait_for(
        f"{name} to be declared down",
        lambda: (n := client.node(name)).state.value == "down" and not n.connected,
        timeout=15,
        every=0.05,
    )
    took = time.monotonic() - killed
    STATS["detect_s"].append(took)
    return took


def wait_state(cluster: Cluster, vm: str, states: set[VMState], timeout: float = 10) -> None:
    client = cluster.client()
    wait_for(f"{vm} in {states}", lambda: client.get_vm(vm).state in states, timeout=timeout)
