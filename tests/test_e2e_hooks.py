"""The extension points later plugins build on: dry runs, visibility, addresses, routes."""

from __future__ import annotations

import json

import httpx
import pytest

from harness import Cluster, wait_for
from site_plugins import Alice
from usher.client import Client, UsherError
from usher.model import OpStatus

PLUGINS = ["site_plugins:Alice", "site_plugins:TinyIpam"]


@pytest.fixture
def hooked(make_cluster) -> Cluster:
    return make_cluster(nodes=2, plugins=PLUGINS)


def test_dry_run_plans_without_changing_anything(cluster: Cluster) -> None:
    client = cluster.client()
    plan = client.plan_start(count=4, cluster="p")
    assert [vm.name for vm in plan.vms] == ["p-1", "p-2", "p-3", "p-4"]
    assert {vm.node for vm in plan.vms} == {"node-1", "node-2", "node-3"}
    assert plan.error is None
    assert cluster.vms() == [] and client.list_operations().total == 0
    too_big = client.plan_start(count=1, vcpus=9)
    assert too_big.error and "not enough capacity" in too_big.error
    assert set(too_big.rejected) == {"node-1", "node-2", "node-3"}
    assert all("capacity" in why for why in too_big.rejected.values())
    client.drain("node-3")
    result = cluster.ush("start", "-n", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "node-3" in result.stdout and "draining" in result.stdout
    assert "nothing was changed" in result.stderr
    assert cluster.vms() == []

    op = cluster.run(client.create_vms(count=1, cluster="m", node="node-1"))
    assert op.status == OpStatus.SUCCEEDED
    plan = json.loads(cluster.ush("migrate", "m-1", "--dry-run", "-o", "json").stdout)
    assert plan["vms"][0]["node"] == "node-2"  # not its own node, not the drained one
    assert "draining" in plan["rejected"]["node-3"]
    assert client.get_vm("m-1").node == "node-1"


def test_scope_limits_what_a_user_sees(hooked: Cluster) -> None:
    admin = hooked.client()
    alice = Client(hooked.url, Alice.TOKEN)
    try:
        hooked.run(admin.create_vms(count=2, cluster="adm"))
        hooked.run(alice.create_vms(count=1, cluster="mine"))
        assert {vm.cluster for vm in admin.iter_vms()} == {"adm", "mine"}
        assert [vm.name for vm in alice.iter_vms()] == ["mine-1"]
        assert {op.principal for op in alice.list_operations().items} == {"alice"}
        assert {e.principal for e in alice.iter_events()} == {"alice"}
    finally:
        alice.close()


def test_addresses_are_allocated_and_never_handed_out_twice(hooked: Cluster) -> None:
    client = hooked.client()
    op = hooked.run(client.create_vms(count=2, cluster="ip"))
    vms = [client.get_vm(i) for i in op.targets]
    assert sorted(a for vm in vms for a in vm.addresses) == ["192.0.2.10", "192.0.2.11"]
    assert {vm.spec.nics[0]["mac"] for vm in vms} == {"52:54:00:00:00:10", "52:54:00:00:00:11"}
    # two more do not fit the range: refused whole, the one allocated on the way given back
    with pytest.raises(UsherError) as err:
        client.create_vms(count=2, cluster="ip2")
    assert err.value.status == 403 and "range toy is full" in err.value.message
    assert len(hooked.vms()) == 2
    op = hooked.run(client.create_vms(count=1, cluster="ip3"))
    assert client.get_vm(op.targets[0]).addresses == ["192.0.2.12"]
    hooked.run(client.destroy(cluster="ip"))
    free = hooked.http("GET", "/v1/toy-ipam/free")
    wait_for(
        "addresses back", lambda: len(hooked.http("GET", "/v1/toy-ipam/free").json()["free"]) == 2
    )
    assert free.status_code == 200


def test_plugin_routes_are_authenticated(hooked: Cluster) -> None:
    response = hooked.http("GET", "/v1/toy-ipam/free")
    assert response.status_code == 200 and response.json()["asked_by"] == "admin"
    anonymous = httpx.get(hooked.url + "/v1/toy-ipam/free", timeout=10)
    assert anonymous.status_code == 401
    doc = hooked.http("GET", "/openapi.json", token=None).json()
    assert "/v1/toy-ipam/free" in doc["paths"]


def test_tokens_of_other_users(cluster: Cluster) -> None:
    bob = cluster.issue_token("bob", ["user"])
    assert Client(cluster.url, bob).whoami().name == "bob"
    assert cluster.client().request("GET", "/whoami")["name"] == "admin"


def test_anti_affinity_holds_through_start_and_migration(cluster: Cluster) -> None:
    client = cluster.client()
    op = cluster.run(client.create_vms(count=2, cluster="aa", kwargs={"anti_affinity": True}))
    nodes = {client.get_vm(v).node for v in op.targets}
    assert len(nodes) == 2
    # moving aa-1 may only go to the node that holds no VM of the cluster
    free = ({"node-1", "node-2", "node-3"} - nodes).pop()
    plan = client.plan_migrate(["aa-1"])
    assert plan.vms[0].node == free, plan
    assert any("anti-affinity" in why for why in plan.rejected.values())
    op = cluster.run(client.migrate(["aa-1"]))
    assert op.status == OpStatus.SUCCEEDED and client.get_vm("aa-1").node == free
    # a third would need a node with none of them: there is none left after one more
    assert client.plan_start(count=2, cluster="aa", kwargs={"anti_affinity": True}).error
