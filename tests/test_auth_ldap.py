"""LDAP login against a real OpenLDAP slapd that these tests start and seed themselves
(fixture ``slapd`` of tests/ldap_server.py)."""

from __future__ import annotations

import argon2
import pytest

from harness import free_port
from ldap_server import SUFFIX
from test_auth_passwords import login


def ldap_table(url: str) -> dict[str, object]:
    return {
        "url": url,
        "user_dn_template": f"uid={{username}},ou=people,{SUFFIX}",
        "group_base": f"ou=groups,{SUFFIX}",
        "group_filter": "(&(objectClass=groupOfNames)(member={user_dn}))",
        "role_map": {"usher-admins": "admin", "ops": ["operator", "user"]},
        "default_roles": ["user"],
    }


def test_ldap_login_maps_groups_to_roles(make_cluster, slapd: str) -> None:
    cluster = make_cluster(nodes=0, plugins=["ldap"], plugin_tables={"ldap": ldap_table(slapd)})
    expected = {
        "ada": (["admin", "operator", "user"], ["ops", "usher-admins"]),
        "bob": (["operator", "user"], ["ops", "physics"]),
        "cyd": (["user"], ["physics"]),
    }
    for uid, (roles, groups) in expected.items():
        answer = login(cluster, uid.upper() if uid == "cyd" else uid, f"{uid}-ldap-pw")
        assert answer.status_code == 200, answer.text
        session = answer.json()
        assert (session["principal"], session["roles"], session["groups"]) == (uid, roles, groups)
        me = cluster.client(session["token"]).whoami()
        assert (me.name, me.roles, me.groups) == (uid, roles, groups)
    # the admin role from the directory is a real admin: it sees every token
    ada = login(cluster, "ada", "ada-ldap-pw").json()["token"]
    owners = {t["principal"] for t in cluster.client(ada).request("GET", "/tokens")}
    assert {"admin", "ada", "bob", "cyd"} <= owners


def test_wrong_ldap_password_is_refused(make_cluster, slapd: str) -> None:
    cluster = make_cluster(nodes=0, plugins=["ldap"], plugin_tables={"ldap": ldap_table(slapd)})
    for username, password in [("bob", "ada-ldap-pw"), ("nobody", "x"), ("bob*", "bob-ldap-pw")]:
        answer = login(cluster, username, password)
        assert answer.status_code == 401, answer.text
        assert "unknown user or wrong password (tried ldap)" in answer.json()["error"]
        assert "token" not in answer.json()
    assert login(cluster, "bob", "").status_code == 422  # never an anonymous bind
    assert login(cluster, "bob", "bob-ldap-pw").status_code == 200


def test_unreachable_directory_is_an_error_not_a_wrong_password(make_cluster) -> None:
    table = ldap_table(f"ldap://127.0.0.1:{free_port()}") | {"timeout": 2}
    cluster = make_cluster(nodes=0, plugins=["ldap"], plugin_tables={"ldap": table})
    answer = login(cluster, "bob", "bob-ldap-pw")
    assert answer.status_code == 503
    assert "ldap: LDAP server ldap://127.0.0.1:" in answer.json()["error"]


@pytest.mark.parametrize("order", [["passwords", "ldap"], ["ldap", "passwords"]])
def test_several_plugins_are_tried_in_order(make_cluster, slapd: str, order: list[str]) -> None:
    """bob has the same password locally (role user) and in LDAP (operator): the first
    enabled plugin decides. Local-only and LDAP-only users log in either way, and a token of
    a third authentication plugin still works next to the session tokens."""
    local = {
        "bob": {"hash": argon2.PasswordHasher().hash("bob-ldap-pw"), "roles": ["user"]},
        "eve": {"hash": argon2.PasswordHasher().hash("eve-local-pw"), "roles": ["user"]},
    }
    cluster = make_cluster(
        nodes=0,
        plugins=[*order, "site_plugins:Alice"],
        plugin_tables={"ldap": ldap_table(slapd), "passwords": {"users": local}},
    )
    bob = login(cluster, "bob", "bob-ldap-pw").json()
    first_is_ldap = order[0] == "ldap"
    assert bob["roles"] == (["operator", "user"] if first_is_ldap else ["user"])
    assert bob["groups"] == (["ops", "physics"] if first_is_ldap else [])
    assert login(cluster, "eve", "eve-local-pw").json()["principal"] == "eve"
    assert login(cluster, "cyd", "cyd-ldap-pw").json()["roles"] == ["user"]
    refused = login(cluster, "eve", "wrong")
    assert refused.status_code == 401
    assert f"(tried {', '.join(order)})" in refused.json()["error"]
    assert cluster.client(bob["token"]).whoami().name == "bob"
    assert cluster.client("ush_alice-test-token").whoami().name == "alice"
