"""A database made by an older Usher is upgraded in place when the controller opens it: the
columns and tables it lacks are added (columns with their defaults), its rows are kept, and
it is stamped with the newest Alembic revision; a new database gets the same schema."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from conftest import fresh_db_url
from harness import Cluster
from usher.ctrl import usage  # noqa: F401  (its table is in the models)
from usher.ctrl.config import ADMIN_TOKEN_FILE
from usher.ctrl.store import Store, schema
from usher.ctrl.tables import Base
from usher.ctrl.tokens import digest
from usher.model import VM, Event, OpStatus, VMSpec, VMState, new_id

OLD_NODES = """CREATE TABLE nodes (
    name VARCHAR(200) PRIMARY KEY, driver VARCHAR(40) NOT NULL, capacity JSON NOT NULL,
    labels JSON NOT NULL, capabilities JSON NOT NULL, state VARCHAR(20) NOT NULL,
    drained BOOLEAN NOT NULL, last_heartbeat FLOAT, usage JSON NOT NULL,
    joined_at FLOAT NOT NULL)"""
OLD_ROW = """INSERT INTO nodes VALUES ('old-1', 'fake', '{"vcpus": 4, "memory_mb": 1024}', '{}',
    '[]', 'down', false, NULL, '{}', 1.0)"""


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
async def test_an_old_nodes_table_gains_the_maintenance_column(
    tmp_path: Path, db_kind: str
) -> None:
    url = fresh_db_url(db_kind) or f"sqlite:///{tmp_path / 'old.db'}"
    sync_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        conn.execute(text(OLD_NODES))
        conn.execute(text(OLD_ROW))
    engine.dispose()

    store = Store(url)
    await store.open()
    try:
        [node] = await store.list_nodes()
        assert (node.name, node.maintenance, node.capacity.vcpus) == ("old-1", False, 4)
        node.maintenance = True
        await store.save_node(node)
        assert (await store.get_node("old-1")).maintenance is True
    finally:
        await store.close()
    reopened = Store(url)
    await reopened.open()  # a second open finds nothing to add
    try:
        assert (await reopened.get_node("old-1")).maintenance is True
    finally:
        await reopened.close()


# --- a database made by the release before Alembic (tests/fixtures/make_previous_release.py)

FIXTURES = Path(__file__).parent / "fixtures"
ADMIN_SECRET = "ush_previous-release-admin"  # the fixture's admin token (its digest is stored)


def load_previous_release(db_kind: str, url: str | None, sqlite_file: Path) -> str:
    """Make the database the previous release left (its schema and records) at ``url`` (a
    fresh PostgreSQL schema) or in ``sqlite_file``; returns its URL."""
    sql = (FIXTURES / f"previous_release.{db_kind}.sql").read_text()
    if url is None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(sqlite_file)) as conn:
            conn.executescript(sql)
        return f"sqlite:///{sqlite_file}"
    with psycopg.connect(url) as conn:
        conn.execute(sql)
    return url


def schema_differences(url: str) -> tuple[str | None, list[Any]]:
    """The revision the database is stamped with, and how its schema differs from the
    models' (the tables only plugins make are theirs)."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    ours = set(Base.metadata.tables)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": lambda name, kind, _: kind != "table" or name in ours}
        )
        found = context.get_current_revision(), compare_metadata(context, Base.metadata)
    engine.dispose()
    return found


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
async def test_a_database_of_the_previous_release_is_upgraded_and_stamped(
    tmp_path: Path, db_kind: str
) -> None:
    url = load_previous_release(db_kind, fresh_db_url(db_kind), tmp_path / "usher.db")
    assert schema_differences(url)[0] is None  # no alembic_version: made by hand-written code

    store = Store(url)
    assert await store.open() == []  # every record reads back
    try:
        page = await store.list_vms()
        assert [(vm.name, vm.state, vm.node, vm.target_node) for vm in page.items] == [
            ("old-0", VMState.STOPPED, "node-1", None),
            ("old-1", VMState.RUNNING, "node-1", None),
        ]
        assert page.items[1].spec.vcpus == 2 and page.items[1].addresses == ["10.0.0.11"]
        assert [vm.tags for vm in page.items] == [[], []]  # 0002: VMs gained tags, none yet
        assert store.reservations.by_node["node-1"]["vcpus"] == 2  # old-1 runs there
        assert await store.was_destroyed("vm-000000000002")
        node = await store.get_node("node-1")
        assert node is not None and (node.capacity.vcpus, node.maintenance) == (8, False)
        op = await store.get_op("op-000000000001")
        assert op is not None and op.status == OpStatus.SUCCEEDED
        assert op.targets == ["vm-000000000001"]
        events = await store.list_events(vm="vm-000000000001")
        assert [e.name for e in events.items] == ["register", "state_change"]
        token = await store.find_token(digest(ADMIN_SECRET))
        assert token is not None and (token.principal, token.roles) == ("admin", ["admin"])
        assert await store.plugin_get("quotas", "alice") == {"vcpus": 16}

        # what the previous release lacked works, and new rows follow the old ones
        moving = page.items[1]
        moving.state, moving.target_node = VMState.MIGRATING, "node-2"
        await store.update_vm(moving)
        await store.add_vms([VM(id=new_id("vm"), name="new-0", owner="bob", spec=VMSpec())])
        await store.add_events([Event(name="after_upgrade")])
        assert [vm.name for vm in (await store.vms_where(target_node="node-2"))] == ["old-1"]
        assert [vm.name for vm in (await store.list_vms()).items] == ["old-0", "old-1", "new-0"]
        assert (await store.list_events()).total == 3
    finally:
        await store.close()

    head = ScriptDirectory.from_config(schema.config()).get_current_head()
    assert schema_differences(url) == (head, [])
    again = Store(url)
    await again.open()  # stamped: nothing left to do
    try:
        vm = await again.get_vm("old-1")
        assert vm is not None and (vm.state, vm.target_node) == (VMState.MIGRATING, "node-2")
    finally:
        await again.close()


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
async def test_a_new_database_has_the_schema_the_models_describe(
    tmp_path: Path, db_kind: str
) -> None:
    url = fresh_db_url(db_kind) or f"sqlite:///{tmp_path / 'new.db'}"
    store = Store(url)
    await store.open()
    await store.close()
    head = ScriptDirectory.from_config(schema.config()).get_current_head()
    assert schema_differences(url) == (head, [])


def test_the_controller_starts_on_a_database_of_the_previous_release(
    tmp_path: Path, db_kind: str
) -> None:
    cluster = Cluster(tmp_path, fresh_db_url(db_kind))
    load_previous_release(db_kind, cluster.db_url, cluster.state / "usher.db")
    cluster.state.mkdir(exist_ok=True)
    (cluster.state / ADMIN_TOKEN_FILE).write_text(ADMIN_SECRET + "\n")  # its admin's token
    try:
        cluster.start_ctrl()
        assert {vm.name: vm.state for vm in cluster.vms()} == {
            "old-0": VMState.STOPPED,
            "old-1": VMState.RUNNING,
        }
        assert cluster.node("node-1").capacity.vcpus == 8
        op = cluster.http("GET", "/v1/operations/op-000000000001").json()
        assert op["status"] == "succeeded"
        events = cluster.http("GET", "/v1/events?vm=vm-000000000001&name=register").json()
        assert events["total"] == 1
        assert "upgrading a database made by an earlier release" in cluster.log("ctrl")
    finally:
        cluster.stop()
