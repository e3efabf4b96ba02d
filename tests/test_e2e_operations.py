"""Every VM operation through a real controller and real LNM processes (fake driver)."""

from __future__ import annotations

import itertools
from collections import Counter

from harness import Cluster, wait_for
from usher.model import OpStatus, VMState


def start(cluster: Cluster, n: int, name: str = "c1", **kwargs: object) -> list[str]:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=n, cluster=name, **kwargs))
    assert op.status == OpStatus.SUCCEEDED, op.error
    return op.targets


def states(c: Cluster, **filters: object) -> Counter[str]:
    return Counter(vm.state.value for vm in c.vms(**filters))


def test_start_places_vms_across_nodes(cluster: Cluster) -> None:
    ids = start(cluster, 20)
    vms = cluster.vms(cluster="c1")
    assert sorted(vm.id for vm in vms) == sorted(ids)
    assert {vm.state for vm in vms} == {VMState.RUNNING}
    assert sorted(vm.name for vm in vms) == sorted(f"c1-{i}" for i in range(1, 21))
    per_node = Counter(vm.node for vm in vms)
    assert set(per_node) == {"node-1", "node-2", "node-3"}
    assert max(per_node.values()) - min(per_node.values()) <= 1  # spread weigher
    macs = [vm.spec.nics[0]["mac"] for vm in vms]  # every VM got a NIC with a MAC Usher chose
    assert len(set(macs)) == 20 and all(m.startswith("52:54:00:") for m in macs)
    # the LNMs report usage matching what runs there
    for name, count in per_node.items():
        wait_for(f"{name} usage", lambda n=name, c=count: cluster.node(n).usage.vms == c)


def test_every_action_on_one_vm(cluster: Cluster) -> None:
    client = cluster.client()
    (vm_id,) = start(cluster, 1, "solo")

    def do(kind: str, expect: VMState, **kw: object) -> None:
        op = cluster.run(client.action(kind, [vm_id], **kw))
        assert op.status == OpStatus.SUCCEEDED, f"{kind}: {op.error}"
        assert client.get_vm(vm_id).state == expect, kind

    do("pause", VMState.PAUSED)
    do("resume", VMState.RUNNING)
    do("reboot", VMState.RUNNING)
    do("stop", VMState.STOPPED)
    do("start", VMState.RUNNING)
    do("cycle", VMState.RUNNING)
    source = client.get_vm(vm_id).node
    op = cluster.run(client.migrate([vm_id]))
    assert op.status == OpStatus.SUCCEEDED, op.error
    moved = client.get_vm(vm_id)
    assert moved.node != source and moved.state == VMState.RUNNING
    details = op.result["details"][vm_id]
    assert details["from"] == source and details["to"] == moved.node
    assert details["total_ms"] > 0 and "downtime_ms" in details
    target = next(n for n in ("node-1", "node-2", "node-3") if n not in (source, moved.node))
    op = cluster.run(client.migrate([vm_id], target_node=target))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert client.get_vm(vm_id).node == target
    op = cluster.run(client.destroy([vm_id]))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert cluster.vms() == []
    names = [e.name for e in client.iter_events(vm=vm_id)]
    for expected in (
        "register",
        "start",
        "pause",
        "resume",
        "reboot",
        "stop",
        "cycle",
        "migrate",
        "destroy",
        "unregister",
        "state_change",
    ):
        assert expected in names, f"no {expected} event in {names}"


def test_cluster_wide_actions(cluster: Cluster) -> None:
    client = cluster.client()
    web = start(cluster, 5, "web")
    db = start(cluster, 2, "db")
    op = cluster.run(client.stop(cluster="web"))
    assert op.status == OpStatus.SUCCEEDED and sorted(op.targets) == sorted(web)
    assert states(cluster, cluster="web") == {"stopped": 5}
    assert states(cluster, cluster="db") == {"running": 2}
    op = cluster.run(client.start_existing(cluster="web"))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert states(cluster, cluster="web") == {"running": 5}
    op = cluster.run(client.destroy(cluster="web"))
    assert op.status == OpStatus.SUCCEEDED
    assert {vm.id for vm in cluster.vms()} == set(db)


def test_operations_on_different_vms_run_concurrently(make_cluster) -> None:
    cluster = make_cluster(nodes=2, lnm_options={"driver_options": {"latency": {"reboot": 1.5}}})
    client = cluster.client()
    a, b = start(cluster, 2, "conc")
    op_a, op_b = client.reboot([a]), client.reboot([b])
    done_a, done_b = cluster.run(op_a), cluster.run(op_b)
    assert done_a.status == done_b.status == OpStatus.SUCCEEDED
    # they overlapped in time: each began before the other ended
    assert done_a.started_at < done_b.finished_at and done_b.started_at < done_a.finished_at


def test_operations_on_one_vm_are_serialized(make_cluster) -> None:
    cluster = make_cluster(nodes=1, lnm_options={"driver_options": {"latency": {"reboot": 0.5}}})
    client = cluster.client()
    (vm,) = start(cluster, 1, "serial")
    ops = [client.reboot([vm]) for _ in range(3)]
    done = sorted((cluster.run(op) for op in ops), key=lambda o: o.started_at)
    assert all(op.status == OpStatus.SUCCEEDED for op in done)
    for earlier, later in itertools.pairwise(done):
        assert later.started_at >= earlier.finished_at


def test_drained_node_gets_no_new_vms(cluster: Cluster) -> None:
    client = cluster.client()
    assert client.drain("node-2").state.value == "draining"
    start(cluster, 6, "d")
    assert "node-2" not in {vm.node for vm in cluster.vms()}
    assert client.undrain("node-2").state.value == "up"
    start(cluster, 3, "e")
    assert "node-2" in {vm.node for vm in cluster.vms(cluster="e")}


def test_event_stream_delivers_live_events(cluster: Cluster) -> None:
    import threading

    client = cluster.client()
    seen: list[str] = []
    ready = threading.Event()

    def listen() -> None:
        stream = cluster.client().stream_events(name="start")
        ready.set()
        for ev in stream:
            seen.append(ev.vm_id or "")
            if len(seen) >= 2:
                return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    ready.wait(5)
    wait_for("the stream to subscribe", lambda: cluster.http("GET", "/v1/whoami").is_success)
    import time

    time.sleep(0.5)
    ids = start(cluster, 2, "stream")
    t.join(15)
    assert sorted(seen) == sorted(ids)
    assert client.whoami().name == "admin"
