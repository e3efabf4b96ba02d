"""A node that joined legitimately is believed about its own VMs only (issue 12, items 13
and 14): it cannot take over another node's VM by claiming it (its copy is fenced there, the
record stays, the real copy is never touched), and it cannot attract VMs by claiming more
capacity than the site lets a node have."""

from __future__ import annotations

import json
import threading
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from faults.invariants import fake_running
from harness import Cluster, wait_for


class RogueNode(threading.Thread):
    """A node's link spoken by hand: says hello with ``vms`` and ``capacity``, answers every
    command ``ok``, and records the commands it is sent."""

    def __init__(self, cluster: Cluster, name: str, token: str, hello: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.name, self.token, self.hello = cluster, name, token, hello
        self.commands: list[dict[str, Any]] = []
        self.welcomed = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        url = self.cluster.url.replace("http", "ws", 1) + "/v1/lnm"
        headers = {"Authorization": f"Bearer {self.token}"}
        with connect(url, additional_headers=headers) as ws:
            ws.send(json.dumps({"type": "hello", "node": self.name, **self.hello}))
            welcome = json.loads(ws.recv(10))
            assert welcome["type"] == "welcome", welcome
            self.welcomed.set()
            while not self.stop.is_set():
                try:
                    raw = ws.recv(0.3)
                except TimeoutError:
                    ws.send(json.dumps({"type": "heartbeat"}))
                    continue
                except ConnectionClosed:
                    return
                message = json.loads(raw)
                if message.get("type") == "command":
                    self.commands.append(message)
                    ws.send(
                        json.dumps({"type": "reply", "id": message["id"], "ok": True, "result": {}})
                    )


def test_a_claim_on_another_nodes_vm_fences_the_claimer_never_the_owner(
    make_cluster, db_kind: str
) -> None:
    cluster: Cluster = make_cluster(nodes=1)
    client = cluster.client()
    cluster.run(client.create_vms(names=["precious"]))
    vm = client.get_vm("precious")
    cluster.kill_lnm("node-1")  # its guest runs on; the node is down
    wait_for("node-1 down", lambda: not cluster.node("node-1").connected)
    rogue = RogueNode(
        cluster,
        "rogue",
        cluster.join_token(),
        {"driver": "fake", "capacity": {"vcpus": 8, "memory_mb": 8192},
         "vms": [{"id": vm.id, "name": "precious", "state": "running"}]},
    )  # fmt: skip
    rogue.start()
    assert rogue.welcomed.wait(10)
    wait_for("the claim fenced", lambda: [c for c in rogue.commands if c["action"] == "fence"])
    assert [c["vm_id"] for c in rogue.commands if c["action"] == "fence"] == [vm.id]
    after = client.get_vm("precious")
    assert after.node == "node-1", after  # the record did not move
    fenced = cluster.http("GET", f"/v1/events?name=fenced&vm={vm.id}").json()["items"]
    assert [e["node"] for e in fenced] == ["rogue"]
    # a state report about it from the rogue node is not believed either
    rogue.stop.set()
    rogue.join(5)
    cluster.start_lnm("node-1")
    wait_for(
        "precious running on node-1", lambda: client.get_vm("precious").state.value == "running"
    )
    assert client.get_vm("precious").node == "node-1"
    assert fake_running(cluster, "node-1", vm.id)  # the real copy was never touched


def test_a_node_cannot_claim_more_than_the_site_allows(make_cluster, db_kind: str) -> None:
    cluster: Cluster = make_cluster(
        nodes=0,
        settings={"max_node_capacity": {"vcpus": 128, "memory_mb": 262144, "disk_gb": 4096}},
    )
    greedy = RogueNode(
        cluster, "greedy", cluster.join_token(),
        {"driver": "fake", "capacity": {"vcpus": 1_000_000, "memory_mb": 2**40}, "vms": []},
    )  # fmt: skip
    greedy.start()
    assert greedy.welcomed.wait(10)
    node = cluster.node("greedy")
    assert (node.capacity.vcpus, node.capacity.memory_mb) == (128, 262144)
    events = cluster.http("GET", "/v1/events?name=node_capacity&node=greedy").json()["items"]
    assert events and events[0]["data"]["claimed"]["vcpus"] == 1_000_000
    greedy.stop.set()
    # a join token may cap the nodes that join with it lower still
    answer = cluster.http(
        "POST", "/v1/nodes/join-tokens", json={"max_capacity": {"vcpus": 4, "memory_mb": 4096}}
    )
    small = RogueNode(
        cluster, "small", answer.json()["token"],
        {"driver": "fake", "capacity": {"vcpus": 64, "memory_mb": 65536}, "vms": []},
    )  # fmt: skip
    small.start()
    assert small.welcomed.wait(10)
    node = cluster.node("small")
    assert (node.capacity.vcpus, node.capacity.memory_mb) == (4, 4096)
    small.stop.set()
    # nor can it send a hello that is not one: a bogus capacity is refused, not believed
    auth = {"Authorization": f"Bearer {cluster.join_token()}"}
    with connect(cluster.url.replace("http", "ws", 1) + "/v1/lnm", additional_headers=auth) as ws:
        ws.send(json.dumps({"type": "hello", "node": "odd", "capacity": {"vcpus": -5}}))
        assert json.loads(ws.recv(10))["type"] == "refused"
