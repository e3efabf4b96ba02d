"""API under load: concurrent clients mixing list, show, start and stop against a controller
that holds many VMs (fake driver), for a fixed time.

    python bench/api_load.py --clients 200 --vms 10000 --seconds 60

Each client has its own connection and its own share of the VMs, so its starts and stops
never collide with another client's: an error is the controller's, not the mix's. A stop or
start counts as one request (the 202) plus waiting for its operation (``/wait``, a long
poll); both are timed, and an operation that does not succeed is an error.

The clients speak plain HTTP through aiohttp and decode the JSON answers (orjson), as a CI
system or a dashboard would; they build none of Usher's typed models. The clients share the
machine's cores with the controller, so their cost counts: Usher's typed client took 2 ms of
CPU per ``show`` at 20 at once, httpx with orjson 0.85 ms, aiohttp with orjson 0.1 ms (the
controller: 0.3 ms). The controller's CPU per request of each kind is measured on its own
first (``--per-kind-seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from common import (
    RESULTS,
    BenchCluster,
    RSSSampler,
    percentiles,
    profiled,
    raise_nofile,
    top_frames,
    write_result,
)
from scale import cpu_seconds, start_all

from usher.client import AsyncClient
from usher.model import FINAL_OP_STATUSES, VMState

MIX = {"show": 0.5, "list": 0.2, "stop": 0.15, "start": 0.15}
FINAL = {status.value for status in FINAL_OP_STATUSES}


class Tally:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {k: [] for k in [*MIX, "op_wait"]}
        self.errors: list[str] = []


async def client_loop(
    url: str,
    token: str,
    vms: list[str],
    all_ids: list[str],
    until: float,
    tally: Tally,
    seed: int,
    mix: dict[str, float] = MIX,
    every: float = 0.0,
) -> None:
    """One client: requests of the ``mix`` one after the other until ``until``, each begun
    ``every`` seconds after the one before (0: at once; a client that falls behind goes on
    at once until it has caught up)."""
    rng = random.Random(seed)
    next_at = time.monotonic() + rng.uniform(0, every)
    running = set(vms)
    stopped: set[str] = set()
    kinds, weights = list(mix), list(mix.values())
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, headers=headers, timeout=timeout) as http:
        while time.monotonic() < until:
            if every:
                await asyncio.sleep(next_at - time.monotonic())
                next_at += every
            kind = rng.choices(kinds, weights)[0]
            if kind == "stop" and not running:
                kind = "start"
            if kind == "start" and not stopped:
                kind = "stop"
            t0 = time.perf_counter()
            try:
                if kind == "show":
                    await answer(http.get(f"/v1/vms/{rng.choice(all_ids)}"))
                elif kind == "list":
                    await answer(http.get("/v1/vms", params={"limit": 100}))
                else:
                    pool = running if kind == "stop" else stopped
                    vm = rng.choice(sorted(pool))
                    body = {"vms": [vm], "kwargs": {"hard": True} if kind == "stop" else {}}
                    op = await answer(http.post(f"/v1/vms/actions/{kind}", json=body), 202)
                    tally.latency[kind].append(time.perf_counter() - t0)
                    w0 = time.perf_counter()
                    waiting = f"/v1/operations/{op['id']}/wait"
                    while op["status"] not in FINAL:
                        op = await answer(http.get(waiting, params={"timeout": 30}))
                    tally.latency["op_wait"].append(time.perf_counter() - w0)
                    if op["status"] != "succeeded":
                        tally.errors.append(f"{kind} {vm}: {op['status']} {op['error']}")
                    else:
                        pool.discard(vm)
                        (stopped if kind == "stop" else running).add(vm)
                    continue
            except Exception as exc:
                tally.errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                continue
            tally.latency[kind].append(time.perf_counter() - t0)


async def answer(request: Any, status: int = 200) -> Any:
    """The decoded JSON of an answer with ``status``, else an error saying what came."""
    async with request as response:
        body = await response.read()
    if response.status != status:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    return orjson.loads(body)


async def run_clients(
    cluster: BenchCluster,
    shares: list[list[str]],
    ids: list[str],
    seconds: float,
    mix: dict[str, float],
    rate: float = 0.0,
) -> Tally:
    """Each share's client runs the ``mix`` for ``seconds``, together ``rate`` requests a
    second (0: each as fast as it is answered); what they measured."""
    tally = Tally()
    until = time.monotonic() + seconds
    every = len(shares) / rate if rate else 0.0
    await asyncio.gather(
        *(
            client_loop(cluster.url, cluster.token, share, ids, until, tally, seed, mix, every)
            for seed, share in enumerate(shares)
        )
    )
    return tally


async def cpu_per_kind(
    cluster: BenchCluster,
    shares: list[list[str]],
    ids: list[str],
    seconds: float,
    pid: int,
    profiles: Path | None,
) -> dict[str, Any]:
    """The controller's CPU per request of each kind, each kind alone for ``seconds`` (a
    start or stop counts with its whole operation: the 202, the run on the node, the wait);
    with ``profiles``, where it goes (a py-spy profile of each kind in that directory)."""
    figures: dict[str, Any] = {}
    if seconds <= 0:
        return figures
    for name, mix in (
        ("show", {"show": 1.0}),
        ("list", {"list": 1.0}),
        ("start_stop", {"start": 0.5, "stop": 0.5}),
    ):
        before = cpu_seconds([pid])
        profile = profiles / f"{name}.txt" if profiles else None
        with profiled(pid, profile, gil=True):
            tally = await run_clients(cluster, shares, ids, seconds, mix)
        used = cpu_seconds([pid]) - before
        done = sum(len(v) for k, v in tally.latency.items() if k != "op_wait")
        figures[name] = {
            "requests": done,
            "ctrl_cpu_ms_per_request": round(1000 * used / done, 3) if done else None,
            "errors": len(tally.errors),
        }
        if profile is not None:
            figures[name]["profile"] = top_frames(profile, 30)
    return figures


async def measure(cluster: BenchCluster, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    async with AsyncClient(cluster.url, cluster.token, timeout=1800) as client:
        wall, _, _, _, errors = await start_all(client, args.vms, 500, 4)
        ids = [vm.id async for vm in client.iter_vms() if vm.state == VMState.RUNNING]
    started = len(ids)
    shares = [ids[i :: args.clients] for i in range(args.clients)]
    per_kind = await cpu_per_kind(cluster, shares, ids, args.per_kind_seconds, pid, args.profile)
    async with AsyncClient(cluster.url, cluster.token, timeout=1800) as client:
        # what the starts and stops alone left running is each client's to stop and start
        ids = [vm.id async for vm in client.iter_vms() if vm.state == VMState.RUNNING]
    shares = [ids[i :: args.clients] for i in range(args.clients)]
    lnms = [swarm.pid for swarm in cluster.swarms]
    ctrl_cpu, own_cpu, lnm_cpu = cpu_seconds([pid]), cpu_seconds([os.getpid()]), cpu_seconds(lnms)
    t0 = time.perf_counter()
    with profiled(pid, args.profile / "mix.txt" if args.profile else None, gil=True):
        tally = await run_clients(cluster, shares, ids, args.seconds, MIX, args.rate)
    elapsed = time.perf_counter() - t0
    ctrl_cpu, own_cpu = cpu_seconds([pid]) - ctrl_cpu, cpu_seconds([os.getpid()]) - own_cpu
    lnm_cpu = cpu_seconds(lnms) - lnm_cpu
    requests = sum(len(v) for k, v in tally.latency.items() if k != "op_wait")
    return {
        "setup": {"vms_started": started, "start_wall_s": round(wall, 1), "errors": errors},
        "clients": args.clients,
        "offered_per_s": args.rate or None,
        "per_kind_seconds": args.per_kind_seconds,
        "seconds": round(elapsed, 1),
        "mix": MIX,
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "latency_ms": {k: percentiles([x * 1000 for x in v]) for k, v in tally.latency.items()},
        # where the time went: the controller's CPU, and the clients' own (same machine)
        "controller_cpu_pct": round(100 * ctrl_cpu / elapsed, 1),
        "controller_cpu_ms_per_request": round(1000 * ctrl_cpu / requests, 3),
        "cpu_per_kind": per_kind,
        "clients_cpu_pct": round(100 * own_cpu / elapsed, 1),
        "clients_cpu_ms_per_request": round(1000 * own_cpu / requests, 3),
        "lnm_swarm_cpu_pct": round(100 * lnm_cpu / elapsed, 1),
        "errors": len(tally.errors),
        "error_samples": tally.errors[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests a second the clients offer together (0: each as fast as answered)",
    )
    parser.add_argument("--name", default="api-load", help="result name")
    parser.add_argument(
        "--per-kind-seconds", type=float, default=10, help="each kind of request alone, first"
    )
    parser.add_argument("--db-url", help="database URL (default: SQLite in the state dir)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--profile",
        type=Path,
        help="a directory: py-spy profiles of the controller (each kind alone, and the mix)",
    )
    args = parser.parse_args()
    raise_nofile(max(4096, 3 * args.nodes + 4 * args.clients + 1024))
    with tempfile.TemporaryDirectory(prefix="usher-bench-") as tmp:
        cluster = BenchCluster(Path(tmp), db_url=args.db_url)
        try:
            pid = cluster.start_ctrl()
            cluster.add_blank_image()
            with RSSSampler(pid) as rss:
                cluster.start_swarms(args.nodes, 1, vcpus=max(64, 2 * -(-args.vms // args.nodes)))
                cluster.wait_nodes(args.nodes, timeout=120)
                result = asyncio.run(measure(cluster, args, pid))
        finally:
            cluster.stop()
    result = {
        "nodes": args.nodes,
        "vms": args.vms,
        "database": "postgresql" if args.db_url else "sqlite",
        **result,
        "rss_peak_mb": round(rss.peak_mb, 1),
    }
    if args.profile is not None:
        result["profile"] = top_frames(args.profile / "mix.txt", 30)
    path = write_result(args.name, result, Path(args.out))
    lat = result["latency_ms"]
    print(
        f"{path.name}: {args.clients} clients, {result['requests']} requests in "
        f"{result['seconds']} s; show p99 {lat['show']['p99']} ms, list p99 "
        f"{lat['list']['p99']} ms; errors {result['errors']}"
    )


if __name__ == "__main__":
    main()
