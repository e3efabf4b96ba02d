"""The controller's database schema (SQLAlchemy ORM), one table per kind of record.

A change here comes with an Alembic revision that makes it in existing databases
(``usher.ctrl.store.schema``); a test checks that a new database matches these models."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for big tables.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class VMRow(Base):
    __tablename__ = "vms"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    cluster: Mapped[str | None] = mapped_column(String(80), index=True)
    node: Mapped[str | None] = mapped_column(String(200), index=True)
    target_node: Mapped[str | None] = mapped_column(String(200), index=True)
    state: Mapped[str] = mapped_column(String(20), index=True)
    desired_state: Mapped[str] = mapped_column(String(20))
    state_reason: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict[str, Any]]
    addresses: Mapped[list[Any]]
    tags: Mapped[list[Any]] = mapped_column(server_default="[]")
    snapshots: Mapped[list[Any]] = mapped_column(server_default="[]")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    driver: Mapped[str] = mapped_column(String(40))
    capacity: Mapped[dict[str, Any]]
    labels: Mapped[dict[str, Any]]
    capabilities: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(20))
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    last_heartbeat: Mapped[float | None] = mapped_column(Float)
    usage: Mapped[dict[str, Any]]
    joined_at: Mapped[float] = mapped_column(Float)


class OperationRow(Base):
    __tablename__ = "operations"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    principal: Mapped[str] = mapped_column(String(200))
    targets: Mapped[list[Any]]
    status: Mapped[str] = mapped_column(String(20), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]]
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_time", "time"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(80), index=True)
    time: Mapped[float] = mapped_column(Float)
    principal: Mapped[str | None] = mapped_column(String(200))
    vm_id: Mapped[str | None] = mapped_column(String(40), index=True)
    node: Mapped[str | None] = mapped_column(String(200), index=True)
    operation_id: Mapped[str | None] = mapped_column(String(40), index=True)
    data: Mapped[dict[str, Any]]


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), index=True)
    roles: Mapped[list[Any]]
    digest: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class PluginDataRow(Base):
    """Free storage for plugins: one JSON value per (plugin, key)."""

    __tablename__ = "plugin_data"

    plugin: Mapped[str] = mapped_column(String(80), primary_key=True)
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)


class DestroyedVMRow(Base):
    """A VM destroyed here: if a node that was away brings back a copy, it is fenced (a VM
    nobody ever recorded is left alone instead)."""

    __tablename__ = "destroyed_vms"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    destroyed_at: Mapped[float] = mapped_column(Float)


class QuarantineRow(Base):
    """A record the controller could not read back when it opened the database (written by
    an older release, or changed by hand): moved here whole, as text, so the controller
    starts and an administrator can look at it."""

    __tablename__ = "quarantine"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    table: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(Text)
    row: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)
