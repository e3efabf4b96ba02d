"""The ``fake`` driver's latency and fault injection: the ``latency``, ``fail`` and ``seed``
options."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from usher.vmm.base import DriverError

ACTIONS = frozenset(
    {
        "start",
        "stop",
        "destroy",
        "pause",
        "resume",
        "reboot",
        "migrate",
        "prepare_incoming",
        "finish_incoming",
        "snapshot_create",
        "snapshot_revert",
        "snapshot_delete",
        "clone_disks",
        "export_disk",
        "resize_disk",
    }
)
"""Actions that ``latency`` and ``fail`` options may name."""


def per_action(option: str, value: Any) -> dict[str, float]:
    """Read a ``latency`` or ``fail`` option: one number for every action, or a dict."""
    if not isinstance(value, dict):
        return dict.fromkeys(ACTIONS, float(value))
    unknown = set(value) - ACTIONS
    if unknown:
        raise DriverError(
            f"fake driver option {option!r} names unknown actions {sorted(unknown)}; "
            f"known: {sorted(ACTIONS)}"
        )
    return {action: float(seconds) for action, seconds in value.items()}


class Faults:
    """How long each action takes and how likely it fails, from the driver's options."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._latency = per_action("latency", options.get("latency", 0.0))
        self._fail = per_action("fail", options.get("fail", {}))
        for action, probability in self._fail.items():
            if not 0.0 <= probability <= 1.0:
                raise DriverError(f"fake driver: fail probability of {action} must be in [0, 1]")
        self._rng = random.Random(options.get("seed"))

    async def act(self, action: str, vm_id: str) -> None:
        """Spend the action's latency (yielding at least once), then maybe fail it."""
        await asyncio.sleep(self._latency.get(action, 0.0))
        probability = self._fail.get(action, 0.0)
        if probability and self._rng.random() < probability:
            raise DriverError(f"simulated failure of {action} on VM {vm_id}")
