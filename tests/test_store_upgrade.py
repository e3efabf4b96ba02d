"""A database made by an older Usher is upgraded in place when the controller opens it: the
columns it lacks are added with their defaults, and its rows are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import fresh_db_url
from usher.ctrl.store import Store

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
