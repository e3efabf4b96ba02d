"""Fixtures: a real controller with real LNM processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from harness import Cluster

# the debian_image fixture, cached between runs; a real slapd (slapd, slapd_server)
pytest_plugins = ["guest_images", "ldap_server"]

PG_ENV = "USHER_TEST_PG_URL"
SCHEMA_PREFIX = "usher_t_"
CREATED_SCHEMAS: list[str] = []


def _pg_engine(url: str) -> Engine:
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def fresh_db_url(kind: str) -> str | None:
    """None for SQLite (the controller's default file); for PostgreSQL a brand-new schema."""
    if kind == "sqlite":
        return None
    url = os.environ[PG_ENV]
    schema = SCHEMA_PREFIX + uuid.uuid4().hex[:10]
    engine = _pg_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    CREATED_SCHEMAS.append(schema)
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session", autouse=True)
def _drop_our_schemas() -> Iterator[None]:
    """Drop the schemas this run made (only those: other runs may share the server)."""
    yield
    url = os.environ.get(PG_ENV)
    if not url or not CREATED_SCHEMAS:
        return
    engine = _pg_engine(url)
    for schema in CREATED_SCHEMAS:  # one transaction each: all at once outgrows the lock table
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_kind(request: pytest.FixtureRequest) -> str:
    """Every end-to-end test runs against SQLite and against a real PostgreSQL server."""
    if request.param == "postgresql" and not os.environ.get(PG_ENV):
        pytest.fail(
            f"{PG_ENV} is not set: run the suite through ./test.sh, which starts "
            "PostgreSQL and sets it"
        )
    return request.param


def _start(
    root: Path, kind: str, nodes: int, lnm_options: dict[str, Any] | None, **kwargs: Any
) -> Cluster:
    cluster = Cluster(root, fresh_db_url(kind), **kwargs)
    cluster.add_blank_image()
    try:
        cluster.start_ctrl()
        names = [f"node-{i}" for i in range(1, nodes + 1)]
        for name in names:
            cluster.start_lnm(name, wait=False, **(lnm_options or {}))
        for name in names:
            cluster.wait_node(name, connected=True)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def make_cluster(tmp_path: Path, db_kind: str) -> Iterator[Callable[..., Cluster]]:
    """Build a cluster: ``make_cluster(nodes=3, plugins=[...], plugin_tables={...})``."""
    made: list[Cluster] = []

    def make(nodes: int = 3, lnm_options: dict[str, Any] | None = None, **kwargs: Any) -> Cluster:
        made.append(_start(tmp_path / f"c{len(made)}", db_kind, nodes, lnm_options, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A controller with three fake LNMs (node-1..3, 8 vcpus and 8 GiB each)."""
    return make_cluster()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory, db_kind: str) -> Iterator[Cluster]:
    """One three-node cluster for a whole module of tests that leave it as they found it."""
    cluster = _start(tmp_path_factory.mktemp("shared"), db_kind, 3, None)
    yield cluster
    cluster.stop()
