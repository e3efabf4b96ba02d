"""``GET /v1/search/vms``: search and sort by the server, for the dashboard's table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import Cluster


def search(cluster: Cluster, token: str = "admin", **params: Any) -> dict[str, Any]:
    r = cluster.http("GET", "/v1/search/vms", token=token, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def names(page: dict[str, Any]) -> list[str]:
    return [vm["name"] for vm in page["items"]]


def test_search_sorts_pages_and_sees_what_the_listing_sees(
    make_cluster: Callable[..., Cluster],
) -> None:
    site = make_cluster(nodes=1, plugins=["authz"])
    admin = site.client()
    site.run(admin.create_vms(names=["alpha-2", "alpha-1"], cluster="a", memory_mb=64))
    site.run(admin.create_vms(names=["beta-1"], memory_mb=64))
    bob = site.issue_token("bob", ["user"])
    site.run(site.client(bob).create_vms(names=["bobs-alpha"], cluster="z", memory_mb=64))
    site.run(admin.action("stop", ["alpha-1"]))

    assert names(search(site)) == ["alpha-2", "alpha-1", "beta-1", "bobs-alpha"]
    assert names(search(site, q="ALPHA")) == ["alpha-2", "alpha-1", "bobs-alpha"]
    beta = admin.get_vm("beta-1")
    assert names(search(site, q=beta.id[:9])) == ["beta-1"]
    assert names(search(site, q="%")) == []  # no wildcards
    assert names(search(site, sort="name")) == ["alpha-1", "alpha-2", "beta-1", "bobs-alpha"]
    # VMs without a cluster come last, either way
    assert names(search(site, sort="cluster"))[-1] == "beta-1"
    assert names(search(site, sort="cluster", desc=True)) == [
        "bobs-alpha",
        "alpha-2",
        "alpha-1",
        "beta-1",
    ]
    assert names(search(site, q="alpha", state="stopped")) == ["alpha-1"]

    first = search(site, sort="name", limit=3)
    assert first["total"] == 4 and first["next"] == "3"
    rest = search(site, sort="name", limit=3, cursor=first["next"])
    assert names(first) + names(rest) == names(search(site, sort="name"))
    assert rest["next"] is None

    assert names(search(site, token=bob)) == ["bobs-alpha"]  # what GET /v1/vms shows bob
    assert search(site, token=bob, q="alpha")["total"] == 1
    for params, status in (({"cursor": "x"}, 400), ({"sort": "memory"}, 422)):
        r = site.http("GET", "/v1/search/vms", params=params)
        assert r.status_code == status and r.json()["error"], r.text
