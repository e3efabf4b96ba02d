"""Fixtures: a real controller with real LNM processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from harness import Cluster
from usher.ctrl.tables import Base

PG_ENV = "USHER_TEST_PG_URL"


def _reset_postgres(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """None means the default (SQLite in the state dir); else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.fail(
            f"{PG_ENV} is not set: run the suite through ./test.sh, which starts "
            "PostgreSQL and sets it"
        )
    _reset_postgres(url)
    return url


@pytest.fixture
def make_cluster(tmp_path: Path, db_url: str | None) -> Iterator[Callable[..., Cluster]]:
    """Build a cluster: ``make_cluster(nodes=3, plugins=[...], plugin_tables={...})``."""
    made: list[Cluster] = []

    def make(nodes: int = 3, lnm_options: dict[str, Any] | None = None, **kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(made)}", db_url, **kwargs)
        made.append(cluster)
        cluster.start_ctrl()
        names = [f"node-{i}" for i in range(1, nodes + 1)]
        for name in names:
            cluster.start_lnm(name, wait=False, **(lnm_options or {}))
        for name in names:
            cluster.wait_node(name, connected=True)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A controller with three fake LNMs (node-1..3, 8 vcpus and 8 GiB each)."""
    return make_cluster()
