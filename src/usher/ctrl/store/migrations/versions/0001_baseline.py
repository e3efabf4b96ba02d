"""Baseline: the schema of the first release that upgrades through Alembic.

On an empty database it makes every table. A database made by an earlier release (which
has no ``alembic_version``: its schema was made and grown by hand-written code) already has
most of it; Alembic's comparison of that database with this schema finds what it lacks
(``vms.target_node`` and its index, the ``quarantine`` table, ``nodes.maintenance`` in
older ones still), and only that is added: those releases only ever added tables, columns
with a default or none, and indexes. Alembic then stamps the database with this revision.

The tables below are this revision's and must not change with ``usher.ctrl.tables``: a
later change of the schema is a later revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op
from alembic.autogenerate import produce_migrations
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

log = logging.getLogger("usher.store")

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for big tables.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BASELINE = sa.MetaData()


def _seq() -> sa.Column[int]:
    return sa.Column("seq", SEQ, primary_key=True, autoincrement=True)


sa.Table(
    "vms",
    BASELINE,
    _seq(),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(80), nullable=False, unique=True),
    sa.Column("owner", sa.String(200), nullable=False, index=True),
    sa.Column("cluster", sa.String(80), index=True),
    sa.Column("node", sa.String(200), index=True),
    sa.Column("target_node", sa.String(200), index=True),
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("desired_state", sa.String(20), nullable=False),
    sa.Column("state_reason", sa.Text),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("addresses", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sa.Table(
    "nodes",
    BASELINE,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("driver", sa.String(40), nullable=False),
    sa.Column("capacity", sa.JSON, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("capabilities", sa.JSON, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("drained", sa.Boolean, nullable=False),
    sa.Column("maintenance", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("last_heartbeat", sa.Float),
    sa.Column("usage", sa.JSON, nullable=False),
    sa.Column("joined_at", sa.Float, nullable=False),
)
sa.Table(
    "operations",
    BASELINE,
    _seq(),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("kind", sa.String(20), nullable=False, index=True),
    sa.Column("principal", sa.String(200), nullable=False),
    sa.Column("targets", sa.JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("error", sa.Text),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
)
sa.Table(
    "events",
    BASELINE,
    _seq(),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(80), nullable=False, index=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("principal", sa.String(200)),
    sa.Column("vm_id", sa.String(40), index=True),
    sa.Column("node", sa.String(200), index=True),
    sa.Column("operation_id", sa.String(40), index=True),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index("ix_events_time", "time"),
)
sa.Table(
    "tokens",
    BASELINE,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("principal", sa.String(200), nullable=False, index=True),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("digest", sa.String(128), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("revoked", sa.Boolean, nullable=False),
)
sa.Table(
    "plugin_data",
    BASELINE,
    sa.Column("plugin", sa.String(80), primary_key=True),
    sa.Column("key", sa.String(400), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
)
sa.Table(
    "destroyed_vms",
    BASELINE,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("destroyed_at", sa.Float, nullable=False),
)
sa.Table(
    "quarantine",
    BASELINE,
    _seq(),
    sa.Column("table", sa.String(80), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("row", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)
sa.Table(
    "usage_samples",
    BASELINE,
    _seq(),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("node", sa.String(200)),
    sa.Column("cpu_percent", sa.Float),
    sa.Column("memory_used_mb", sa.Float, nullable=False),
    sa.Column("vcpus", sa.Integer),
    sa.Column("memory_mb", sa.Integer),
    sa.Column("vms", sa.Integer),
    sa.Index("ix_usage_series", "kind", "key", "time"),
    sa.Index("ix_usage_time", "time"),
)

# what a database may lack of the baseline and be given: nothing else is ever changed
ADDITIONS = (ops.CreateTableOp, ops.AddColumnOp, ops.CreateIndexOp)


def _ours(name: str | None, kind: str, _parents: object) -> bool:
    """Only the baseline's tables are compared (plugins keep their own in the database)."""
    return kind != "table" or name in BASELINE.tables


def _flat(op_tree: ops.MigrateOperation) -> list[ops.MigrateOperation]:
    """The single operations of a tree of them (a table's changes are nested)."""
    inner = getattr(op_tree, "ops", None)
    return [leaf for child in inner for leaf in _flat(child)] if inner is not None else [op_tree]


def _has_index(bind: sa.Connection, change: ops.CreateIndexOp) -> bool:
    """Whether the index exists already (made with the table or column it is on)."""
    names = {i["name"] for i in sa.inspect(bind).get_indexes(change.table_name)}
    return change.index_name in names


def _described(change: ops.MigrateOperation) -> str:
    if isinstance(change, ops.CreateTableOp):
        return f"adding the table {change.table_name}"
    if isinstance(change, ops.AddColumnOp):
        return f"adding {change.table_name}.{change.column.name}"
    if isinstance(change, ops.CreateIndexOp):
        return f"adding the index {change.index_name}"
    return str(change.to_diff_tuple())[:300]


def upgrade() -> None:
    """Make the baseline's tables on an empty database; on one made by an earlier release,
    add what it lacks. (There is no downgrade: the baseline is where the history begins.)"""
    bind = op.get_bind()
    if not set(sa.inspect(bind).get_table_names()) & set(BASELINE.tables):
        BASELINE.create_all(bind)
        return
    compared = MigrationContext.configure(bind, opts={"include_name": _ours})
    for change in _flat(produce_migrations(compared, BASELINE).upgrade_ops):
        if not isinstance(change, ADDITIONS):
            log.warning("the database differs from the baseline: %s", _described(change))
        elif not (isinstance(change, ops.CreateIndexOp) and _has_index(bind, change)):
            log.warning("upgrading a database made by an earlier release: %s", _described(change))
            op.invoke(change)
