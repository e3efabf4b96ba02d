"""API tokens (plugin ``tokens``): created, listed and revoked by admins and by users."""

from __future__ import annotations

import json
import time

import pytest

from harness import Cluster
from usher.client import Client, UsherError


@pytest.fixture
def site(make_cluster) -> Cluster:
    return make_cluster(nodes=0, plugin_tables={"tokens": {"roles": ["auditor"]}})


def refused(
    client: Client, method: str, path: str, body: object = None, **params: str
) -> UsherError:
    with pytest.raises(UsherError) as err:
        client.request(method, path, body=body, params=params)
    return err.value


def test_admins_manage_tokens_of_anyone(site: Cluster) -> None:
    admin = site.client()
    made = admin.request(
        "POST",
        "/tokens",
        body={"principal": "bob", "roles": ["operator"], "groups": ["ops"], "description": "ci"},
    )
    assert made["principal"] == "bob" and made["state"] == "active"
    assert made["expires_at"] is None
    bob = site.client(made["token"])
    me = bob.whoami()
    assert (me.name, me.roles, me.groups) == ("bob", ["operator"], ["ops"])

    everything = admin.request("GET", "/tokens")
    assert {t["principal"] for t in everything} >= {"admin", "bob"}
    assert all("token" not in t and "digest" not in t for t in everything)
    only_bob = admin.request("GET", "/tokens", params={"owner": "bob"})
    assert [(t["id"], t["description"], t["groups"]) for t in only_bob] == [
        (made["id"], "ci", ["ops"])
    ]

    least = admin.request("POST", "/tokens", body={"principal": "carol"})
    assert least["roles"] == ["user"]  # not the admin's own roles
    err = refused(admin, "POST", "/tokens", body={"principal": "bob", "roles": ["amdin"]})
    assert err.status == 422 and "unknown role(s) amdin" in err.message
    assert "admin, operator, user, auditor" in err.message  # the site's own last
    audit = admin.request("POST", "/tokens", body={"principal": "ann", "roles": ["auditor"]})
    assert audit["roles"] == ["auditor"]

    gone = admin.request("DELETE", f"/tokens/{made['id']}")
    assert gone["revoked"] and gone["state"] == "revoked"
    err = refused(bob, "GET", "/whoami")
    assert err.status == 401 and "revoked" in err.message
    assert admin.request("GET", "/tokens", params={"owner": "bob"})[0]["state"] == "revoked"
    assert refused(admin, "DELETE", "/tokens/tok-nope").status == 404


def test_users_manage_only_their_own_tokens(site: Cluster) -> None:
    bob = site.client(site.issue_token("bob", ["user"]))
    own = bob.request("POST", "/tokens", body={"description": "laptop"})
    assert (own["principal"], own["roles"]) == ("bob", ["user"])  # its own, by default
    assert site.client(own["token"]).whoami().name == "bob"

    err = refused(bob, "POST", "/tokens", {"principal": "carol"})
    assert err.status == 403 and "only for itself" in err.message
    err = refused(bob, "POST", "/tokens", {"roles": ["user", "admin"]})
    assert err.status == 403 and "roles it lacks: ['admin']" in err.message
    err = refused(bob, "POST", "/tokens", {"groups": ["wheel"]})
    assert err.status == 403 and "groups it lacks" in err.message

    listed = bob.request("GET", "/tokens")
    assert {t["principal"] for t in listed} == {"bob"} and len(listed) == 2
    assert refused(bob, "GET", "/tokens", owner="admin").status == 403
    admin_token = site.client().request("GET", "/tokens", params={"owner": "admin"})[0]
    assert refused(bob, "DELETE", f"/tokens/{admin_token['id']}").status == 404
    assert site.client().whoami().name == "admin"  # untouched

    bob.request("DELETE", f"/tokens/{own['id']}")
    assert refused(site.client(own["token"]), "GET", "/whoami").status == 401
    assert bob.whoami().name == "bob"  # only that one token is gone


def test_expired_tokens_are_refused(site: Cluster) -> None:
    admin = site.client()
    made = admin.request("POST", "/tokens", body={"principal": "eve", "ttl": 1.5})
    assert made["expires_at"] == pytest.approx(made["created_at"] + 1.5)
    eve = site.client(made["token"])
    assert eve.whoami().name == "eve"
    time.sleep(2)
    err = refused(eve, "GET", "/whoami")
    assert err.status == 401 and "expired" in err.message
    assert admin.request("GET", "/tokens", params={"owner": "eve"})[0]["state"] == "expired"
    assert refused(admin, "POST", "/tokens", {"ttl": 0}).status == 422


def test_ush_token_commands(site: Cluster) -> None:
    made = site.ush(
        "token", "create", "--user", "carol", "--role", "user", "--ttl", "3600",
        "--description", "from ush",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("ush_") and "shown this once" in made.stderr
    assert site.client(secret).whoami().roles == ["user"]

    listed = json.loads(site.ush("token", "list", "--user", "carol", "-o", "json").stdout)
    assert [(t["description"], t["state"]) for t in listed] == [("from ush", "active")]
    table = site.ush("token", "list").stdout
    assert "carol" in table and "from ush" in table and secret not in table

    revoked = site.ush("token", "revoke", listed[0]["id"], "-o", "json")
    assert json.loads(revoked.stdout)[0]["state"] == "revoked"
    assert refused(site.client(secret), "GET", "/whoami").status == 401
    missing = site.ush("token", "revoke", "tok-nope")
    assert missing.returncode == 1 and "no token 'tok-nope'" in missing.stderr
