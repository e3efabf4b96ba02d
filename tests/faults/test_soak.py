"""Soak: random operations from several clients and random kill -9 of the controller and of
LNMs, with HA on, on SQLite and on PostgreSQL; the invariants are checked *during* the run:

* no VM is ever active on two nodes (every node's guests are counted every 50 ms);
* no VM record diverges from what its (connected) node runs for more than a few seconds
  (compared every half second, each divergence timed from when it is first seen);

and at the end: no record lost, no operation stuck, no divergence left. It runs until
``USHER_SOAK_KILLS`` kills (default 10; ``make soak`` asks for 100) or
``USHER_SOAK_SECONDS`` seconds (default 60; ``make soak``: an hour), whichever comes first,
and prints its figures.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from harness import Cluster
from usher.client import UsherError
from usher.model import TRANSITIONAL_STATES

from .invariants import fake_table
from .scenario import STATS, kill_lnm, restart_ctrl, settle_and_check
from .test_split_brain import CopyWatch

SECONDS = float(os.environ.get("USHER_SOAK_SECONDS", "60"))
KILLS = int(os.environ.get("USHER_SOAK_KILLS", "10"))
DIVERGENCE_BOUND = 10.0
"""Seconds a record may disagree with its node (a report in flight, a step running)."""
KINDS = ["stop", "start", "pause", "resume", "reboot", "cycle", "migrate", "destroy"]
NODES = ["node-1", "node-2", "node-3"]
ACTIVE = frozenset({"running", "paused"})
OPTIONS = {"driver_options": {"latency": 0.3, "lease_ttl": 10.0}}


class DivergenceWatch:
    """Compares every VM record with its node's guests every ``every`` seconds while the
    controller answers, and times each disagreement from when it is first seen."""

    def __init__(self, cluster: Cluster, up: threading.Event, every: float = 0.5) -> None:
        self.cluster, self.up, self.every = cluster, up, every
        self.open: dict[str, tuple[float, str]] = {}  # vm id -> (first seen, what)
        self.longest = 0.0
        self.worst = ""
        self.seen = 0
        self.client = cluster.client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def differences(self) -> dict[str, str]:
        """What disagrees now, VM by VM (id: how)."""
        client = self.client
        connected = {n.name for n in client.nodes() if n.connected}
        found: dict[str, str] = {}
        busy = {
            vm_id
            for op in client.list_operations(status="running", limit=1000).items
            for vm_id in op.targets
        } | {
            vm_id
            for op in client.list_operations(status="queued", limit=1000).items
            for vm_id in op.targets
        }
        for vm in client.iter_vms():
            if vm.node not in connected or vm.state in TRANSITIONAL_STATES or vm.id in busy:
                continue
            held = fake_table(self.cluster.root / "nodes" / vm.node).get(vm.id)
            there = held["state"] if held else None
            recorded = vm.state.value
            # whether it runs (and paused or not) is what must agree; a record that says
            # stopped, error or lost and a node that does not run it agree
            agrees = there == recorded or (recorded not in ACTIVE and there not in ACTIVE)
            if not agrees:
                found[vm.id] = f"{vm.name}: recorded {recorded} on {vm.node}, which has {there}"
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(self.every)
            if not self.up.is_set():
                continue
            try:
                now, differences = time.monotonic(), self.differences()
            except Exception:  # the controller went away between two calls
                continue
            self.seen += 1
            for vm_id in list(self.open):
                if vm_id not in differences:
                    self.open.pop(vm_id)
            for vm_id, what in differences.items():
                since, _ = self.open.setdefault(vm_id, (now, what))
                if now - since > self.longest:
                    self.longest, self.worst = now - since, what

    def __enter__(self) -> DivergenceWatch:
        self._thread.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.timeout(SECONDS + 300)
@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
def test_soak(make_cluster: Callable[..., Cluster], db_kind: str) -> None:
    cluster: Cluster = make_cluster(
        nodes=3,
        lnm_options=OPTIONS,
        plugins=["ha"],
        plugin_tables={"ha": {"clusters": ["s0", "s1"], "lease_wait": 60}},
        settings={"rejoin_grace": 10.0},
    )
    rng = random.Random(int(os.environ.get("USHER_SOAK_SEED", "1")))
    stop = threading.Event()
    submitted = {"ops": 0, "refused": 0, "unreachable": 0}
    server_errors: list[str] = []  # any 5xx fails the soak (asserted after the threads end)
    ctrl_up = threading.Event()
    ctrl_up.set()

    def operator(n: int) -> None:
        r = random.Random(n)
        client = cluster.client()
        while not stop.is_set():
            ctrl_up.wait()
            try:
                listed = list(client.iter_vms())
                # lost VMs too: a start or cycle boots one elsewhere unless its disk lease is
                # held, and a stale copy is fenced when its node returns
                vms = [vm.id for vm in listed]
                if len(listed) < 8 or r.random() < 0.15:
                    client.create_vms(count=r.randint(1, 3), cluster=f"s{n}")
                elif vms:
                    client.action(r.choice(KINDS), r.sample(vms, min(len(vms), r.randint(1, 3))))
                submitted["ops"] += 1
            except UsherError as exc:
                if exc.status is None:
                    submitted["unreachable"] += 1
                elif exc.status >= 500:
                    server_errors.append(str(exc))
                else:
                    submitted["refused"] += 1
            except Exception:  # the controller went away mid-call
                submitted["unreachable"] += 1
            time.sleep(r.uniform(0.05, 0.3))

    threads = [threading.Thread(target=operator, args=(n,), daemon=True) for n in range(4)]
    kills = {"lnm": 0, "ctrl": 0}
    began = time.monotonic()
    with CopyWatch(cluster) as copies, DivergenceWatch(cluster, ctrl_up) as divergence:
        for t in threads:
            t.start()
        try:
            while time.monotonic() - began < SECONDS and sum(kills.values()) < KILLS:
                time.sleep(rng.uniform(2, 5))
                if rng.random() < 0.3:
                    ctrl_up.clear()
                    restart_ctrl(cluster, [n for n in NODES if n in cluster.lnms])
                    ctrl_up.set()
                    kills["ctrl"] += 1
                else:
                    victim = rng.choice(NODES)
                    kill_lnm(cluster, victim)
                    time.sleep(rng.uniform(0.5, 3))
                    cluster.start_lnm(victim, **OPTIONS)
                    kills["lnm"] += 1
        finally:
            ctrl_up.set()
            stop.set()
            for t in threads:
                t.join(30)
        assert not server_errors, server_errors
        vms = settle_and_check(cluster, bound=60)
        left = divergence.differences()
        assert not left, left
    detect = STATS["detect_s"]
    print(
        f"soak {db_kind} {time.monotonic() - began:.0f} s: ops submitted={submitted['ops']} "
        f"refused={submitted['refused']} unreachable={submitted['unreachable']} "
        f"kills lnm={kills['lnm']} ctrl={kills['ctrl']} VMs at end={len(vms)} records lost=0 "
        f"copy checks={copies.samples} double copies={len(copies.doubled)} "
        f"divergence checks={divergence.seen} longest divergence={divergence.longest:.1f} s "
        f"({divergence.worst or 'none'}) lost-node detection max={max(detect, default=0):.2f} s"
    )
    assert divergence.seen > 0
    assert divergence.longest <= DIVERGENCE_BOUND, (divergence.longest, divergence.worst)
    assert sum(kills.values()) >= min(KILLS, max(1, int(SECONDS // 20)))
    assert submitted["ops"] > 0
