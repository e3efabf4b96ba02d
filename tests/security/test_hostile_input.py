"""Hostile input from an ordinary user: every value bounded at the API, nothing stored that
cannot be read back, no request that ends a process or makes state unreadable.

Each case here once broke Usher (issue 12, items 1, 2, 3, 5, 7): a 400-digit integer in
``kwargs`` made a VM that could not be shown or destroyed and a controller that would not
start; a console offset of that size ended the LNM; control characters slipped into names.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from harness import Cluster, wait_for

HUGE = "1" + "0" * 400
BIG = int(HUGE)


def raw(value: Any) -> str:
    """JSON as Python writes it: integers of any size, NaN and Infinity included."""
    return json.dumps(value)


DEEP: Any = "x"
for _ in range(50):
    DEEP = {"a": DEEP}

REFUSED_BODIES = [
    # (what, raw JSON body of POST /v1/vms, status, words in the error)
    ("integer beyond 64 bits", raw({"names": ["p"], "kwargs": {"tag": BIG}}), 422, "64 bits"),
    ("negative beyond 64 bits", raw({"names": ["p"], "kwargs": {"tag": -BIG}}), 422, "64 bits"),
    ("NaN", '{"names":["p"],"kwargs":{"x":NaN}}', 422, "finite"),
    ("Infinity", '{"names":["p"],"kwargs":{"x":Infinity}}', 422, "finite"),
    ("huge float", '{"names":["p"],"kwargs":{"x":1e400}}', 422, "finite"),
    ("timeout beyond 64 bits", raw({"names": ["p"], "kwargs": {"timeout": BIG}}), 422, "64 bits"),
    ("timeout too long", '{"names":["p"],"kwargs":{"timeout":1e300}}', 422, "timeout"),
    ("timeout not a number", '{"names":["p"],"kwargs":{"timeout":"soon"}}', 422, "timeout"),
    ("hard not a boolean", '{"names":["p"],"kwargs":{"hard":"yes"}}', 422, "hard"),
    ("too deep", json.dumps({"names": ["p"], "kwargs": DEEP}), 422, "deeper"),
    ("name with a newline", '{"names":["acl-1\\n"]}', 422, "invalid VM name"),
    ("name with a NUL", '{"names":["a\\u0000b"]}', 422, "invalid VM name"),
    ("name like an id", '{"names":["vm-0123456789ab"]}', 422, "looks like an id"),
    ("cluster with a newline", '{"count":1,"cluster":"c\\n"}', 422, "cluster"),
    ("image with a slash", '{"count":1,"image":"../etc"}', 422, "image"),
    ("control character in a string", '{"names":["p"],"kwargs":{"x":"a\\u001bb"}}', 422, "control"),
    ("control character in a key", '{"names":["p"],"kwargs":{"a\\u0007":1}}', 422, "control"),
    (
        "too many keys",
        json.dumps({"names": ["p"], "kwargs": {str(i): i for i in range(1001)}}),
        422,
        "1000",
    ),
    (
        "kwargs over 64 KiB",
        json.dumps({"names": ["p"], "kwargs": {"x": "a" * 70000}}),
        422,
        "longer",
    ),
    ("user network", '{"names":["p"],"kwargs":{"network":"user"}}', 422, "no network"),
    ("a host bridge", '{"names":["p"],"kwargs":{"network":"br0"}}', 422, "no network"),
    ("bridge syntax", '{"names":["p"],"kwargs":{"network":"bridge:br0"}}', 422, "network"),
    ("name prefix with newline", '{"count":1,"kwargs":{"name_prefix":"a\\n"}}', 422, "name_prefix"),
]


@pytest.fixture(scope="module")
def victim(shared_cluster: Cluster) -> Cluster:
    shared_cluster.run(shared_cluster.client().create_vms(names=["steady"]))
    return shared_cluster


@pytest.fixture
def unchanged(victim: Cluster) -> Iterator[Cluster]:
    """Checks after the test that no VM changed and that the logs still read."""
    before = sorted((vm.id, vm.name, vm.state) for vm in victim.vms())
    yield victim
    assert sorted((vm.id, vm.name, vm.state) for vm in victim.vms()) == before
    for path in ("/v1/events?limit=1000", "/v1/operations?limit=1000", "/v1/vms?limit=1000"):
        assert victim.http("GET", path).status_code == 200, path


@pytest.mark.parametrize(
    ("what", "body", "status", "words"), REFUSED_BODIES, ids=[c[0] for c in REFUSED_BODIES]
)
def test_hostile_bodies_are_refused_and_change_nothing(
    unchanged: Cluster, what: str, body: str, status: int, words: str
) -> None:
    user = unchanged.issue_token("mallory", ["user"])
    for path in ("/v1/vms", "/v1/vms/plan"):
        response = unchanged.http(
            "POST", path, token=user, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, (what, path, response.text)
        assert words in response.json()["error"], (what, response.text)


def test_hostile_action_bodies_are_refused(unchanged: Cluster) -> None:
    for body in (
        raw({"vms": ["steady"], "kwargs": {"timeout": BIG}}),
        '{"vms":["steady\\n"]}',
        '{"vms":["steady"],"kwargs":{"hard":1}}',
        '{"vms":["steady"],"target_node":"node-1\\n"}',
        '{"cluster":"x\\u0000"}',
    ):
        response = unchanged.http(
            "POST",
            "/v1/vms/actions/stop",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422, (body, response.text)


def test_a_huge_console_offset_is_refused_and_the_node_lives(unchanged: Cluster) -> None:
    for offset in (HUGE, str(2**63), "-1", "1e5"):
        response = unchanged.http("GET", f"/v1/vms/steady/console?offset={offset}")
        assert response.status_code == 422, (offset, response.text)
    # a large offset within the bounds is an empty chunk, not an error
    response = unchanged.http("GET", f"/v1/vms/steady/console?offset={2**53}")
    assert response.status_code == 200 and response.json()["data"] == ""
    node = unchanged.vms(cluster=None)[0].node
    assert unchanged.lnms[node].poll() is None
    assert unchanged.node(node).connected


def test_bounded_query_parameters(unchanged: Cluster) -> None:
    for path in (
        "/v1/vms?cursor=" + HUGE,
        "/v1/vms?owner=a%0Ab",
        "/v1/vms?cluster=" + "c" * 100,
        "/v1/events?since=1e999",
        "/v1/events?cursor=" + HUGE,
        "/v1/operations?cursor=99999999999999999999999",
        "/v1/vms/x%0A",
    ):
        response = unchanged.http("GET", path)
        assert 400 <= response.status_code < 500, (path, response.text)


def test_a_refused_hostile_request_leaves_the_logs_readable(victim: Cluster) -> None:
    """A request refused after admission (here: nothing fits) is recorded with its body as
    a ``request_refused`` event; the event log reads for everyone afterwards."""
    user = victim.issue_token("mallory", ["user"])
    body = '{"count":1,"vcpus":64,"kwargs":{"tag":12345678901234567890123}}'
    response = victim.http(
        "POST", "/v1/vms", token=user, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422  # beyond 64 bits: refused before anything else
    body = '{"count":1,"vcpus":64,"kwargs":{"tag":9223372036854775807}}'
    response = victim.http(
        "POST", "/v1/vms", token=user, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 409
    assert victim.http("GET", "/v1/events?limit=1000", token=user).status_code == 200
    events = victim.http("GET", "/v1/events?name=request_refused&limit=1000").json()["items"]
    assert any(e["data"]["request"]["kwargs"] == {"tag": 2**63 - 1} for e in events)


def test_the_largest_values_allowed_read_back_identically(victim: Cluster) -> None:
    kwargs = {
        "big": 2**63 - 1,
        "small": -(2**63),
        "float": 1.7976931348623157e308,
        "text": "tab\tand\nnewline and ünïcödé ☃",
        "nested": {"a": [1, [2, [3, {"b": None}]]]},
    }
    client = victim.client()
    op = victim.run(client.create_vms(names=["edge"], kwargs=kwargs))
    assert op.status.value == "succeeded", op.error
    assert client.get_vm("edge").spec.kwargs == kwargs
    assert victim.http("GET", "/v1/vms?limit=1000").status_code == 200
    assert victim.run(client.destroy(["edge"])).status.value == "succeeded"


def test_oversized_kwargs_and_bodies_never_reach_the_node_link(victim: Cluster) -> None:
    """17 MiB of kwargs once dropped a node's link; now the body is refused (413) long
    before, and the largest kwargs allowed go through."""
    big = json.dumps({"names": ["p"], "kwargs": {"x": "a" * (17 << 20)}})
    response = victim.http(
        "POST", "/v1/vms", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413, response.text[:200]
    client = victim.client()
    op = victim.run(
        client.create_vms(names=["wide"], kwargs={f"k{i}": "v" * 60000 for i in range(1)})
    )
    assert op.status.value == "succeeded", op.error
    for node in ("node-1", "node-2", "node-3"):
        assert victim.node(node).connected
    assert victim.run(client.destroy(["wide"])).status.value == "succeeded"


def test_the_controller_restarts_after_all_of_it(victim: Cluster) -> None:
    victim.kill_ctrl()
    victim.start_ctrl()
    wait_for("the VM steady", lambda: victim.client().get_vm("steady"))
