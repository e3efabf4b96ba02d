"""Bad input gets a 4xx with a message a person understands, and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import Cluster


@pytest.fixture(scope="module")
def prepared(shared_cluster: Cluster) -> Cluster:
    """Two running VMs (b-1, b-2) and a stopped one (b-3)."""
    client = shared_cluster.client()
    shared_cluster.run(client.create_vms(count=3, cluster="b"))
    shared_cluster.run(client.stop(["b-3"]))
    return shared_cluster


@pytest.fixture
def busy(prepared: Cluster) -> Iterator[Cluster]:
    """The prepared cluster; checks after each test that no VM and no operation changed."""
    client = prepared.client()
    before = sorted((vm.id, vm.state, vm.node) for vm in prepared.vms())
    ops_before = client.list_operations().total
    yield prepared
    assert sorted((vm.id, vm.state, vm.node) for vm in prepared.vms()) == before
    assert client.list_operations().total == ops_before


def error_of(response) -> str:
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert isinstance(body["error"], str) and len(body["error"]) > 10
    return body["error"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [
        (
            "POST",
            "/v1/vms",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ("POST", "/v1/vms", {"json": {"count": 0}}, 422, "count"),
        ("POST", "/v1/vms", {"json": {"count": 1, "colour": "red"}}, 422, "colour"),
        ("POST", "/v1/vms", {"json": {"names": ["bad name!"]}}, 422, "invalid VM name"),
        ("POST", "/v1/vms", {"json": {"names": ["b-1"]}}, 409, "already taken"),
        ("POST", "/v1/vms", {"json": {"count": 1, "node": "nowhere"}}, 404, "unknown node"),
        ("POST", "/v1/vms", {"json": {"count": 1, "vcpus": 64}}, 409, "not enough capacity"),
        (
            "POST",
            "/v1/vms",
            {"json": {"count": 200, "memory_mb": 1024}},
            409,
            "not enough capacity",
        ),
        ("GET", "/v1/vms/nope", {}, 404, "unknown VM"),
        ("GET", "/v1/vms?state=dancing", {}, 422, "state"),
        ("GET", "/v1/vms?cursor=xyz", {}, 400, "invalid cursor"),
        ("POST", "/v1/vms/actions/stop", {"json": {"vms": ["nope"]}}, 404, "unknown VM"),
        ("POST", "/v1/vms/actions/stop", {"json": {}}, 422, "name the VMs"),
        ("POST", "/v1/vms/actions/stop", {"json": {"cluster": "ghost"}}, 404, "no VMs"),
        ("POST", "/v1/vms/actions/explode", {"json": {"vms": ["b-1"]}}, 422, "kind"),
        (
            "POST",
            "/v1/vms/actions/resume",
            {"json": {"vms": ["b-1"], "strict": True}},
            409,
            "b-1 is running already",
        ),
        ("POST", "/v1/vms/actions/pause", {"json": {"vms": ["b-3"]}}, 409, "b-3 is stopped"),
        (
            "POST",
            "/v1/vms/actions/start",
            {"json": {"vms": ["b-1"], "strict": True}},
            409,
            "b-1 is running already",
        ),
        (
            "POST",
            "/v1/vms/actions/migrate",
            {"json": {"vms": ["b-1"], "target_node": "zz"}},
            404,
            "unknown node",
        ),
        ("GET", "/v1/nodes/nowhere", {}, 404, "unknown node"),
        ("POST", "/v1/nodes/nowhere/drain", {}, 404, "unknown node"),
        ("GET", "/v1/operations/op-nope", {}, 404, "unknown operation"),
    ],
)
def test_bad_requests(busy: Cluster, method, path, kwargs, status, words) -> None:
    response = busy.http(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert words in error_of(response)


def test_migrating_to_the_same_node_is_refused(busy: Cluster) -> None:
    vm = busy.client().get_vm("b-1")
    response = busy.http(
        "POST", "/v1/vms/actions/migrate", json={"vms": ["b-1"], "target_node": vm.node}
    )
    assert response.status_code == 409
    assert "already on node" in error_of(response)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer ush_wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
)
def test_missing_or_wrong_token(busy: Cluster, headers: dict[str, str]) -> None:
    for method, path in (
        ("GET", "/v1/vms"),
        ("POST", "/v1/vms"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/events"),
        ("POST", "/v1/vms/actions/stop"),
    ):
        response = busy.http(method, path, token=None, headers=headers, json={"count": 1})
        assert response.status_code == 401, (path, response.text)
        assert "token" in error_of(response)


def test_node_credential_cannot_use_the_api(busy: Cluster) -> None:
    node_token = (busy.root / "nodes" / "node-1" / "node.credential").read_text().strip()
    response = busy.http("GET", "/v1/vms", token=node_token)
    assert response.status_code == 403
    assert "node credential" in error_of(response)


def test_openapi_document_is_served(busy: Cluster) -> None:
    doc = busy.http("GET", "/openapi.json", token=None).json()
    assert doc["info"]["title"] == "Usher"
    for path in (
        "/v1/vms",
        "/v1/vms/{vm}",
        "/v1/vms/actions/{kind}",
        "/v1/operations",
        "/v1/operations/{op_id}/wait",
        "/v1/nodes",
        "/v1/nodes/{name}/drain",
        "/v1/events",
        "/v1/events/stream",
    ):
        assert path in doc["paths"], path
