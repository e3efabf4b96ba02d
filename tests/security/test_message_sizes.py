"""No node message grows with what users store (issue 12, item 3): a node's inventory
carries no specs and comes in pieces, so a node with many VMs, each with the largest kwargs
allowed, reconnects as any other."""

from __future__ import annotations

from pathlib import Path

from harness import Cluster, wait_for
from usher import wire
from usher.bounds import MAX_KWARGS_BYTES
from usher.lnm.agent import INVENTORY_CHUNK, LNM, LNMConfig
from usher.model import VMSpec
from usher.vmm.base import Guest
from usher.vmm.fake import FakeDriver


async def test_a_hello_of_many_large_vms_comes_in_small_pieces(tmp_path: Path) -> None:
    driver = FakeDriver(options={"vcpus": 4096, "memory_mb": 1 << 30})
    wide = {"blob": "x" * (MAX_KWARGS_BYTES - 100)}
    for n in range(1200):
        spec = VMSpec(vcpus=1, memory_mb=16, kwargs=wide)
        await driver.start(Guest(id=f"vm-{n:012x}", name=f"v{n}", spec=spec))
    lnm = LNM(
        LNMConfig("http://127.0.0.1:1", "n1", tmp_path / "cred", vcpus=4096, memory_mb=1 << 30),
        driver,
    )
    messages = await lnm._hello()
    sizes = [len(wire.dumps(m)) for m in messages]
    assert len(messages) == -(-1200 // INVENTORY_CHUNK)
    assert messages[0]["type"] == "hello" and all(m["type"] == "inventory" for m in messages[1:])
    assert [m["more"] for m in messages] == [True] * (len(messages) - 1) + [False]
    assert sum(len(m["vms"]) for m in messages) == 1200
    assert max(sizes) < 200_000, sizes  # 1,200 VMs of 64 KiB kwargs each: 75 MB with specs


def test_a_node_with_many_vms_rejoins_a_restarted_controller(make_cluster, db_kind: str) -> None:
    cluster: Cluster = make_cluster(nodes=1, lnm_options={"vcpus": 1024, "memory_mb": 65536})
    client = cluster.client()
    op = cluster.run(client.create_vms(count=1000, memory_mb=16, cluster="many"), timeout=120)
    assert op.status.value == "succeeded", op.error
    cluster.kill_ctrl()
    cluster.start_ctrl()
    cluster.wait_node("node-1", connected=True, timeout=30)
    wait_for(
        "all 1,000 running again",
        lambda: {vm.state.value for vm in cluster.vms(cluster="many")} == {"running"},
        timeout=60,
    )
    assert "malformed" not in cluster.log("ctrl")
