"""Fault scenarios run on SQLite unless a module asks for PostgreSQL too (``both_dbs``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", params=["sqlite"])
def db_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures, in the test log (CI's too)."""
    from .scenario import STATS

    if not STATS["scenarios"]:
        return
    detect = sorted(STATS["detect_s"])
    timing = (
        f"{detect[0]:.2f} / {detect[len(detect) // 2]:.2f} / {detect[-1]:.2f} s "
        f"(min / median / max of {len(detect)})"
        if detect
        else "none measured"
    )
    terminalreporter.write_sep("-", "fault suite figures")
    terminalreporter.write_line(
        f"invariant checks passed: {STATS['scenarios']}; kills survived: {STATS['kills']}; "
        f"VM records checked intact: {STATS['records']} (records lost: 0, else a check "
        f"fails); operations: {STATS['ops']}; lost-node detection: {timing}"
    )
