"""The network between the nodes (and to the controller) is cut for a few seconds during a
migration: two network namespaces on a bridge, one veth set down and up again (fake driver:
what matters here is the link to the controller and reconciliation)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from harness import Cluster, wait_for
from usher.model import OpStatus, VMState

from .scenario import STATS, settle_and_check

BRIDGE = "usher-f-br"
SUBNET = "10.213.9"


def _run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"


def _teardown() -> None:
    for i in (2, 3):
        subprocess.run(["ip", "link", "del", f"usher-f-h{i}"], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, dict[str, str]]]:
    """Two namespaces joined by veths on a bridge (as in test_e2e_qemu.two_hosts)."""
    _teardown()
    holders: list[subprocess.Popen[bytes]] = []
    try:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        hosts = {}
        for i in (2, 3):
            holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
            holders.append(holder)
            ns = f"/proc/{holder.pid}/ns/net"
            wait_for(
                "the namespace",
                lambda ns=ns: os.readlink(ns) != os.readlink("/proc/self/ns/net"),
                timeout=5,
            )
            inside = ("nsenter", f"--net={ns}", "--", "ip")
            host_end, ns_end = f"usher-f-h{i}", f"usher-f-n{i}"
            _run(
                "ip",
                "link",
                "add",
                host_end,
                "type",
                "veth",
                "peer",
                "name",
                ns_end,
                "netns",
                str(holder.pid),
            )
            _run("ip", "link", "set", host_end, "master", BRIDGE)
            _run("ip", "link", "set", host_end, "up")
            _run(*inside, "addr", "add", f"{SUBNET}.{i}/24", "dev", ns_end)
            _run(*inside, "link", "set", ns_end, "up")
            _run(*inside, "link", "set", "lo", "up")
            hosts[ns] = f"{SUBNET}.{i}"
        yield f"{SUBNET}.1", hosts
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        _teardown()


SOURCE_CUT = pytest.mark.xfail(
    strict=False,  # a race: the cut may land after the migration completed
    reason="bug: after the source's link is cut mid-migration and comes back, the VMs stay "
    "`lost` (the fake source finished sending them; the target's prepared copy is never "
    "finished or aborted)",
)


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param("usher-f-h2", id="source", marks=SOURCE_CUT),
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
        _run("ip", "link", "set", cut, "down")
        down_at = time.monotonic()
        node = "node-1" if cut.endswith("2") else "node-2"
        try:
            wait_for(f"{node} declared down", lambda: not client.node(node).connected, timeout=15)
            STATS["detect_s"].append(time.monotonic() - down_at)
            time.sleep(max(0.0, 4 - (time.monotonic() - down_at)))
        finally:
            _run("ip", "link", "set", cut, "up")
        STATS["kills"] += 1
        op = cluster.run(op, timeout=60)
        assert op.status in (OpStatus.SUCCEEDED, OpStatus.FAILED)
        wait_for(f"{node} back", lambda: client.node(node).connected, timeout=40)
        vms_after = settle_and_check(cluster, bound=40)
        assert {vm.id for vm in vms_after} == set(vms)
        assert {vm.state for vm in vms_after} == {VMState.RUNNING}
    finally:
        cluster.stop()
