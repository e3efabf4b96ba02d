"""A reconnect storm, measured (``bench/scale.py --reconnect``): N nodes with VMs joined to a
controller over TLS; the controller is killed (``kill -9``) and started again; every LNM
dials back at once. Timed from the restarted controller's first answer (``GET /v1/whoami``)
until every node is back (welcomed on a new link: each swarm writes when each of its LNMs
was, so the controller is not asked during the storm) and an operation on a VM of the node
that came back last has been accepted and has succeeded.

Watched meanwhile, every tenth of a second from the swarms' files: no node once back loses
its link again; every half second: the API still answers (``GET /v1/whoami``, timed)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import BenchCluster, percentiles, profiled, top_frames

from usher.client import AsyncClient


class Prober:
    """Every ``every`` seconds in a thread: how long the API takes to answer a light call, so
    a storm that starves the API shows."""

    def __init__(self, cluster: BenchCluster, every: float = 0.5) -> None:
        self.cluster = cluster
        self.every = every
        self.answers: list[float] = []  # seconds
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        c = self.cluster
        with httpx.Client(headers=c.headers, verify=c.verify, timeout=60) as http:
            while not self._stop.is_set():
                t0 = time.time()
                try:
                    http.get(f"{c.url}/v1/whoami").raise_for_status()
                    self.answers.append(time.time() - t0)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{t0:.1f}: {exc!r}"[:200])
                self._stop.wait(self.every)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Watch:
    """Nodes back since ``killed`` (welcomed on a link made after it), from the swarms'
    files; counts a node that was back and lost its link again."""

    def __init__(self, cluster: BenchCluster, killed: float) -> None:
        self.cluster = cluster
        self.killed = killed
        self.back: dict[str, float] = {}
        self.dropped: set[str] = set()
        self.timeline: list[tuple[float, int]] = []

    def look(self) -> int:
        for name, since in self.cluster.joined().items():
            if since is not None and since > self.killed:
                self.back.setdefault(name, since)
            elif name in self.back:
                self.dropped.add(name)
        self.timeline.append((time.time(), len(self.back)))
        return len(self.back)


def admissions(cluster: BenchCluster) -> dict[str, float]:
    """The controller's count of LNM links admitted, waited and deferred (``/metrics``)."""
    r = httpx.get(f"{cluster.url}/metrics", headers=cluster.headers, verify=cluster.verify)
    r.raise_for_status()
    found = {}
    for line in r.text.splitlines():
        if line.startswith("usher_lnm_link_admissions{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


def kill_and_restart(cluster: BenchCluster) -> tuple[int, float, float]:
    """``kill -9`` the controller, start it again; its pid, when it was killed, and when
    it first answered (wall clock)."""
    assert cluster.ctrl is not None
    killed = time.time()
    cluster.ctrl.send_signal(signal.SIGKILL)
    cluster.ctrl.wait(30)
    pid = cluster.start_ctrl(poll=0.02)
    return pid, killed, time.time()


def count_in_logs(root: Path, pattern: bytes, prefix: str) -> int:
    return sum(p.read_bytes().count(pattern) for p in root.glob(f"{prefix}*.log"))


async def storm(
    cluster: BenchCluster, nodes: int, profile: Path | None, timeout: float
) -> dict[str, Any]:
    """Kill and restart the controller; wait for every node and one operation."""
    log_marks = {
        "tracebacks": count_in_logs(cluster.root, b"Traceback", "ctrl"),
        "handshake_timeouts": count_in_logs(
            cluster.root, b"timed out during opening handshake", "swarm"
        ),
    }
    pid, killed, answered = kill_and_restart(cluster)
    cpu0 = psutil.Process(pid).cpu_times()
    swarm_cpu0 = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in cluster.swarms)
    watch = Watch(cluster, killed)
    with profiled(pid, profile), Prober(cluster) as prober:
        while watch.look() < nodes and time.time() < answered + timeout:
            await asyncio.sleep(0.1)
        all_up = time.time()
        last = max(watch.back, key=watch.back.__getitem__) if watch.back else None
        op_info: dict[str, Any] = {"node": last}
        ca = str(cluster.ca_file) if cluster.ca_file else None
        async with AsyncClient(cluster.url, cluster.token, ca_file=ca, timeout=120) as client:
            if last is not None:
                page = await client.list_vms(node=last, limit=1)
                vm = page.items[0] if page.items else None
                if vm is not None:
                    t0 = time.time()
                    op = await client.stop([vm.id])
                    accepted = time.time()
                    done = await client.wait(op, timeout=120, poll=0.05)
                    op_info.update(
                        vm=vm.name,
                        accepted_s=round(accepted - answered, 3),
                        accept_ms=round(1000 * (accepted - t0), 1),
                        succeeded_s=round(time.time() - answered, 3),
                        status=done.status.value,
                    )
        watch.look()
    cpu1 = psutil.Process(pid).cpu_times()
    swarm_cpu1 = sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in cluster.swarms)
    gate = admissions(cluster)
    connected = cluster.connected_nodes()
    back = [t - answered for t in watch.back.values()]
    step = max(1, len(watch.timeline) // 100)
    result: dict[str, Any] = {
        "nodes": nodes,
        "nodes_back": len(watch.back),
        "connected_after": connected,
        "down_s": round(answered - killed, 2),
        "all_connected_s": round(all_up - answered, 3),
        "total_s": op_info.get("succeeded_s"),
        "per_node_s": percentiles(back),
        "operation": op_info,
        "controller_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2),
        "lnm_cpu_s": round(swarm_cpu1 - swarm_cpu0, 2),
        "api_answer_ms": percentiles([1000 * s for s in prober.answers]),
        "api_failures": prober.failures[:10],
        "gate": gate,
        "connected_dropped": len(watch.dropped),
        "timeline": [(round(t - answered, 1), up) for t, up in watch.timeline[::step]],
        "tracebacks": count_in_logs(cluster.root, b"Traceback", "ctrl") - log_marks["tracebacks"],
        "handshake_timeouts": count_in_logs(
            cluster.root, b"timed out during opening handshake", "swarm"
        )
        - log_marks["handshake_timeouts"],
    }
    if profile is not None:
        result["profile"] = top_frames(profile)
    return result
