"""Username and password login (plugin ``passwords``, argon2) and ``ush login``/``logout``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import argon2
import httpx
import pytest

from harness import Cluster, _env
from usher.client import UsherError

ALICE_PW = "down-the-rabbit-hole"


def login(cluster: Cluster, username: str, password: str) -> httpx.Response:
    """``POST /v1/login`` without any bearer token."""
    body = {"username": username, "password": password}
    return cluster.http("POST", "/v1/login", token=None, json=body)


@pytest.fixture
def site(make_cluster) -> Cluster:
    users = {
        "alice": {
            "hash": argon2.PasswordHasher().hash(ALICE_PW),
            "roles": ["user"],
            "groups": ["physics"],
        }
    }
    return make_cluster(
        nodes=0,
        plugins=["passwords"],
        plugin_tables={"passwords": {"users": users}, "tokens": {"session_ttl": 600}},
    )


def test_password_login_issues_a_working_session_token(site: Cluster) -> None:
    answer = login(site, "alice", ALICE_PW)
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert session["token"].startswith("ush_") and session["description"] == "session"
    assert 590 < session["expires_at"] - time.time() <= 600  # session_ttl of the config
    me = site.client(session["token"]).whoami()
    assert (me.name, me.roles, me.groups) == ("alice", ["user"], ["physics"])
    mine = site.client(session["token"]).request("GET", "/tokens")
    assert [(t["id"], t["state"]) for t in mine] == [(session["id"], "active")]
    assert "token" not in mine[0] and "digest" not in mine[0]


def test_wrong_password_is_refused_with_a_clear_message(site: Cluster) -> None:
    for username, password in [("alice", "wrong"), ("nobody", ALICE_PW), ("Alice", ALICE_PW)]:
        answer = login(site, username, password)
        assert answer.status_code == 401
        assert answer.json()["error"] == (
            "login failed: unknown user or wrong password (tried passwords)"
        )
    missing = site.http("POST", "/v1/login", token=None, json={"username": "alice"})
    assert missing.status_code == 422 and "password" in missing.json()["error"]
    assert site.http("GET", "/v1/tokens", token=None).status_code == 401


def test_admins_manage_users_and_users_their_own_password(site: Cluster) -> None:
    admin = site.client()
    dave = admin.request("PUT", "/users/dave", body={"password": "pw-1", "roles": ["operator"]})
    assert dave == {"name": "dave", "roles": ["operator"], "groups": [], "source": "api"}
    session = login(site, "dave", "pw-1").json()
    assert session["roles"] == ["operator"]
    as_dave = site.client(session["token"])
    with pytest.raises(UsherError) as err:
        as_dave.request("PUT", "/users/dave", body={"roles": ["admin"]})
    assert err.value.status == 403 and "only its own password" in err.value.message
    with pytest.raises(UsherError) as err:
        as_dave.request("PUT", "/users/alice", body={"password": "mine-now"})
    assert err.value.status == 403
    with pytest.raises(UsherError) as err:
        as_dave.request("GET", "/users")
    assert err.value.status == 403
    as_dave.request("PUT", "/users/dave", body={"password": "pw-2"})
    assert login(site, "dave", "pw-1").status_code == 401
    assert login(site, "dave", "pw-2").json()["roles"] == ["operator"]
    users = admin.request("GET", "/users")
    assert [(u["name"], u["source"]) for u in users] == [("alice", "config"), ("dave", "api")]
    assert all("hash" not in u for u in users)
    with pytest.raises(UsherError) as err:
        admin.request("PUT", "/users/alice", body={"password": "x"})
    assert err.value.status == 409 and "controller config" in err.value.message
    with pytest.raises(UsherError) as err:
        admin.request("PUT", "/users/erin", body={"roles": ["user"]})
    assert err.value.status == 422 and "needs a password" in err.value.message
    site.http("DELETE", "/v1/users/dave").raise_for_status()
    assert login(site, "dave", "pw-2").status_code == 401


def ush_as_user(cluster: Cluster, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``ush`` like ``cluster.ush`` (same USHER_HOME), but with no token in the environment,
    so it uses the one ``ush login`` saved, and with ``stdin``."""
    env = _env()
    env.pop("USHER_TOKEN", None)
    env.update(USHER_URL=cluster.url, USHER_HOME=str(cluster.root / "home"))
    return subprocess.run(
        [sys.executable, "-m", "usher.cli.ush", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ush_login_keeps_a_session_token_and_logout_revokes_it(site: Cluster) -> None:
    config = site.root / "home" / "config.toml"
    refused = ush_as_user(site, "login", "-u", "alice", "--password-stdin", stdin="nope\n")
    assert refused.returncode == 1 and "wrong password" in refused.stderr
    assert not config.exists()

    done = ush_as_user(site, "login", "--password-stdin", stdin=f"alice\n{ALICE_PW}\n")
    assert done.returncode == 0, done.stderr
    assert "logged in as alice" in done.stderr
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    saved = config.read_text()
    assert f'url = "{site.url}"' in saved
    token = saved.split('token = "')[1].split('"')[0]
    assert site.client(token).whoami().name == "alice"
    whoami = ush_as_user(site, "whoami", "-o", "json")
    assert json.loads(whoami.stdout)["name"] == "alice", whoami.stderr
    # the admin's token in the environment wins over the saved one, as always
    assert "admin" in site.ush("whoami").stdout

    out = ush_as_user(site, "logout")
    assert out.returncode == 0, out.stderr
    assert "logged out" in out.stderr
    assert config.read_text() == f'remote = "default"\n\n[remotes."default"]\nurl = "{site.url}"\n'
    with pytest.raises(UsherError) as err:
        site.client(token).whoami()
    assert err.value.status == 401
    after = ush_as_user(site, "whoami")
    assert after.returncode == 1 and "missing token" in after.stderr


def test_ush_hash_password_makes_a_hash_the_plugin_accepts() -> None:
    made = subprocess.run(
        [sys.executable, "-m", "usher.cli.ush", "hash-password"],
        env=_env(),
        input="s3cret\ns3cret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    digest = made.stdout.strip().splitlines()[-1]
    assert digest.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(digest, "s3cret")
    mismatch = subprocess.run(
        [sys.executable, "-m", "usher.cli.ush", "hash-password"],
        env=_env(),
        input="one\ntwo\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "$argon2" not in mismatch.stdout
