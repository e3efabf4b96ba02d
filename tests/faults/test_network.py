"""The network between the nodes (and to the controller) is cut for a few seconds during a
migration: two network namespaces on a bridge, one veth set down and up again (fake driver,
whose migration runs over a real TCP connection between the namespaces: the cut stalls it,
the controller gives up on the node and aborts the target's copy, the source's migration
then fails and the VMs run on there)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import netns
from harness import Cluster, wait_for
from usher.model import OpStatus, VMState

from .scenario import STATS, settle_and_check

PREFIX = "usher-f"
SUBNET = "10.213.9"


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, dict[str, str]]]:
    """Two namespace hosts on a bridge of their own (see tests/netns.py)."""
    with netns.two_hosts(PREFIX, SUBNET) as hosts:
        yield hosts


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("usher-f-h2", id="source"),
        pytest.param("usher-f-h3", id="target"),
    ],
)
def test_network_cut_during_migration(tmp_path, two_hosts, cut: str) -> None:
    ctrl_address, hosts = two_hosts
    cluster = Cluster(tmp_path, None, listen_host=ctrl_address)
    cluster.add_blank_image()
    options = {"latency": {"migrate": 3.0}}
    try:
        cluster.start_ctrl()
        for i, (ns, address) in enumerate(hosts.items(), start=1):
            cluster.start_lnm(f"node-{i}", netns=ns, migration_host=address, driver_options=options)
        client = cluster.client()
        vms = list(cluster.run(client.create_vms(count=2, cluster="net", node="node-1")).targets)
        op = client.migrate(vms, target_node="node-2")
        time.sleep(0.5)
        netns.run("ip", "link", "set", cut, "down")
        down_at = time.monotonic()
        node = "node-1" if cut.endswith("2") else "node-2"
        try:
            wait_for(f"{node} declared down", lambda: not client.node(node).connected, timeout=15)
            STATS["detect_s"].append(time.monotonic() - down_at)
            time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
        finally:
            netns.run("ip", "link", "set", cut, "up")
        STATS["kills"] += 1
        op = cluster.run(op, timeout=60)
        assert op.status in (OpStatus.SUCCEEDED, OpStatus.FAILED)
        wait_for(f"{node} back", lambda: client.node(node).connected, timeout=40)
        vms_after = settle_and_check(cluster, bound=40)
        assert {vm.id for vm in vms_after} == set(vms)
        assert {vm.state for vm in vms_after} == {VMState.RUNNING}
    finally:
        cluster.stop()
