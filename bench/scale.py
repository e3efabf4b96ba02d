"""Control-plane scale: a real controller, N fake-driver LNMs (each a real WebSocket over
loopback), M VMs started in batches through the public API, then listed page by page.

    python bench/scale.py --nodes 1000 --vms 10000

Reports VM starts per second end to end (first request to the last VM ``running``), the
latency of each batch's operation and of each VM (request to ``running``), the latency of
listing every VM (pages of 1,000, as the API serves them) once the controller is at rest
after the starts, and the controller's peak RSS.

    python bench/scale.py --reconnect --nodes 1000 --vms 2000

measures a reconnect storm instead (:mod:`reconnect`): over TLS, the controller killed and
started again, every node dialling back at once; result ``reconnect-<nodes>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
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
from reconnect import storm

from usher.client import AsyncClient
from usher.model import VMState


async def start_all(
    client: AsyncClient, vms: int, batch: int, concurrency: int
) -> tuple[float, list[float], list[float], dict[str, float], list[str]]:
    """Start ``vms`` VMs in batches, ``concurrency`` requests in flight; return the wall
    time, each operation's latency, each request's time to 202, when each batch was asked
    (by name prefix) and the errors."""
    gate = asyncio.Semaphore(concurrency)
    op_latency: list[float] = []
    accept_latency: list[float] = []
    asked: dict[str, float] = {}
    errors: list[str] = []

    async def one(i: int, count: int) -> None:
        prefix = f"b{i}"
        async with gate:
            asked[prefix] = time.time()
            t0 = time.perf_counter()
            op = await client.create_vms(count=count, name_prefix=prefix, vcpus=1, memory_mb=256)
            accept_latency.append(time.perf_counter() - t0)
            done = await client.wait(op, timeout=1800, poll=30)
            op_latency.append(time.perf_counter() - t0)
            if done.status.value != "succeeded":
                errors.append(f"{op.id}: {done.status.value} {done.error}")

    started = time.perf_counter()
    sizes = [min(batch, vms - first) for first in range(0, vms, batch)]
    await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes)))
    return time.perf_counter() - started, op_latency, accept_latency, asked, errors


def list_raw(url: str, token: str, rounds: int) -> tuple[list[float], list[float]]:
    """List every VM ``rounds`` times, 1,000 a page, as the API serves it: one GET per
    page over one kept-alive connection of the standard library's HTTP client, timed until
    the page's whole body has arrived. This is the controller's answer and the wire; a client
    library's own cost is timed apart (:func:`list_httpx`)."""
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=600)
    headers = {"Authorization": f"Bearer {token}"}
    full: list[float] = []
    pages: list[float] = []
    try:
        for _ in range(rounds):
            cursor: str | None = None
            took = 0.0
            while True:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                query = urllib.parse.urlencode(params)
                p0 = time.perf_counter()
                conn.request("GET", f"/v1/vms?{query}", headers=headers)
                answer = conn.getresponse()
                body = answer.read()
                pages.append(time.perf_counter() - p0)
                if answer.status != 200:
                    raise RuntimeError(f"listing answered {answer.status}: {body[:200]!r}")
                took += pages[-1]
                cursor = orjson.loads(body)["next"]
                if cursor is None:
                    break
            full.append(took)
    finally:
        conn.close()
    return full, pages


async def list_httpx(
    client: AsyncClient, url: str, token: str, rounds: int
) -> tuple[list[float], list[float], list[float], int]:
    """The same listing through httpx (the library Usher's client is built on), each page
    timed until its body has arrived; the time to parse the bodies (orjson) apart; then
    through the typed Python client (a pydantic model per VM)."""
    full: list[float] = []
    parsing: list[float] = []
    seen = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"{url}/v1", headers=headers, timeout=600) as http:
        for _ in range(rounds):
            cursor: str | None = None
            seen, took, parse = 0, 0.0, 0.0
            while True:
                params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                p0 = time.perf_counter()
                answer = await http.get("/vms", params=params)
                answer.raise_for_status()
                took += time.perf_counter() - p0
                p0 = time.perf_counter()
                page = orjson.loads(answer.content)
                parse += time.perf_counter() - p0
                seen += len(page["items"])
                cursor = page["next"]
                if cursor is None:
                    break
            full.append(took)
            parsing.append(parse)
    typed: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        listed = [vm async for vm in client.iter_vms(page_size=1000)]
        assert len(listed) == seen
        typed.append(time.perf_counter() - t0)
    return full, parsing, typed, seen


