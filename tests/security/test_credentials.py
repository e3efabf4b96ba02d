"""Credentials (issue 12, items 8 and 9): the last admin credential cannot be revoked and
root has a way back; node credentials work on the node link only; proxy headers are not
believed from anyone; Usher's own principals cannot log in; logins and refused node
connections are rate-limited and do not grow the logs without bound."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import argon2
import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Cluster, _env, wait_for

PASSWORD = "correct horse battery staple"


def revoke_own(cluster: Cluster, token: str) -> httpx.Response:
    return cluster.http("POST", "/v1/logout", token=token)


def new_admin(cluster: Cluster, by: str) -> tuple[str, str]:
    """A new admin token: its secret and its id."""
    answer = cluster.http("POST", "/v1/tokens", token=by, json={"roles": ["admin"]})
    assert answer.status_code == 201, answer.text
    return answer.json()["token"], answer.json()["id"]


def test_the_last_admin_credential_cannot_be_revoked_and_root_has_a_way_back(
    make_cluster, db_kind: str
) -> None:
    cluster: Cluster = make_cluster(nodes=0)
    first = cluster.token
    refused = revoke_own(cluster, first)
    assert refused.status_code == 409, refused.text
    assert "last admin credential" in refused.json()["error"]
    assert "usher admin-token" in refused.json()["error"]
    assert cluster.http("GET", "/v1/whoami", token=first).status_code == 200
    # root on the controller's host makes another one, from the state dir alone
    command = [sys.executable, "-m", "usher.cli.usher_cmd", "admin-token"]
    made = subprocess.run(
        [*command, "--config", str(cluster.config)],
        env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    second = (cluster.state / "admin.token").read_text().strip()
    assert second != first and second not in made.stdout + made.stderr
    assert (cluster.state / "admin.token").stat().st_mode & 0o777 == 0o600
    assert cluster.http("GET", "/v1/whoami", token=second).json()["roles"] == ["admin"]
    assert revoke_own(cluster, first).status_code == 200  # another admin is left
    assert revoke_own(cluster, second).status_code == 409


def test_two_revocations_at_once_leave_one_admin(make_cluster, db_kind: str) -> None:
    """Check-then-act: the last two admin tokens revoked at once, each by the other, five
    rounds: exactly one revocation goes through each time."""
    cluster: Cluster = make_cluster(nodes=0)
    keep = cluster.token
    tokens = cluster.http("GET", "/v1/tokens").json()
    ids = {keep: next(t["id"] for t in tokens if t["description"] == "created at first start")}
    for _ in range(5):
        other, ids[other] = new_admin(cluster, keep)
        # every admin token but these two is revoked already
        answers: dict[str, int] = {}

        def revoke(by: str, victim: str, answers: dict[str, int] = answers) -> None:
            answers[victim] = cluster.http(
                "DELETE", f"/v1/tokens/{ids[victim]}", token=by
            ).status_code

        threads = [
            threading.Thread(target=revoke, args=(keep, other)),
            threading.Thread(target=revoke, args=(other, keep)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # one goes through; the other is refused (409), or came too late to authenticate
        # (401: its own token was revoked first)
        assert sorted(answers.values()) in ([200, 409], [200, 401]), answers
        keep = next(t for t, status in answers.items() if status != 200)
        assert cluster.http("GET", "/v1/whoami", token=keep).status_code == 200


def test_a_node_credential_works_on_the_node_link_only(make_cluster, db_kind: str) -> None:
    cluster: Cluster = make_cluster(nodes=1)
    saved = cluster.root / "nodes" / "node-1" / "node.credential"
    wait_for("the node's credential saved", saved.exists)
    secret = saved.read_text().strip()
    for method, path in [
        ("GET", "/v1/whoami"),
        ("POST", "/v1/logout"),
        ("GET", "/v1/tokens"),
        ("GET", "/v1/vms"),
        ("POST", "/v1/tokens"),
    ]:
        answer = cluster.http(method, path, token=secret, json={} if method == "POST" else None)
        assert answer.status_code == 403, (path, answer.text)
        assert "node link only" in answer.json()["error"]
    join = cluster.join_token_file.read_text().strip()
    assert cluster.http("GET", "/v1/whoami", token=join).status_code == 403
    # no token may be made with the node role or for a node's principal
    for body in ({"roles": ["node"]}, {"principal": "node:node-1"}, {"principal": "node-join"}):
        assert cluster.http("POST", "/v1/tokens", json=body).status_code == 422, body
    assert cluster.node("node-1").connected  # and the node's link is as it was


@pytest.fixture
def site(make_cluster) -> Cluster:
    users = {"alice": {"hash": argon2.PasswordHasher().hash(PASSWORD), "roles": ["user"]}}
    return make_cluster(
        nodes=0,
        plugins=["passwords"],
        plugin_tables={"passwords": {"users": users}},
        settings={"login_failures": 5},
    )


def login(cluster: Cluster, username: str, password: str, **headers: str) -> httpx.Response:
    body = {"username": username, "password": password}
    return cluster.http("POST", "/v1/login", token=None, json=body, headers=headers)


def test_usher_principals_cannot_log_in_or_be_made(site: Cluster) -> None:
    for name in ("admin", "system", "Admin", "SYSTEM", "node-join", "node:node-1"):
        answer = site.http("PUT", f"/v1/users/{name}", json={"password": PASSWORD})
        assert answer.status_code == 422, (name, answer.text)
    for name in ("admin", "system"):
        assert login(site, name, PASSWORD).status_code == 401


def test_failed_logins_are_limited_per_user_and_address(site: Cluster) -> None:
    for _ in range(5):
        assert login(site, "alice", "wrong").status_code == 401
    throttled = login(site, "alice", PASSWORD)  # even the right password, for a while
    assert throttled.status_code == 429, throttled.text
    assert "too many failed logins" in throttled.json()["error"]
    # the address is limited too: another user from here is refused as well
    assert login(site, "bob", "whatever").status_code == 429
    for _ in range(100):
        assert login(site, "alice", "wrong").status_code == 429
    failures = site.http("GET", "/v1/events?name=login_failure&limit=1000").json()["items"]
    assert len(failures) == 5, len(failures)  # the log does not grow with the attack
    # a forwarded-for header from a client that is no configured proxy is not believed
    assert {e["data"]["address"] for e in failures} == {"127.0.0.1"}


def test_a_forwarded_for_header_is_not_believed(site: Cluster) -> None:
    answer = login(site, "carol", "x", **{"X-Forwarded-For": "203.0.113.9"})
    assert answer.status_code == 401
    events = site.http("GET", "/v1/events?name=login_failure").json()["items"]
    assert [e["data"]["address"] for e in events] == ["127.0.0.1"]


def test_refused_node_connections_do_not_grow_the_logs(make_cluster, db_kind: str) -> None:
    cluster: Cluster = make_cluster(nodes=0)
    url = cluster.url.replace("http", "ws", 1) + "/v1/lnm"
    for n in range(60):
        with connect(
            url, additional_headers={"Authorization": f"Bearer ush_bogus{n:04d}xxxxxxxxxxxxxxxx"}
        ) as ws:
            try:
                ws.send(json.dumps({"type": "hello", "node": f"n{n}"}))
                ws.recv(5)
            except ConnectionClosed:
                pass
    events = cluster.http("GET", "/v1/events?name=node_refused&limit=1000").json()["items"]
    assert 1 <= len(events) <= 10, len(events)
    lines = [line for line in cluster.log("ctrl").splitlines() if "refused an LNM" in line]
    assert 1 <= len(lines) <= 10, len(lines)
    assert "ush_bogus" not in cluster.log("ctrl")
