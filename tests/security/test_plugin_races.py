"""Check-then-act in plugins is atomic in the database (issue 12, item 12): concurrent
membership changes are all kept, two users creating one cluster at once get one owner, and
concurrent creates never pass a quota. On SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness import Cluster

ROUNDS = 5


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, db_kind: str):
    from conftest import _start

    cluster = _start(
        tmp_path_factory.mktemp("races"),
        db_kind,
        2,
        {"vcpus": 64, "memory_mb": 65536},
        plugins=["authz", "quotas"],
        plugin_tables={"quotas": {"default": {"vms": 1000}, "users": {"quinn": {"vms": 20}}}},
    )
    yield cluster
    cluster.stop()


def calls(
    cluster: Cluster, requests: list[tuple[str, str, str, dict | None]]
) -> list[httpx.Response]:
    """Send every (token, method, path, body) at once."""

    def send(request: tuple[str, str, str, dict | None]) -> httpx.Response:
        token, method, path, body = request
        return cluster.http(method, path, token=token, json=body)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_concurrent_membership_changes_are_all_kept(site: Cluster) -> None:
    alice = site.issue_token("alice", ["user"])
    site.run(site.client(alice).create_vms(names=["team-1"], cluster="team"))
    for n in range(ROUNDS):
        leaving = [f"old{n}-{i}" for i in range(8)]
        joining = [f"new{n}-{i}" for i in range(8)]
        for user in leaving:
            assert (
                site.http("PUT", f"/v1/clusters/team/members/{user}", token=alice).status_code
                == 200
            )
        answers = calls(
            site,
            [(alice, "DELETE", f"/v1/clusters/team/members/{u}", None) for u in leaving]
            + [(alice, "PUT", f"/v1/clusters/team/members/{u}", None) for u in joining],
        )
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        members = set(site.http("GET", "/v1/clusters/team", token=alice).json()["members"])
        assert set(joining) <= members and not set(leaving) & members, members
        for user in leaving:  # a removed member may no longer see the cluster's VMs
            token = site.issue_token(user, ["user"])
            assert site.http("GET", "/v1/vms/team-1", token=token).status_code == 404
        token = site.issue_token(joining[0], ["user"])
        assert site.http("GET", "/v1/vms/team-1", token=token).status_code == 200


def test_two_users_creating_one_cluster_get_one_owner(site: Cluster) -> None:
    bob, carol = site.issue_token("bob", ["user"]), site.issue_token("carol", ["user"])
    for n in range(ROUNDS):
        name = f"contested-{n}"
        answers = calls(
            site,
            [
                (bob, "POST", "/v1/vms", {"count": 1, "cluster": name}),
                (carol, "POST", "/v1/vms", {"count": 1, "cluster": name}),
            ],
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202, 403], [a.text for a in answers]
        winner = "bob" if answers[0].status_code == 202 else "carol"
        owner = site.http("GET", f"/v1/clusters/{name}").json()["owner"]
        assert owner == winner
        owners = {vm.owner for vm in site.vms(cluster=name)}
        assert owners == {winner}, owners


def test_concurrent_creates_never_pass_a_quota(site: Cluster) -> None:
    quinn = site.issue_token("quinn", ["user"])
    answers = calls(site, [(quinn, "POST", "/v1/vms", {"count": 1}) for _ in range(30)])
    accepted = [a for a in answers if a.status_code == 202]
    refused = [a for a in answers if a.status_code == 403]
    assert len(accepted) == 20 and len(refused) == 10, [a.status_code for a in answers]
    assert all("quota exceeded" in a.json()["error"] for a in refused)
    for answer in accepted:
        site.run(site.client().get_operation(answer.json()["id"]))
    assert len(site.vms(owner="quinn")) == 20
