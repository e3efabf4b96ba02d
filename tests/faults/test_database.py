"""The controller's PostgreSQL becomes unreachable for a few seconds (every connection reset,
new ones refused, through a proxy the test cuts) while operations run and clients call: the
controller stays up, answers clear errors, and once the database is back everything ends
and nothing is lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import fresh_db_url
from harness import Cluster
from usher.model import OpStatus

from .scenario import settle_and_check
from .tcp_proxy import proxied

OUTAGE = 4.0


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    netloc[-1] = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc="@".join(netloc)))


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
def test_database_unreachable_for_a_while(tmp_path, db_kind: str) -> None:
    url = fresh_db_url(db_kind)
    assert url is not None
    upstream = urlsplit(url)
    with proxied(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
        cluster = Cluster(tmp_path, _via(url, proxy.port))
        cluster.add_blank_image()
        try:
            cluster.start_ctrl()
            options = {"driver_options": {"latency": {"reboot": 1.0, "stop": 1.0}}}
            for name in ("node-1", "node-2"):
                cluster.start_lnm(name, **options)
            client = cluster.client()
            created = cluster.run(client.create_vms(count=4, cluster="db"))
            assert created.status == OpStatus.SUCCEEDED, created.error
            rebooting = client.action("reboot", cluster="db")

            proxy.cut()
            cut_at = time.monotonic()
            answers = []
            with ThreadPoolExecutor(4) as pool:
                calls = [
                    ("POST", "/v1/vms", {"count": 2, "cluster": "db2"}),
                    ("GET", "/v1/vms", None),
                    ("POST", "/v1/vms/actions/stop", {"vms": ["db-1"]}),
                    ("GET", "/v1/nodes", None),
                ]
                futures = [pool.submit(cluster.http, m, p, json=b) for m, p, b in calls]
                answers = [f.result() for f in futures]
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - cut_at)))
            proxy.restore()

            for r in answers:
                # a clear JSON error (503: the database is unavailable) or a normal answer
                assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text)
                if r.status_code >= 400:
                    assert r.json()["error"], r.text
            statuses = [r.status_code for r in answers]
            print("during the outage:", statuses)
            assert 503 in statuses  # the outage was felt, and named
            assert all(
                "database is unavailable" in r.json()["error"]
                for r in answers
                if r.status_code == 503
            )
            assert cluster.ctrl is not None and cluster.ctrl.poll() is None  # still up

            op = cluster.run(rebooting, timeout=60)
            assert op.status in (OpStatus.SUCCEEDED, OpStatus.FAILED), op
            vms = settle_and_check(cluster, bound=60)
            assert set(created.targets) <= {vm.id for vm in vms}
            again = cluster.run(client.create_vms(count=1, cluster="after"))
            assert again.status == OpStatus.SUCCEEDED, again.error
        finally:
            cluster.stop()
