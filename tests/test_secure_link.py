"""The secure LNM link: join tokens, per-node credentials, revocation, TLS, no secrets logged."""

from __future__ import annotations

import contextlib
import json
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from harness import Cluster, _env, wait_for
from usher.ctrl.config import Settings
from usher.ctrl.tls import server_files

MakeCluster = Callable[..., Cluster]


def usher_node(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``usher node …`` on the controller's host, as an admin runs it."""
    where = ["--config", str(cluster.config), "--listen", cluster.listen]
    return subprocess.run(
        [sys.executable, "-m", "usher.cli.usher_cmd", "node", *args, *where],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_token(cluster: Cluster, name: str, token: str) -> Path:
    path = cluster.root / f"{name}.join"
    path.write_text(token + "\n")
    return path


def credential(cluster: Cluster, node: str) -> Path:
    return cluster.root / "nodes" / node / "node.credential"


def saved_credential(cluster: Cluster, node: str) -> Path:
    """``node``'s credential file, once its LNM has saved it (a moment after the controller
    counts the node connected: the credential comes in the welcome)."""
    path = credential(cluster, node)
    wait_for(f"{node}'s credential file", path.exists)
    return path


def refused(cluster: Cluster, node: str) -> str:
    """Wait for ``node``'s LNM to give up, refused; the reason the controller recorded."""
    proc = cluster.lnms[node]
    assert proc.wait(30) != 0
    assert "refused this node" in cluster.log(node)
    events = cluster.http("GET", "/v1/events", params={"name": "node_refused", "node": node})
    return str(events.json()["items"][-1]["data"]["reason"])


def assert_no_secrets(cluster: Cluster, secrets: list[str]) -> None:
    """No token or credential in any log of the cluster or in any event."""
    logs = [p.read_text(errors="replace") for p in cluster.root.glob("*.log")]
    events = json.dumps(cluster.http("GET", "/v1/events", params={"limit": 1000}).json())
    for secret in [cluster.token, *secrets]:
        assert secret
        for text in [*logs, events]:
            assert secret not in text


def test_join_token_then_own_credential(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(nodes=0)
    token = cluster.join_token(uses=1)
    token_file = write_token(cluster, "once", token)
    cluster.start_lnm("n1", join_token_file=token_file)
    cred = saved_credential(cluster, "n1")
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    secret = cred.read_text().strip()
    assert secret and secret != token

    # restarted, it joins with its credential: the single-use join token is spent
    cluster.kill_lnm("n1")
    cluster.wait_node("n1", connected=False)
    cluster.start_lnm("n1", join_token_file=token_file)
    assert cred.read_text().strip() == secret

    cluster.start_lnm("n2", join_token_file=token_file, wait=False)
    assert refused(cluster, "n2") == "the join token has been used up"
    assert not credential(cluster, "n2").exists()
    assert "node n2" in cluster.log("ctrl") and "used up" in cluster.log("ctrl")

    # a node credential is refused by the user API and for another node's name
    assert cluster.http("GET", "/v1/vms", token=secret).status_code == 403
    (cluster.root / "nodes" / "n3").mkdir(parents=True)
    credential(cluster, "n3").write_text(secret + "\n")
    cluster.start_lnm("n3", wait=False)
    assert refused(cluster, "n3") == "the credential is not node n3's"
    assert_no_secrets(cluster, [token, secret])


def test_expired_or_missing_join_token_is_refused(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(nodes=0)
    token = cluster.join_token(ttl=1)
    time.sleep(1.5)
    cluster.start_lnm("late", join_token_file=write_token(cluster, "late", token), wait=False)
    assert refused(cluster, "late") == "the join token has expired"

    # refused before its hello is read: the hello may meet a closed connection, the
    # refusal still arrives (as a message, and as the close's reason)
    with connect(cluster.url.replace("http", "ws", 1) + "/v1/lnm") as ws:
        with contextlib.suppress(ConnectionClosed):
            ws.send(json.dumps({"type": "hello", "node": "anon"}))
        assert json.loads(ws.recv(10)) == {
            "type": "refused",
            "reason": "no credential and no join token",
        }
    assert_no_secrets(cluster, [token])


def test_revoked_credential_closes_the_link(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(nodes=1)
    secret = saved_credential(cluster, "node-1").read_text().strip()
    done = usher_node(cluster, "revoke", "node-1")
    assert done.returncode == 0, done.stderr
    assert "revoked 1 credential(s) of node node-1" in done.stdout
    cluster.wait_node("node-1", connected=False)
    assert refused(cluster, "node-1") == "the credential of node node-1 was revoked"
    assert usher_node(cluster, "revoke", "ghost").returncode != 0
    assert_no_secrets(cluster, [secret, cluster.join_token_file.read_text().strip()])


def test_tls_link_and_api(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1, settings={"tls": True})
    assert cluster.url.startswith("https://")
    assert cluster.node("node-1").connected  # joined over wss, verifying the CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(cluster.url + "/v1/whoami")  # the system CAs do not know ours
    assert cluster.http("GET", "/v1/whoami").json()["name"] == "admin"
    assert cluster.ush("nodes").returncode == 0  # SSL_CERT_FILE names the CA

    made = usher_node(cluster, "token", "--uses", "1")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    token_file = write_token(cluster, "tls", token)
    cluster.start_lnm("n-good", join_token_file=token_file)

    foreign = server_files(Settings(state_dir=tmp_path / "other", tls=True))
    other_ca = foreign.cert.parent / "ca.pem"
    cluster.start_lnm("n-bad", join_token_file=token_file, ca_file=other_ca, wait=False)
    wait_for("a failed verification", lambda: "CERTIFICATE_VERIFY_FAILED" in cluster.log("n-bad"))
    assert all(n.name != "n-bad" for n in cluster.client().nodes())
    assert_no_secrets(cluster, [token, saved_credential(cluster, "n-good").read_text().strip()])
