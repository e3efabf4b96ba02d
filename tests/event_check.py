"""Test plugins: one checks every event against its declaration in ``usher.event_types``
(``event_check:EventCheck``; ``GET /v1/event-check`` reports what it saw), one fails."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter

from usher import hookimpl
from usher.ctrl.api.deps import PrincipalDep
from usher.event_types import validate_event
from usher.model import Event


class EventCheck:
    """Counts events by name and keeps each that is undeclared or does not fit its model."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.wrong: list[dict[str, Any]] = []

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        self.seen[event.name] += 1
        try:
            validate_event(event)
        except (LookupError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            self.wrong.append({"error": str(exc), "event": event.model_dump(mode="json")})

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/event-check")

        @router.get("")
        async def report(principal: PrincipalDep) -> dict[str, Any]:
            return {"seen": dict(self.seen), "wrong": self.wrong}

        return [router]


class FailsOnStop:
    """A notification hook that fails on ``stop`` events (each a ``plugin_error``)."""

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        if event.name == "stop":
            raise RuntimeError("fails on stop")