def wait_at_rest(pid: int, below: float = 0.3, most: float = 60.0) -> float:
    """Seconds until the controller used less than ``below`` of a core over one second
    (the tail of the starts done: events written, operations followed), at most ``most``."""
    began = time.monotonic()
    while time.monotonic() - began < most:
        used = cpu_seconds([pid])
        time.sleep(1.0)
        if cpu_seconds([pid]) - used < below:
            break
    return time.monotonic() - began


async def vm_latencies(client: AsyncClient, asked: dict[str, float]) -> tuple[list[float], int]:
    """Each VM's time from its batch's request to its last update (``running``)."""
    latencies: list[float] = []
    running = 0
    async for vm in client.iter_vms():
        if vm.state == VMState.RUNNING:
            running += 1
        prefix = vm.name.rsplit("-", 1)[0]
        if prefix in asked:
            latencies.append(vm.updated_at - asked[prefix])
    return latencies, running


def ms(values: list[float]) -> dict[str, float]:
    return percentiles([v * 1000 for v in values])


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def measure(cluster: BenchCluster, args: argparse.Namespace, pid: int) -> dict[str, Any]:
    swarm_pids = [p.pid for p in cluster.swarms]
    async with AsyncClient(cluster.url, cluster.token, timeout=1800) as client:
        profile = Path(args.profile) if args.profile else None
        ctrl_cpu, swarm_cpu = cpu_seconds([pid]), cpu_seconds(swarm_pids)
        with profiled(pid, profile):
            wall, op_lat, accept, asked, errors = await start_all(
                client, args.vms, args.batch, args.concurrency
            )
        ctrl_cpu, swarm_cpu = cpu_seconds([pid]) - ctrl_cpu, cpu_seconds(swarm_pids) - swarm_cpu
        per_vm, running = await vm_latencies(client, asked)
        settled = wait_at_rest(pid)
        full, pages = list_raw(cluster.url, cluster.token, args.list_rounds)
        via_httpx, parsing, typed, seen = await list_httpx(
            client, cluster.url, cluster.token, args.list_rounds
        )
    result: dict[str, Any] = {
        "starts": {
            "vms": args.vms,
            "running": running,
            "batch": args.batch,
            "concurrent_requests": args.concurrency,
            "wall_s": round(wall, 3),
            "vms_per_s": round(args.vms / wall, 1),
            "op_latency_ms": ms(op_lat),
            "accept_latency_ms": ms(accept),
            "vm_latency_ms": ms(per_vm),
            "errors": errors,
            "controller_cpu_s": round(ctrl_cpu, 2),
            "controller_cpu_ms_per_vm": round(1000 * ctrl_cpu / args.vms, 3),
            "lnm_cpu_s": round(swarm_cpu, 2),
        },
        "list": {
            "vms_listed": seen,
            "page_size": 1000,
            "rounds": args.list_rounds,
            "settled_s": round(settled, 1),
            "full_list_ms": ms(full),
            "page_ms": ms(pages),
            "httpx_full_list_ms": ms(via_httpx),
            "client_parse_ms": ms(parsing),
            "typed_client_full_list_ms": ms(typed),
        },
    }
    if profile is not None:
        result["profile_starts"] = top_frames(profile)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500, help="VMs per request")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--swarms", type=int, default=2, help="LNM swarm processes")
    parser.add_argument("--list-rounds", type=int, default=20)
    parser.add_argument("--node-timeout", type=float, default=0.0, help="0: by node count")
    parser.add_argument("--db-url", help="database URL (default: SQLite in the state dir)")
    parser.add_argument("--profile", help="write a py-spy profile of the starts here")
    parser.add_argument("--name", help="result name (default: scale-<nodes>)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--reconnect", action="store_true", help="measure a reconnect storm (over TLS)"
    )
    parser.add_argument("--keep", help="--reconnect: keep the state and logs in this directory")
    args = parser.parse_args()
    if args.reconnect:
        reconnect_main(args)
        return
    nofile = raise_nofile(max(4096, 3 * args.nodes + 1024))
    node_timeout = args.node_timeout or max(10.0, args.nodes / 200)
    with tempfile.TemporaryDirectory(prefix="usher-bench-") as tmp:
        cluster = BenchCluster(Path(tmp), db_url=args.db_url, node_timeout=node_timeout)
        try:
            started = time.monotonic()
            pid = cluster.start_ctrl()
            cluster.add_blank_image()
            with RSSSampler(pid) as rss:
                idle_mb = rss.now_mb()
                # room for every VM (1 vCPU each) at twice the mean per node
                vcpus = max(64, 2 * -(-args.vms // args.nodes))
                cluster.start_swarms(args.nodes, args.swarms, vcpus=vcpus)
                connect_s = cluster.wait_nodes(args.nodes, timeout=max(120, args.nodes / 10))
                # the controller settles leftovers of a restart node_timeout after it starts:
                # let that one-off pass before measuring
                time.sleep(max(0.0, started + node_timeout + 1 - time.monotonic()))
                nodes_mb = rss.now_mb()
                result = asyncio.run(measure(cluster, args, pid))
                final_mb = rss.now_mb()
        finally:
            cluster.stop()
    result = {
        "nodes": args.nodes,
        "lnm_processes": args.swarms,
        "database": "postgresql" if args.db_url else "sqlite",
        "node_timeout_s": node_timeout,
        "open_files_limit": nofile,
        "connect_s": round(connect_s, 2),
        **result,
        "rss_mb": {
            "idle": idle_mb,
            "with_nodes": nodes_mb,
            "final": final_mb,
            "peak": round(rss.peak_mb, 1),
        },
    }
    path = write_result(args.name or f"scale-{args.nodes}", result, Path(args.out))
    s, lst = result["starts"], result["list"]
    print(
        f"{path.name}: {args.nodes} nodes, {s['running']}/{args.vms} running in {s['wall_s']} s "
        f"= {s['vms_per_s']} VMs/s; list p99 {lst['full_list_ms']['p99']} ms; "
        f"peak RSS {result['rss_mb']['peak']} MB; errors {len(s['errors'])}"
    )


async def seed_vms(cluster: BenchCluster, args: argparse.Namespace) -> dict[str, Any]:
    """Start ``--vms`` VMs over the nodes, as the starts benchmark does."""
    ca = str(cluster.ca_file) if cluster.ca_file else None
    async with AsyncClient(cluster.url, cluster.token, ca_file=ca, timeout=1800) as client:
        wall, _op, _accept, _asked, errors = await start_all(
            client, args.vms, args.batch, args.concurrency
        )
    return {"vms": args.vms, "wall_s": round(wall, 1), "errors": errors}


def reconnect_main(args: argparse.Namespace) -> None:
    """The reconnect storm (module doc): set up, kill and restart, write ``reconnect-N``."""
    nofile = raise_nofile(max(4096, 3 * args.nodes + 1024))
    node_timeout = args.node_timeout or max(10.0, args.nodes / 200)
    profile = Path(args.profile) if args.profile else None
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="usher-bench-"))
        cluster = BenchCluster(Path(tmp), db_url=args.db_url, node_timeout=node_timeout, tls=True)
        try:
            t0 = time.monotonic()
            cluster.start_ctrl()
            cluster.add_blank_image()
            vcpus = max(64, 2 * -(-args.vms // args.nodes))
            cluster.start_swarms(args.nodes, args.swarms, vcpus=vcpus)
            connect_s = cluster.wait_nodes(args.nodes, timeout=max(300, args.nodes / 5))
            seeded = asyncio.run(seed_vms(cluster, args))
            assert cluster.ctrl is not None
            settled = wait_at_rest(cluster.ctrl.pid)
            setup_s = time.monotonic() - t0
            result = asyncio.run(storm(cluster, args.nodes, profile, timeout=600))
        finally:
            cluster.stop()
    result = {
        "nodes": args.nodes,
        "lnm_processes": args.swarms,
        "tls": True,
        "database": "postgresql" if args.db_url else "sqlite",
        "node_timeout_s": node_timeout,
        "open_files_limit": nofile,
        "first_join_s": round(connect_s, 1),
        "seed": seeded,
        "settled_s": round(settled, 1),
        "setup_s": round(setup_s, 1),
        "reconnect": result,
    }
    path = write_result(args.name or f"reconnect-{args.nodes}", result, Path(args.out))
    r = result["reconnect"]
    print(
        f"{path.name}: {r['nodes_back']}/{args.nodes} nodes back, all connected "
        f"{r['all_connected_s']} s, op succeeded at {r['total_s']} s after the first answer; "
        f"per node p50 {r['per_node_s']['p50']} p99 {r['per_node_s']['p99']} max "
        f"{r['per_node_s']['max']} s; ctrl CPU {r['controller_cpu_s']} s; "
        f"tracebacks {r['tracebacks']}, handshake timeouts {r['handshake_timeouts']}"
    )


if __name__ == "__main__":
    main()
