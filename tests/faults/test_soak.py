"""Soak: random operations and random kills (LNM kill -9 and restart, controller kill -9 and
restart) for ``USHER_SOAK_SECONDS`` (default 60; ``make soak`` runs longer), then the
invariants. Prints the figures."""

from __future__ import annotations

import os
import random
import threading
import time

from harness import Cluster
from usher.client import UsherError

from .scenario import STATS, kill_lnm, restart_ctrl, settle_and_check

SECONDS = float(os.environ.get("USHER_SOAK_SECONDS", "60"))
KINDS = ["stop", "start", "pause", "resume", "reboot", "cycle", "migrate", "destroy"]
NODES = ["node-1", "node-2", "node-3"]
OPTIONS = {"driver_options": {"latency": 0.3}}


def test_soak(make_cluster) -> None:
    cluster: Cluster = make_cluster(nodes=3, lnm_options=OPTIONS)
    rng = random.Random(int(os.environ.get("USHER_SOAK_SEED", "1")))
    stop = threading.Event()
    submitted = {"ops": 0, "refused": 0, "unreachable": 0}
    server_errors: list[str] = []  # any 5xx fails the soak (asserted after the threads end)
    ctrl_up = threading.Event()
    ctrl_up.set()

    def operator(n: int) -> None:
        r = random.Random(n)
        while not stop.is_set():
            ctrl_up.wait()
            try:
                client = cluster.client()
                listed = cluster.vms()
                # lost VMs too: a start or cycle boots one elsewhere, and the stale copy
                # is fenced when its node returns
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
    for t in threads:
        t.start()
    kills = {"lnm": 0, "ctrl": 0}
    began = time.monotonic()
    try:
        while time.monotonic() - began < SECONDS:
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
    detect = STATS["detect_s"]
    print(
        f"soak {SECONDS:.0f} s: ops submitted={submitted['ops']} refused={submitted['refused']}"
        f" unreachable={submitted['unreachable']} kills lnm={kills['lnm']} ctrl={kills['ctrl']}"
        f" VMs at end={len(vms)} records lost=0 lost-node detection (kill -9) "
        f"max={max(detect, default=0):.2f} s; operations total={STATS['ops']}"
    )
    assert kills["lnm"] + kills["ctrl"] >= max(1, int(SECONDS // 20))  # slower when loaded
    assert submitted["ops"] > 0
