"""Authorization comes first and a refusal reveals nothing (issue 12, item 10); data at rest
is its owner's alone and no log holds a secret, at any level (item 11)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import argon2

from harness import Cluster

PASSWORD = "a password that must never be logged"


def test_a_refusal_names_nothing_the_caller_may_not_see(make_cluster, db_kind: str) -> None:
    cluster: Cluster = make_cluster(nodes=2, plugins=["authz"])
    alice = cluster.issue_token("alice", ["user"])
    bob = cluster.issue_token("bob", ["user"])
    cluster.run(cluster.client(alice).create_vms(names=["secret-1", "secret-2"], cluster="hush"))
    cluster.run(cluster.client(alice).stop(["secret-2"]))
    for body in (
        {"vms": ["secret-2"]},  # stopped: the state check once answered before authorization
        {"vms": ["secret-1", "secret-2"]},
        {"cluster": "hush"},
    ):
        answer = cluster.http("POST", "/v1/vms/actions/stop", token=bob, json=body)
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert "stopped" not in error and "running" not in error, error
    # an id is as unknown as a name
    vm_id = cluster.client(alice).get_vm("secret-1").id
    assert cluster.http("GET", f"/v1/vms/{vm_id}", token=bob).status_code == 404
    assert cluster.http("GET", "/v1/vms/secret-1", token=bob).status_code == 404
    # nodes: bob sees them, but not which VMs of others run there
    nodes = cluster.http("GET", "/v1/nodes", token=bob).json()
    for node in nodes:
        assert node["usage"]["per_vm"] == {}, node
    admin_view = cluster.client().nodes()
    assert sum(len(n.usage.per_vm) for n in admin_view) >= 0  # (usage arrives with heartbeats)
    for node in cluster.http("GET", "/v1/nodes", token=alice).json():
        assert set(node["usage"]["per_vm"]) <= {vm_id}


def _modes(root: Path) -> dict[str, int]:
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_files_at_rest_are_their_owners_and_no_log_holds_a_secret(
    make_cluster, tmp_path: Path
) -> None:
    users = {"carol": {"hash": argon2.PasswordHasher().hash(PASSWORD), "roles": ["admin"]}}
    cluster: Cluster = make_cluster(
        nodes=1,
        plugins=["passwords", "audit"],
        plugin_tables={
            "passwords": {"users": users},
            "audit": {"file": str(tmp_path / "audit.jsonl")},
        },
        settings={},
    )
    # the same again with -v: stop, then start both daemons verbose
    cluster.stop()
    cluster.ctrl = None
    cluster._spawn = _verbose(cluster._spawn)  # type: ignore[method-assign]
    cluster.start_ctrl()
    cluster.start_lnm("node-1")
    session = cluster.http(
        "POST", "/v1/login", token=None, json={"username": "carol", "password": PASSWORD}
    )
    assert session.status_code == 200, session.text
    token = session.json()["token"]
    made = cluster.http("PUT", "/v1/users/dave", token=token, json={"password": PASSWORD})
    assert made.status_code == 200, made.text
    new = cluster.http("POST", "/v1/tokens", token=token, json={"roles": ["user"]}).json()["token"]
    cluster.run(cluster.client().create_vms(names=["v1"]))
    assert cluster.http("GET", "/v1/whoami", token=new).status_code == 200
    # modes: the state dir and everything in it
    assert stat.S_IMODE(cluster.state.stat().st_mode) == 0o700
    loose = {p: m for p, m in _modes(cluster.state).items() if m & 0o077}
    assert not loose, loose
    audit_file = tmp_path / "audit.jsonl"
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    node_state = cluster.root / "nodes" / "node-1"
    loose = {p: m for p, m in _modes(node_state).items() if m & 0o077}
    assert not loose, loose
    # logs: no token, credential, hash or password anywhere
    secrets = [cluster.token, token, new, PASSWORD]
    secrets.append((node_state / "node.credential").read_text().strip())
    secrets.append(cluster.join_token_file.read_text().strip())
    for name in ("ctrl", "node-1"):
        log = cluster.log(name)
        for secret in secrets:
            assert secret not in log, (name, secret[:8])
        assert not re.search(r"\$argon2", log), name


def test_the_log_filter_blanks_secrets_whatever_logs_them(caplog) -> None:
    import logging

    from usher.logsafe import Redact

    logged = (
        'INSERT ... (\'{"hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"}\', '
        "'Authorization: Bearer ush_AbCdEfGhIjKlMnOpQrStUv', password='hunter2')"
    )
    record = logging.LogRecord(
        "aiosqlite", logging.DEBUG, __file__, 1, "executing %s", (logged,), None
    )
    assert Redact().filter(record)
    text = record.getMessage()
    assert "$argon2id" not in text and "ush_AbCd" not in text and "hunter2" not in text, text
    assert text.count("[redacted]") == 3, text


def _verbose(spawn):
    def spawn_verbose(name, args, prefix=()):
        return spawn(name, [*args, "-v"], prefix)

    return spawn_verbose
