"""A database an older release wrote (or a hand changed) may hold records that do not read
back: the controller starts anyway, with each such record moved to ``quarantine``, logged
and announced (``record_quarantined``), and everything else as it was (issue 12, item 1)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from harness import Cluster, wait_for

BIG = 10**400


def database(cluster: Cluster) -> Engine:
    url = cluster.db_url or f"sqlite:///{cluster.state / 'usher.db'}"
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture
def poisoned(make_cluster, db_kind: str) -> Iterator[tuple[Cluster, str]]:
    cluster: Cluster = make_cluster(nodes=1)
    client = cluster.client()
    cluster.run(client.create_vms(names=["fine", "poisoned"]))
    victim = client.get_vm("poisoned")
    cluster.kill_ctrl()
    engine = database(cluster)
    spec = victim.spec.model_dump(mode="json")
    spec_text = json.dumps({**spec, "kwargs": {"tag": BIG}})
    with engine.begin() as conn:
        conn.execute(text("UPDATE vms SET spec = :s WHERE name = 'poisoned'"), {"s": spec_text})
        conn.execute(
            text(
                "INSERT INTO events (id, name, time, data) "
                "VALUES ('ev-0123456789ab', 'request_refused', 1.0, :d)"
            ),
            {"d": json.dumps({"request": {"kwargs": {"tag": BIG}}})},
        )
        conn.execute(
            text("INSERT INTO plugin_data (plugin, key, value) VALUES ('x', 'y', :v)"),
            {"v": json.dumps({"n": BIG})},
        )
        if db_kind == "sqlite":  # (PostgreSQL refuses text that is not JSON at all)
            conn.execute(
                text("INSERT INTO plugin_data (plugin, key, value) VALUES ('x', 'torn', :v)"),
                {"v": '{"half": '},
            )
    engine.dispose()
    yield cluster, victim.id


def test_the_controller_starts_and_quarantines_what_does_not_read_back(
    poisoned: tuple[Cluster, str], db_kind: str
) -> None:
    cluster, victim = poisoned
    cluster.start_ctrl()
    cluster.wait_node("node-1", connected=True)
    names = {vm.name for vm in cluster.vms()}
    assert "fine" in names and "poisoned" not in names
    assert cluster.http("GET", "/v1/events?limit=1000").status_code == 200
    engine = database(cluster)
    with engine.connect() as conn:
        rows = conn.execute(text('SELECT "table", key, error FROM quarantine')).all()
    engine.dispose()
    found = {(table, key) for table, key, _ in rows}
    assert ("vms", victim) in found and ("plugin_data", "x/y") in found, rows
    if db_kind == "sqlite":
        assert ("plugin_data", "x/torn") in found
    events = cluster.http("GET", "/v1/events?name=record_quarantined&limit=100").json()["items"]
    assert {(e["data"]["table"], e["data"]["key"]) for e in events} == found
    assert "quarantined the vms record" in cluster.log("ctrl")
    # the quarantined VM's copy on the node is one the controller does not know
    wait_for(
        "unknown_vm reported",
        lambda: cluster.http("GET", f"/v1/events?name=unknown_vm&vm={victim}").json()["items"],
    )
    # and the rest works: create, restart again
    cluster.run(cluster.client().create_vms(names=["after"]))
    cluster.kill_ctrl()
    cluster.start_ctrl()
    assert {"fine", "after"} <= {vm.name for vm in cluster.vms()}
