"""``/metrics``: Prometheus text that parses, is authorized, and moves with what happens."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import Cluster, wait_for
from usher.client import UsherError

MIB = 1024 * 1024
PLUGINS = [
    "authz",
    "site_plugins:Policy",
    "site_plugins:Boom",
    "site_plugins:Sleepy",
    "slow_plugins:SlowSync",
]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(cluster: Cluster, token: str | None = "admin") -> str:
    r = cluster.http("GET", "/metrics", token=token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return r.text


def scrape(cluster: Cluster) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(cluster)):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def both_nodes(samples: Samples, metric: str) -> float:
    return sum(value(samples, metric, node=n) for n in ("node-1", "node-2"))


def eventually(cluster: Cluster, what: str, check: Callable[[Samples], bool]) -> Samples:
    return wait_for(what, lambda: (lambda s: s if check(s) else None)(scrape(cluster)), 15)


@pytest.fixture
def site(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster(
        nodes=2, plugins=PLUGINS, plugin_tables={"site_plugins:Policy": {"closed": ["closed"]}}
    )


def check_format_and_access(site: Cluster) -> None:
    """Scraping needs a token allowed ``metrics.read``; what it gets is Prometheus text."""
    r = site.http("GET", "/metrics", token=None)
    assert r.status_code == 401 and "missing token" in r.json()["error"]
    bob = site.issue_token("bob", ["user"])
    r = site.http("GET", "/metrics", token=bob)
    assert r.status_code == 403 and "bob may not metrics.read" in r.json()["error"]
    text = scrape_text(site, site.issue_token("olga", ["operator"]))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith("usher_") for name in families)
    assert families["usher_operations"].type == "counter"
    assert families["usher_operation_duration_seconds"].type == "histogram"
    assert families["usher_vms"].type == "gauge"
    promtool = shutil.which("promtool")
    if promtool:  # the format check Prometheus itself does, where it is installed
        done = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_metrics_are_authorized_and_move_with_operations(site: Cluster) -> None:
    check_format_and_access(site)
    client = site.client()
    ops = "usher_operations_total"
    latency = "usher_operation_duration_seconds_count"
    before = scrape(site)
    assert value(before, "usher_vms", state="running") == 0
    assert value(before, "usher_node_capacity_cpus", node="node-1") == 8
    assert value(before, "usher_node_capacity_memory_bytes", node="node-1") == 8192 * MIB
    assert value(before, "usher_node_link_up", node="node-2") == 1
    assert value(before, "usher_node_state", node="node-1", state="up") == 1

    site.run(client.create_vms(count=2, cluster="web", vcpus=2, memory_mb=128))
    now = eventually(
        site,
        "the start counted",
        lambda s: value(s, ops, kind="start", outcome="succeeded") == 1,
    )
    assert value(now, latency, kind="start") == 1
    assert value(now, "usher_operation_duration_seconds_sum", kind="start") > 0
    assert value(now, "usher_vms", state="running") == 2
    assert value(now, "usher_events_total", name="start") == 2
    eventually(
        site,
        "the nodes' reservations",
        lambda s: (
            both_nodes(s, "usher_node_reserved_cpus") == 4
            and both_nodes(s, "usher_node_reserved_memory_bytes") == 256 * MIB
        ),
    )

    vm = site.vms()[0]
    site.run(client.action("stop", [vm.id]))
    now = eventually(
        site, "the stop counted", lambda s: value(s, ops, kind="stop", outcome="succeeded") == 1
    )
    assert value(now, "usher_vms", state="running") == 1
    assert value(now, "usher_vms", state="stopped") == 1

    with pytest.raises(UsherError):  # strictly, a stopped VM cannot stop: refused before
        client.action("stop", [vm.id], strict=True)  # it is an operation
    with pytest.raises(UsherError) as vetoed:
        client.create_vms(cluster="closed")
    assert vetoed.value.status == 403
    now = eventually(
        site,
        "the refusal and the veto counted",
        lambda s: (
            value(s, ops, kind="stop", outcome="refused") == 1
            and value(s, ops, kind="start", outcome="vetoed") == 1
        ),
    )
    assert value(now, latency, kind="stop") == 1  # only operations that ran are timed

    # plugin hooks: timed, their exceptions and timeouts counted; vetoes are answers
    hook = "usher_plugin_hook_duration_seconds_count"
    assert value(now, hook, plugin="tokens", hook="authenticate") > 0
    assert value(now, hook, plugin="site_plugins:Policy", hook="start_request") >= 2
    failures = "usher_plugin_hook_failures_total"
    assert value(now, failures, plugin="site_plugins:Policy", hook="start_request") == 0
    assert value(now, failures, plugin="site_plugins:Boom", hook="usher_event") > 0
    eventually(
        site,
        "the timeouts of the hanging plugin and of the slow one in a thread (one a VM)",
        lambda s: (
            value(s, failures, plugin="site_plugins:Sleepy", hook="usher_event") > 0
            and value(s, failures, plugin="slow_plugins:SlowSync", hook="usher_event") == 2
        ),
    )

    # clients of the live event stream
    assert value(now, "usher_event_stream_clients") == 0
    headers = {"Authorization": f"Bearer {site.token}"}
    with httpx.stream("GET", f"{site.url}/v1/events/stream", headers=headers, timeout=10) as r:
        lines = r.iter_lines()  # kept: a dropped iterator closes the response
        assert next(lines).startswith(":")  # subscribed
        assert value(scrape(site), "usher_event_stream_clients") == 1
    eventually(site, "the client gone", lambda s: value(s, "usher_event_stream_clients") == 0)

    # an LNM link lost
    site.kill_lnm("node-2")
    now = eventually(
        site, "node-2's link down", lambda s: value(s, "usher_node_link_up", node="node-2") == 0
    )
    assert value(now, "usher_node_link_losses_total", node="node-2") == 1
    assert value(now, "usher_node_state", node="node-2", state="down") == 1
