"""Fault scenarios run on SQLite unless a module asks for PostgreSQL too (``both_dbs``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", params=["sqlite"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return request.param
