"""The usage history behind the dashboard's charts: sampled, bounded, authorized; and the
other setting of ``[plugins.metrics]``, a public ``/metrics``."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from harness import Cluster, wait_for
from usher.ctrl.store import Store
from usher.ctrl.usage import UsageHistory, UsagePoint, UsageSampleRow, downsample
from usher.model import Node, Usage

INTERVAL = 0.5
RETENTION = 3.0


def series(cluster: Cluster, token: str = "admin", **params: Any) -> dict[str, Any]:
    r = cluster.http("GET", "/v1/usage", token=token, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def oldest_and_count(cluster: Cluster) -> tuple[float, int]:
    """The oldest sample's time and the number of samples, read from the database."""

    async def read() -> tuple[float, int]:
        store = Store(cluster.db_url or f"sqlite:///{cluster.state / 'usher.db'}")
        try:
            async with store.sessions() as s:
                stmt = select(func.min(UsageSampleRow.time), func.count())
                oldest, count = (await s.execute(stmt)).one()
        finally:
            await store.close()
        return float(oldest or 0.0), int(count)

    return asyncio.run(read())


@pytest.fixture
def site(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster(
        nodes=2,
        plugins=["authz"],
        plugin_tables={
            "metrics": {"usage_interval": INTERVAL, "usage_retention": RETENTION, "public": True}
        },
    )


def check_authorization(site: Cluster) -> None:
    """Usage is authorized as showing the node (``node.show``) or the VM (``vm.show``)."""
    bob = site.issue_token("bob", ["user"])
    site.run(site.client(bob).create_vms(names=["bobs"], vcpus=1, memory_mb=64))
    assert series(site, token=bob, vm="bobs")["key"] == site.client().get_vm("bobs").id
    assert series(site, token=bob, node="node-1")["kind"] == "node"
    r = site.http("GET", "/v1/usage", token=bob, params={"vm": "busy"})
    assert r.status_code == 403 and "bob may not vm.show" in r.json()["error"]
    for params, status in (
        ({}, 400),
        ({"vm": "bobs", "node": "node-1"}, 400),
        ({"vm": "nope"}, 404),
        ({"node": "nope"}, 404),
        ({"node": "node-1", "points": 1}, 422),
    ):
        r = site.http("GET", "/v1/usage", params=params)
        assert r.status_code == status, (params, r.text)
        assert r.json()["error"]
    assert site.http("GET", "/v1/usage", token=None, params={"node": "node-1"}).status_code == 401
    # public = true in [plugins.metrics] opens /metrics only
    metrics = site.http("GET", "/metrics", token=None)
    assert metrics.status_code == 200 and 'usher_node_link_up{node="node-1"} 1.0' in metrics.text


def test_usage_is_sampled_bounded_and_authorized(site: Cluster) -> None:
    began = time.time()  # the nodes have been sampled since they joined, before this
    client = site.client()
    site.run(client.create_vms(names=["busy"], vcpus=2, memory_mb=512))
    vm = client.get_vm("busy")
    check_authorization(site)

    def vm_points() -> list[dict[str, Any]]:
        points = series(site, vm="busy")["points"]
        return points if len([p for p in points if p["cpu_percent"] is not None]) >= 3 else []

    points = wait_for("CPU samples of the VM", vm_points, timeout=15)
    # the fake driver burns 5 % of each vCPU and holds half the memory of a running VM
    assert all(p["memory_used_mb"] == 256 for p in points)
    rates = [p["cpu_percent"] for p in points if p["cpu_percent"] is not None]
    assert 5 <= statistics.median(rates) <= 15  # heartbeats arrive with jitter: no exact rate
    node = series(site, node=vm.node)
    assert node["kind"] == "node" and node["interval"] == INTERVAL
    last = [series(site, node=name)["points"][-1] for name in ("node-1", "node-2")]
    assert sum(p["vms"] for p in last) == 2 and sum(p["vcpus"] for p in last) == 3
    times = [p["time"] for p in node["points"]]
    assert times == sorted(times)
    assert len(series(site, node=vm.node, points=2)["points"]) <= 2

    time.sleep(max(0.0, began + RETENTION + 2 * INTERVAL - time.time()))
    # the samples taken before the test began are past the retention now: pruned
    oldest, count = oldest_and_count(site)
    assert oldest >= time.time() - RETENTION - 2 * INTERVAL
    series_count = 4  # two nodes and two VMs
    assert count <= series_count * (RETENTION / INTERVAL + 2)
    assert len(series(site, node=vm.node)["points"]) <= RETENTION / INTERVAL + 2


def test_downsample_averages_equal_time_slots() -> None:
    points = [UsagePoint(time=t, cpu_percent=t, memory_used_mb=2 * t) for t in range(10)]
    assert downsample(points, 10) == points
    halves = downsample(points, 2)
    assert [(p.time, p.cpu_percent, p.memory_used_mb) for p in halves] == [
        (2.0, 2.0, 4.0),
        (7.0, 7.0, 14.0),
    ]
    gaps = [UsagePoint(time=0, cpu_percent=None, memory_used_mb=1)] * 3
    assert downsample(gaps, 1)[0].cpu_percent is None


async def test_a_large_sample_lets_the_event_loop_run(tmp_path: Path) -> None:
    """SQLite runs on the event loop's thread: a sample of 5,000 VMs, and the pruning of the
    5,000 samples gone past the retention, are written a part at a time with the loop's
    other tasks running in between (in one statement each, 10,000 VMs held the loop about
    0.25 s every sample), and all of it is written and pruned."""
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    per_vm = {f"vm-{i:05d}": {"cpu_seconds": 1.0, "memory_used_mb": 64.0} for i in range(5000)}
    node = Node(name="n1", connected=True, usage=Usage(per_vm=per_vm))
    history = UsageHistory(store, SimpleNamespace(nodes={"n1": node}), {"usage_retention": 60})
    try:
        await history.sample()
        async with store.sessions() as s, s.begin():  # an old sample, past the retention
            await s.execute(update(UsageSampleRow).values(time=UsageSampleRow.time - 120))
        turns = 0

        async def other_task() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        running = asyncio.ensure_future(other_task())
        await asyncio.sleep(0)
        before = turns
        await history.sample()
        during = turns - before
        running.cancel()
        async with store.sessions() as s:
            oldest, count = (
                await s.execute(select(func.min(UsageSampleRow.time), func.count()))
            ).one()
        assert count == 5001 and oldest > time.time() - 60
        assert during >= 8, f"the loop ran {during} times while 10,000 rows were written"
    finally:
        await store.close()
