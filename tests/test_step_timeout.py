"""A step's time limit: a request's ``timeout`` shortens most steps; a stop's is the guest's
grace, and the step then has room for the hard stop after it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from usher.ctrl.config import Settings
from usher.ctrl.engine.runner import HARD_STOP_MARGIN, Runner
from usher.model import OpKind


def runner() -> Runner:
    crew: Any = SimpleNamespace(settings=Settings(op_timeouts={"stop": 120, "reboot": 120}))
    return Runner(crew)


@pytest.mark.parametrize(
    ("kind", "kwargs", "limit"),
    [
        (OpKind.STOP, {}, 120),
        (OpKind.STOP, {"timeout": 10}, 120),
        (OpKind.STOP, {"timeout": 300}, 300 + HARD_STOP_MARGIN),  # before: cut at 120
        (OpKind.REBOOT, {"timeout": 10}, 10),
        (OpKind.REBOOT, {"timeout": 600}, 120),
        (OpKind.REBOOT, {"timeout": True}, 120),
        (OpKind.REBOOT, {"timeout": -1}, 120),
    ],
)
def test_step_limits(kind: OpKind, kwargs: dict[str, Any], limit: float) -> None:
    assert runner().step_timeout(kind, kwargs) == limit
