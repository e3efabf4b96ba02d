"""Broken plugins in each hook kind, a locked database, many concurrent operations on the
same VMs and a flood of requests from many clients: everything ends, nothing is lost."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import text

from conftest import PG_ENV, _pg_engine
from harness import Cluster
from usher.client import UsherError
from usher.model import FINAL_OP_STATUSES, OpStatus

from .scenario import STATS, settle_and_check

P = "faults.fault_plugins:"


# --- plugins ---------------------------------------------------------------------------


def test_authorize_raising_refuses_cleanly(tmp_path) -> None:
    """A decision hook that raises: the controller fails closed, every request gets a 403
    with a JSON error naming the plugin (never a 5xx or a hang), and nothing is created."""
    cluster = Cluster(tmp_path / "authz", None, plugins=[P + "AuthorizeRaises"])
    cluster.add_blank_image()
    try:
        try:
            cluster.start_ctrl()  # its last step, an admin call for a join token, is refused
        except AssertionError as exc:
            assert "authorization failed" in str(exc), exc
        for method, path, body in [
            ("POST", "/v1/vms", {"count": 1, "cluster": "a"}),
            ("GET", "/v1/vms", None),
        ]:
            r = cluster.http(method, path, json=body)
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "AuthorizeRaises" in r.json()["error"], r.text
        assert cluster.http("GET", "/v1/whoami").status_code in (200, 403)
        assert cluster.ctrl is not None and cluster.ctrl.poll() is None
    finally:
        cluster.stop()
    STATS["scenarios"] += 1


def test_start_request_plugin_raising(make_cluster) -> None:
    """A request hook that raises: the start is refused with a clear JSON error naming the
    plugin, the operation is recorded failed, nothing is created."""
    cluster = make_cluster(nodes=1, plugins=[P + "StartRequestRaises"])
    r = cluster.http("POST", "/v1/vms", json={"count": 1, "cluster": "r"})
    assert r.status_code >= 400
    body = r.json()
    assert "StartRequestRaises" in body["error"] and "nothing was changed" in body["error"]
    assert r.status_code == 403, r.status_code  # fails closed, a 4xx as documented
    assert body["detail"]["operation"]["status"] == "failed"
    settle_and_check(cluster)
    assert cluster.vms() == []


def test_start_request_plugin_hanging(make_cluster) -> None:
    """A request hook that never answers: refused after ``hook_timeout`` with a 403 naming
    the plugin; the controller keeps serving meanwhile; nothing is created."""
    cluster = make_cluster(
        nodes=1, plugins=[P + "StartRequestHangs"], settings={"hook_timeout": 2.0}
    )
    began = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post,
            cluster.url + "/v1/vms",
            json={"count": 1, "cluster": "h"},
            headers={"Authorization": f"Bearer {cluster.token}"},
            timeout=10,
        )
        time.sleep(0.5)
        assert cluster.http("GET", "/v1/vms").status_code == 200  # not blocked meanwhile
        r = pending.result()
    took = time.monotonic() - began
    assert r.status_code == 403, (r.status_code, r.text)
    assert "StartRequestHangs" in r.json()["error"] and "no answer within 2 s" in r.json()["error"]
    assert 1.8 <= took < 6, took
    settle_and_check(cluster)
    assert cluster.vms() == []


@pytest.mark.parametrize("plugin", ["EventRaises", "EventHangs", "EventBlocks"])
def test_notification_plugin_broken(make_cluster, plugin: str) -> None:
    """Notification hooks that raise, hang or block never break operations."""
    cluster = make_cluster(nodes=2, plugins=[P + plugin])
    client = cluster.client()
    began = time.monotonic()
    op = cluster.run(client.create_vms(count=3, cluster="n"), timeout=60)
    assert op.status == OpStatus.SUCCEEDED, op.error
    for action in ("pause", "resume", "reboot", "stop"):
        done = cluster.run(client.action(action, cluster="n"), timeout=60)
        assert done.status == OpStatus.SUCCEEDED, (action, done.error)
    took = time.monotonic() - began
    print(f"{plugin}: 5 operations in {took:.1f} s")
    assert took < 45
    settle_and_check(cluster)


# --- database locked --------------------------------------------------------------------


def _lock_db(cluster: Cluster, seconds: float, ready: threading.Event) -> None:
    if cluster.db_url is None:
        conn = sqlite3.connect(cluster.state / "usher.db", timeout=30, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        ready.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()
        return
    engine = _pg_engine(cluster.db_url)
    with engine.begin() as conn:
        conn.execute(text("LOCK TABLE vms IN ACCESS EXCLUSIVE MODE"))
        ready.set()
        time.sleep(seconds)
    engine.dispose()


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
def test_database_locked_for_a_while(make_cluster, db_kind: str) -> None:
    """The controller's database is locked for 3 s while operations run: they complete or
    fail cleanly, requests get answers (no 5xx), nothing is lost."""
    if db_kind == "postgresql":
        import os

        assert os.environ.get(PG_ENV), f"{PG_ENV} must be set"
    cluster = make_cluster(
        nodes=2, lnm_options={"driver_options": {"latency": {"reboot": 0.5, "stop": 0.5}}}
    )
    client = cluster.client()
    created = cluster.run(client.create_vms(count=4, cluster="db"))
    assert created.status == OpStatus.SUCCEEDED
    ready = threading.Event()
    locker = threading.Thread(target=_lock_db, args=(cluster, 3.0, ready))
    locker.start()
    ready.wait(10)
    statuses = []
    ops = []
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(cluster.http, "POST", "/v1/vms/actions/reboot", json={"cluster": "db"}),
            pool.submit(cluster.http, "POST", "/v1/vms", json={"count": 2, "cluster": "db2"}),
            pool.submit(cluster.http, "GET", "/v1/vms"),
            pool.submit(cluster.http, "POST", "/v1/vms/actions/stop", json={"vms": ["db-1"]}),
        ]
        for f in futures:
            r = f.result()
            statuses.append(r.status_code)
            if r.status_code == 202:
                ops.append(r.json()["id"])
            elif r.status_code >= 400:
                assert r.json()["error"], r.text
    locker.join()
    assert all(s < 500 for s in statuses), statuses
    for op_id in ops:
        cluster.run(client.get_operation(op_id), timeout=60)
    vms = settle_and_check(cluster)
    assert set(created.targets) <= {vm.id for vm in vms}


# --- concurrency and floods -------------------------------------------------------------


def test_fifty_concurrent_operations_on_the_same_vms(make_cluster) -> None:
    """50 operations from 10 clients on the same 3 VMs: serialized per VM, all final, and the
    VMs end in a state their last successful operation explains."""
    cluster = make_cluster(nodes=2, lnm_options={"driver_options": {"latency": 0.05}})
    client = cluster.client()
    vms = list(cluster.run(client.create_vms(count=3, cluster="c")).targets)
    rng = random.Random(7)
    kinds = ["stop", "start", "pause", "resume", "reboot", "migrate", "cycle"]
    plan = [(rng.choice(kinds), rng.sample(vms, rng.randint(1, 3))) for _ in range(50)]

    statuses: list[int] = []

    def fire(item):
        kind, targets = item
        try:
            op_id = cluster.client().action(kind, targets).id
            statuses.append(202)
            return op_id
        except UsherError as exc:
            statuses.append(exc.status or 0)
            assert str(exc), exc
            return None

    with ThreadPoolExecutor(10) as pool:
        ids = [i for i in pool.map(fire, plan) if i]
    # each request is accepted or refused as a conflict (a VM busy or in the wrong state)
    assert set(statuses) <= {202, 409}, statuses
    assert ids, "some operations must be accepted"
    print(f"50 concurrent: {len(ids)} accepted, {statuses.count(409)} refused (409)")
    for op_id in ids:
        op = cluster.run(client.get_operation(op_id), timeout=120)
        assert op.status in FINAL_OP_STATUSES
        if op.status == OpStatus.FAILED:
            assert op.error
    vms_after = settle_and_check(cluster)
    assert {vm.id for vm in vms_after} == set(vms)
    STATS["ops"] += len(ids)


def test_flood_of_requests_from_many_clients(make_cluster) -> None:
    """20 clients x 50 requests (reads, creates, actions, bad input): no 5xx, every
    operation final, nothing lost."""
    cluster = make_cluster(nodes=3)
    errors: list[str] = []
    op_ids: list[str] = []
    lock = threading.Lock()

    def client_loop(n: int) -> None:
        r_ = random.Random(n)
        with httpx.Client(
            base_url=cluster.url, headers={"Authorization": f"Bearer {cluster.token}"}, timeout=60
        ) as http:
            for _ in range(50):
                choice = r_.random()
                if choice < 0.4:
                    r = http.get("/v1/vms", params={"limit": 50})
                elif choice < 0.55:
                    r = http.get("/v1/operations", params={"limit": 20})
                elif choice < 0.7:
                    r = http.post("/v1/vms", json={"count": 1, "cluster": f"fl{n}"})
                elif choice < 0.85:
                    kind = r_.choice(["stop", "start", "reboot", "pause", "resume"])
                    r = http.post(f"/v1/vms/actions/{kind}", json={"cluster": f"fl{n}"})
                elif choice < 0.95:
                    r = http.post("/v1/vms/actions/migrate", json={"cluster": f"fl{n}"})
                else:
                    r = http.post("/v1/vms", json={"count": -1, "bogus": True})
                with lock:
                    if r.status_code >= 500:
                        errors.append(f"{r.request.method} {r.request.url}: {r.status_code}")
                    if r.status_code == 202:
                        op_ids.append(r.json()["id"])
                    elif r.status_code >= 400 and not r.json().get("error"):
                        errors.append(f"error without message: {r.text}")

    began = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - began
    print(f"flood: 1000 requests in {took:.1f} s, {len(op_ids)} operations")
    assert not errors, errors[:10]
    settle_and_check(cluster, bound=90)
    STATS["ops"] += len(op_ids)
