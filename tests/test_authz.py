"""The authz plugin: every endpoint for anonymous, wrong-user, member, operator and admin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conftest import _start
from harness import Cluster

ANON, BOB, CAROL, OSCAR, ADMIN = "anonymous", "bob", "carol", "oscar", "admin"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_kind: str) -> Iterator[dict[str, Any]]:
    """alice owns cluster a (a-1, a-2) and made carol a member; bob owns b (b-1); oscar is an
    operator."""
    cluster = _start(tmp_path_factory.mktemp("authz"), db_kind, 2, None, plugins=["authz"])
    tokens = {name: cluster.issue_token(name, ["user"]) for name in ("alice", BOB, CAROL)}
    tokens[OSCAR] = cluster.issue_token(OSCAR, ["operator"])
    tokens[ADMIN] = cluster.token
    alice, bob = cluster.client(tokens["alice"]), cluster.client(tokens[BOB])
    op_a = cluster.run(alice.create_vms(count=2, cluster="a"))
    op_b = cluster.run(bob.create_vms(count=1, cluster="b"))
    alice.request("PUT", "/clusters/a/members/carol")
    yield {"cluster": cluster, "tokens": tokens, "op_a": op_a.id, "op_b": op_b.id}
    cluster.stop()


def call(world: dict[str, Any], who: str, method: str, path: str, body: Any = None):
    cluster: Cluster = world["cluster"]
    path = path.format(op_a=world["op_a"])
    token = None if who == ANON else world["tokens"][who]
    kwargs = {"json": body} if body is not None else {}
    return cluster.http(method, path, token=token, **kwargs)


MATRIX = [
    # (method, path, body, {who: expected status}); a VM or an operation one may not see is
    # unknown to one (404, as one that does not exist): a refusal reveals nothing
    ("GET", "/v1/vms/a-1", None, {ANON: 401, BOB: 404, CAROL: 200, OSCAR: 200, ADMIN: 200}),
    ("GET", "/v1/vms/a-1/console", None, {ANON: 401, BOB: 404, CAROL: 200, OSCAR: 200, ADMIN: 200}),
    # the fake guests' image runs no cloud-init: a caller who may see the VM is told so (409)
    ("GET", "/v1/vms/a-1/ssh", None, {ANON: 401, BOB: 404, CAROL: 409, OSCAR: 409, ADMIN: 409}),
    (  # a change of its tags (its name stays, for the other rows)
        "PATCH",
        "/v1/vms/a-1",
        {"add_tags": ["seen"]},
        {ANON: 401, BOB: 404, CAROL: 200, OSCAR: 200, ADMIN: 200},
    ),
    (
        "POST",
        "/v1/vms/actions/reboot",
        {"vms": ["a-1"]},
        {ANON: 401, BOB: 404, CAROL: 202, OSCAR: 202, ADMIN: 202},
    ),
    (
        "POST",
        "/v1/vms/actions/reboot",
        {"cluster": "a"},
        {ANON: 401, BOB: 404, CAROL: 202, OSCAR: 202, ADMIN: 202},
    ),
    (
        "POST",
        "/v1/vms/plan",
        {"count": 1, "cluster": "a"},
        {ANON: 401, BOB: 403, CAROL: 200, OSCAR: 200, ADMIN: 200},
    ),
    (
        "POST",
        "/v1/vms/actions/migrate/plan",
        {"vms": ["a-1"]},
        {ANON: 401, BOB: 404, CAROL: 200, OSCAR: 200, ADMIN: 200},
    ),
    (
        "GET",
        "/v1/operations/{op_a}",
        None,
        {ANON: 401, BOB: 404, CAROL: 404, OSCAR: 200, ADMIN: 200},
    ),
    (
        "GET",
        "/v1/operations/{op_a}/wait?timeout=0",
        None,
        {ANON: 401, BOB: 404, CAROL: 404, OSCAR: 200, ADMIN: 200},
    ),
    ("POST", "/v1/operations/{op_a}/cancel", None, {ANON: 401, BOB: 404, CAROL: 404}),
    ("GET", "/v1/nodes", None, {ANON: 401, BOB: 200, CAROL: 200, OSCAR: 200, ADMIN: 200}),
    ("GET", "/v1/nodes/node-1", None, {ANON: 401, BOB: 200, OSCAR: 200, ADMIN: 200}),
    ("POST", "/v1/nodes/node-2/drain", None, {ANON: 401, BOB: 403, OSCAR: 403, ADMIN: 200}),
    ("POST", "/v1/nodes/node-2/undrain", None, {ANON: 401, BOB: 403, OSCAR: 403, ADMIN: 200}),
    ("GET", "/v1/images", None, {ANON: 401, BOB: 200, OSCAR: 200, ADMIN: 200}),
    ("GET", "/v1/images/tiny", None, {ANON: 401, BOB: 200, ADMIN: 200}),
    ("DELETE", "/v1/images/nope", None, {ANON: 401, BOB: 403, OSCAR: 404, ADMIN: 404}),
    ("GET", "/v1/clusters/a", None, {ANON: 401, BOB: 404, CAROL: 200, OSCAR: 200, ADMIN: 200}),
    ("PUT", "/v1/clusters/a/members/bob", None, {ANON: 401, BOB: 403, CAROL: 403}),
    # making a cluster that exists: its owner and those who see all get it, others a 409
    ("PUT", "/v1/clusters/a", None, {ANON: 401, BOB: 409, CAROL: 409, OSCAR: 200, ADMIN: 200}),
    ("GET", "/v1/events/stream?name=nothing", None, {ANON: 401}),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_endpoint_matrix(
    world: dict[str, Any], method: str, path: str, body: Any, expected: dict[str, int]
) -> None:
    for who, status in expected.items():
        response = call(world, who, method, path, body)
        assert response.status_code == status, (who, response.text)
        if status >= 400:
            assert response.json()["error"], who


def test_lists_show_only_what_one_may_see(world: dict[str, Any]) -> None:
    def names(who: str) -> set[str]:
        return {vm["name"] for vm in call(world, who, "GET", "/v1/vms?limit=1000").json()["items"]}

    assert names(BOB) == {"b-1"}
    assert {"a-1", "a-2"} <= names(CAROL) and "b-1" not in names(CAROL)
    assert {"a-1", "a-2", "b-1"} <= names(ADMIN) and {"a-1", "b-1"} <= names(OSCAR)
    bob_ops = call(world, BOB, "GET", "/v1/operations").json()["items"]
    assert bob_ops and {op["principal"] for op in bob_ops} == {BOB}
    bob_events = call(world, BOB, "GET", "/v1/events?limit=1000").json()["items"]
    assert bob_events and {e["principal"] for e in bob_events} == {BOB}


def test_a_user_cannot_start_vms_in_someone_elses_cluster(world: dict[str, Any]) -> None:
    response = call(world, BOB, "POST", "/v1/vms", {"count": 1, "cluster": "a"})
    assert response.status_code == 403 and "bob may not vm.start" in response.json()["error"]
    response = call(world, CAROL, "POST", "/v1/vms", {"count": 1, "cluster": "a"})
    assert response.status_code == 202  # a member may
    world["cluster"].run(world["cluster"].client().get_operation(response.json()["id"]))


def test_membership_is_granted_and_taken_back(world: dict[str, Any]) -> None:
    cluster: Cluster = world["cluster"]
    alice = cluster.client(world["tokens"]["alice"])
    assert call(world, BOB, "GET", "/v1/vms/a-2").status_code == 404
    info = alice.request("PUT", "/clusters/a/members/bob")
    assert sorted(info["members"]) == ["bob", "carol"]
    assert call(world, BOB, "GET", "/v1/vms/a-2").status_code == 200
    result = cluster.ush(
        "--token", world["tokens"]["alice"], "cluster", "remove-member", "a", "bob", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    assert call(world, BOB, "GET", "/v1/vms/a-2").status_code == 404


def test_no_role_no_access(world: dict[str, Any]) -> None:
    nobody = world["cluster"].issue_token("nobody", [])
    response = world["cluster"].http("GET", "/v1/vms", token=nobody)
    assert response.status_code == 403


def test_cluster_create_fires_once_per_cluster(world: dict[str, Any]) -> None:
    """Made by a PUT (asked twice) or by a first start: one ``cluster_create`` each, naming the
    owner; a cluster that existed already gives none."""
    cluster: Cluster = world["cluster"]
    bob = cluster.client(world["tokens"][BOB])
    for _ in range(2):
        assert bob.request("PUT", "/clusters/made-by-put")["owner"] == BOB
    cluster.run(bob.create_vms(count=1, cluster="made-by-start"))
    cluster.run(bob.create_vms(count=1, cluster="made-by-start"))
    cluster.run(bob.create_vms(count=1, cluster="made-by-put"))
    events = call(world, ADMIN, "GET", "/v1/events?name=cluster_create&limit=1000").json()["items"]
    made = sorted((e["data"]["cluster"], e["data"]["owner"], e["principal"]) for e in events)
    assert made == [
        ("a", "alice", "alice"),
        ("b", BOB, BOB),
        ("made-by-put", BOB, BOB),
        ("made-by-start", BOB, BOB),
    ]
