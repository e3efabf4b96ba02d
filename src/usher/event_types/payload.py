"""What every event payload model shares."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

ENVELOPE = ("principal", "vm_id", "node", "operation_id")
"""The fields of an event besides its ``data`` that some events set and others leave empty."""

OP = ("vm_id", "node", "operation_id", "principal")
"""What an operation's per-VM events set."""


class Payload(BaseModel):
    """The ``data`` of an event: only the fields declared, each of its declared type."""

    model_config = ConfigDict(extra="forbid")
    sets: ClassVar[tuple[str, ...]] = ()
    """Which of :data:`ENVELOPE` the event may set (those not named are always empty)."""
